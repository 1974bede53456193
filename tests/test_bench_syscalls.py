"""bench.syscalls reads perf stat's CSV into its columns."""

from __future__ import annotations

from bench.syscalls import parse_perf_stat

SAMPLE = """\
27600,,syscalls:sys_enter_sendto,3001994313,100.00,9.194,K/sec
12,,syscalls:sys_enter_writev,3001994313,100.00,0.004,K/sec
2760,,syscalls:sys_enter_recvfrom,3001994313,100.00,0.919,K/sec
<not counted>,,syscalls:sys_enter_recvmsg,0,0.00,,
552,,syscalls:sys_enter_epoll_wait,3001994313,100.00,0.184,K/sec
3,,syscalls:sys_enter_epoll_pwait,3001994313,100.00,0.001,K/sec
448,,context-switches,3001994313,100.00,1.929,K/sec
232.19,msec,task-clock,232190000,100.00,0.077,CPUs utilized
"""


def test_events_are_summed_into_columns_and_uncounted_ones_skipped() -> None:
    assert parse_perf_stat(SAMPLE) == {
        "writes": 27612.0,
        "reads": 2760.0,
        "epoll_wait": 555.0,
        "switches": 448.0,
        "cpu_us": 232.19,
    }


def test_lines_that_are_not_counts_are_ignored() -> None:
    assert parse_perf_stat("\n# started on Wed\nperf: something went wrong\n") == {}
