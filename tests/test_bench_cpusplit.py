"""bench.cpusplit reads perf script's samples into threads and parts."""

from __future__ import annotations

from bench.cpusplit import parse_script, part_of

SAMPLE = """\
23899      7fa60996042b (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)
23899      7fa60996042c (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)
23899  ffffffff815972f2 ([kernel.kallsyms])
23899      7fa6096b6975 (/usr/lib/x86_64-linux-gnu/libc.so.6)
23901  ffffffff813aecd3 ([kernel.kallsyms])
23901      7fa6099aff34 (/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6)
23901      7fa6099aff35 (/usr/sbin/inspircd)
"""


def test_parts_are_named_by_their_shared_object() -> None:
    assert part_of("([kernel.kallsyms])") == "kernel"
    assert part_of("(/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)") == "python"
    assert part_of("(/usr/lib/x86_64-linux-gnu/libc.so.6)") == "libc"
    assert part_of("(/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6)") == "sqlite"
    assert part_of("(/usr/sbin/inspircd)") == "other"
    assert part_of("([unknown])") == "other"


def test_samples_are_counted_per_thread_the_lowest_id_being_the_main_one() -> None:
    main, counts = parse_script(SAMPLE)
    assert main == 23899
    assert counts == {
        ("main", "python"): 2,
        ("main", "kernel"): 1,
        ("main", "libc"): 1,
        ("others", "kernel"): 1,
        ("others", "sqlite"): 1,
        ("others", "other"): 1,
    }


def test_lines_that_are_not_samples_are_ignored() -> None:
    assert parse_script("\nperf: no samples\n# header\n") == (None, {})
