"""
bench/coldpath.py: the instrumented server is our real server, and its
timers see every lobby message go through each timed method.
"""

from __future__ import annotations

import pytest

from bench import coldpath


def test_summary_gives_counts_percentiles_and_means_in_path_order() -> None:
    samples = {
        "LobbyFanout.flush": [1000 * i for i in range(1, 11)],  # 1..10 µs
        "ChatProtocol.dataReceived": [5000, 5000, 8000, 2000],
    }
    rows = coldpath._summary(samples)
    assert [r[0] for r in rows] == ["ChatProtocol.dataReceived", "LobbyFanout.flush"]
    _name, n, p10, p50, p90, mean = rows[1]
    assert (n, p10, p50, p90, mean) == (10, 2.0, 6.0, 10.0, 5.5)
    assert rows[0][1:] == (4, 2.0, 5.0, 8.0, 5.0)


@pytest.mark.bench  # our server, pinned to CPU 0, under load for a second
def test_a_short_run_times_every_method_on_a_messages_path(capsys) -> None:  # type: ignore[no-untyped-def]
    assert coldpath.main(["--clients", "5", "--rates", "20", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 clients, 20 msgs/s:" in out
    counts = {}
    for line in out.splitlines()[2:]:
        fields = line.split()
        counts[fields[0]] = int(fields[1])
    # Every timed method ran, and each message went through the chat's path once.
    assert set(counts) == {f"{c}.{m}" for _mod, c, m in coldpath.TIMED}
    sent = int(out.split("msgs/s: ")[1].split()[0])
    assert sent >= 10
    assert counts["Hub.say"] == counts["LineListener.lobby_message"] == sent
