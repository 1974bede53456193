"""Flood control's rule (twisted_chat.server.limits.flood), with plain numbers."""

from __future__ import annotations

from tests.harness import Harness
from twisted_chat.server.limits.buckets import Penalty
from twisted_chat.server.limits.flood import Dropped, FloodMeter


def test_a_burst_then_the_rate() -> None:
    meter = FloodMeter(rate=2.0, burst=3)
    tokens, at = meter.full, 0.0
    verdicts = []
    for _ in range(4):
        allowed, tokens = meter.spend(tokens, at, 0.0)
        verdicts.append(allowed)
    assert verdicts == [True, True, True, False]
    assert meter.spend(tokens, 0.0, 0.5) == (True, 0.0), "one token back in half a second"
    assert meter.spend(0.0, 0.0, 100.0) == (True, 2.0), "never more than the burst"


def test_rate_zero_lets_every_line_through() -> None:
    meter = FloodMeter(rate=0.0, burst=3)
    assert meter.spend(0.0, 0.0, 0.0) == (True, 0.0)


def test_a_reply_costs_a_token_per_4096_bytes_at_most_the_burst() -> None:
    meter = FloodMeter(rate=10.0, burst=20)
    assert meter.charge(5.0, 0) == (True, 5.0), "the line's own token pays for a small reply"
    assert meter.charge(5.0, 4096) == (True, 5.0)
    assert meter.charge(5.0, 4097) == (True, 4.0)
    assert meter.charge(5.0, 6 * 4096) == (True, 0.0)
    assert meter.charge(5.0, 6 * 4096 + 1) == (False, 5.0), "refused: nothing more spent"
    assert meter.charge(19.0, 10**6) == (True, 0.0), "a full bucket buys any reply"
    assert meter.charge(18.9, 10**6) == (False, 18.9)
    assert FloodMeter(rate=0.0, burst=20).charge(0.0, 10**6) == (True, 0.0)


def test_dropped_lines_warn_once_a_second_and_cut_past_the_burst() -> None:
    meter = FloodMeter(rate=1.0, burst=3)
    verdict, flooding = meter.dropped(None, 0.0)
    assert verdict is Dropped.WARN
    assert meter.dropped(flooding, 0.5) == (Dropped.QUIET, flooding)
    assert meter.dropped(flooding, 1.0) == (Dropped.WARN, flooding)
    assert meter.dropped(flooding, 1.0) == (Dropped.CUT, flooding), "a fourth within the drain"


def test_an_idle_connection_holds_a_count_and_no_flood_record() -> None:
    """Memory per idle connection (docs/fanout.md): the rule is shared; the
    record of dropped lines is made at the first one."""
    h = Harness(flood_rate=1.0, flood_burst=2)
    alice = h.user("alice")
    protocol = alice.protocol
    assert protocol._flooding is None
    assert h.factory.flood is not None
    alice.send("PING a", "PING b", "PING c")
    assert protocol._flooding is not None


def test_a_penalty_told_of_an_earlier_time_does_not_drain_twice() -> None:
    """A line held behind a command is judged as of when it arrived, which
    may be before the last time the address's penalty was told: it adds
    one and drains nothing, and the time it was told last stays."""
    penalty = Penalty(20, 10.0)
    assert penalty.add(10.0) == 1.0
    assert penalty.add(5.0) == 2.0
    assert penalty.add(10.0) == 3.0  # 10 -> 10: nothing drained in between


def test_a_clock_that_went_back_takes_no_tokens_away() -> None:
    """The wall clock stepped back an hour between two lines: the second is
    judged on the tokens the connection had, not on an hour's debt."""
    meter = FloodMeter(rate=1.0, burst=5)
    assert meter.spend(5.0, 3600.0, 0.0) == (True, 4.0)
