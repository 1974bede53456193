"""
The refill and drain rules every limit shares (twisted_chat.server.limits.buckets),
with plain numbers: the shared functions' edges, then the two classes.
"""

from __future__ import annotations

import pytest

from twisted_chat.server.limits.buckets import Penalty, Rate, TokenBucket, drained, refilled


def test_refilled_adds_the_rate_for_the_time_since() -> None:
    assert refilled(1.0, 10.0, 12.0, 0.5, 5.0) == 2.0
    assert refilled(-3.0, 0.0, 1.0, 2.0, 5.0) == -1.0, "a debt is paid back at the rate"


def test_refilled_stops_at_the_cap() -> None:
    assert refilled(4.0, 0.0, 100.0, 1.0, 5.0) == 5.0
    assert refilled(7.0, 0.0, 0.0, 1.0, 5.0) == 5.0, "over the cap already: cut to it"


def test_refilled_with_a_clock_that_went_back_adds_and_takes_nothing() -> None:
    assert refilled(2.0, 100.0, 40.0, 1.0, 5.0) == 2.0


def test_refilled_at_rate_zero_never_refills() -> None:
    assert refilled(2.0, 0.0, 1e6, 0.0, 5.0) == 2.0


def test_drained_takes_amount_every_period_never_below_zero() -> None:
    assert drained(10.0, 0.0, 1.0, 20.0, 10.0) == 8.0, "20 every 10 s: 2 a second"
    assert drained(3.0, 0.0, 60.0, 1.0, 60.0) == 2.0, "one a minute"
    assert drained(3.0, 0.0, 1e6, 1.0, 60.0) == 0.0
    assert drained(3.0, 5.0, 7.0, 1.0) == 1.0, "every: one second by default"


def test_drained_with_a_clock_that_went_back_adds_nothing() -> None:
    assert drained(3.0, 100.0, 40.0, 1.0, 60.0) == 3.0


def test_drained_at_rate_zero_keeps_the_level() -> None:
    assert drained(3.0, 0.0, 1e6, 0.0, 10.0) == 3.0


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(Rate(2.0, 3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.full_at(0.5) == pytest.approx(2.0)


def test_rate_zero_is_no_limit() -> None:
    bucket = TokenBucket(Rate(0.0, 0), now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))
    assert bucket.wait(0.0) == 0.0


def test_token_bucket_debt_and_a_clock_that_went_back() -> None:
    bucket = TokenBucket(Rate(1.0, 5), now=100.0)
    bucket.set(-2.0, 100.0)  # the cluster's count: the address owes two
    assert not bucket.take(40.0), "a clock that went back pays nothing back"
    assert bucket.wait(40.0) == pytest.approx(3.0)
    assert bucket.take(43.0)
    assert bucket.full_at(43.0) == pytest.approx(48.0)


def test_take_as_of_refills_to_when_the_line_came_only() -> None:
    """Lines that came at 5 a second (a quarter of the rate) and are judged
    later, one after the other: each as of when it came, all go through; a
    burst that came at once is cut at the burst, as it was when it came."""
    gentle = TokenBucket(Rate(20.0, 40), now=0.0)
    assert all(gentle.take_as_of(i * 0.2) for i in range(100))
    burst = TokenBucket(Rate(20.0, 40), now=0.0)
    assert sum(burst.take_as_of(5.0) for _ in range(100)) == 40
    assert burst.stamp == 5.0


def test_take_as_of_an_earlier_time_than_the_last_refills_nothing() -> None:
    """A line taken now, then one that came before it: the second is judged
    as of the later time (no time back, no refill counted twice), and the
    next line now refills only from then."""
    bucket = TokenBucket(Rate(1.0, 5), now=0.0)
    bucket.set(1.0, 10.0)
    assert bucket.take_as_of(4.0), "the one token left"
    assert bucket.stamp == 10.0, "not set back"
    assert not bucket.take_as_of(2.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)
    assert TokenBucket(Rate(0.0, 0), now=0.0).take_as_of(-5.0), "no limit"


def test_penalty_drains_at_a_tenth_of_the_burst_per_second() -> None:
    penalty = Penalty(20, now=0.0)
    for _ in range(10):
        penalty.add(0.0)
    assert penalty.value == 10
    assert penalty.add(1.0) == pytest.approx(10 - 2 + 1)
    assert penalty.drained_at(1.0) == pytest.approx(1.0 + 9 * 10 / 20)
    assert penalty.add(0.5) == pytest.approx(10), "a clock that went back drains nothing"
    assert penalty.drained_at(100.0) == 100.0
