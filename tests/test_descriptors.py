"""Issue 14.6: --max-clients against the file descriptor limit (a fake resource module)."""

from __future__ import annotations

import pytest

from twisted_chat.server.limits.descriptors import RESERVED, DoesNotFit, fit


class FakeLimits:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, ceiling: int | None = None) -> None:
        self.soft, self.hard = soft, hard
        self.ceiling = ceiling  # like fs.nr_open: no soft limit above it
        self.calls: list[tuple[int, int]] = []

    def getrlimit(self, resource: int) -> tuple[int, int]:
        assert resource == self.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, resource: int, limits: tuple[int, int]) -> None:
        self.calls.append(limits)
        soft, _hard = limits
        if (self.hard != self.RLIM_INFINITY and soft > self.hard) or (
                self.ceiling is not None and soft > self.ceiling):
            raise ValueError("not allowed")
        self.soft = soft


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    limits = FakeLimits(1024, 524288)
    result = fit(10000, chosen=False, limits=limits)
    assert limits.soft == 524288
    assert (result.max_clients, result.raised_from, result.warning) == (10000, 1024, None)


def test_already_enough_changes_nothing_but_the_soft_limit() -> None:
    limits = FakeLimits(65536, 65536)
    assert fit(10000, chosen=True, limits=limits).raised_from is None
    assert limits.calls == []


def test_an_unlimited_hard_limit_asks_for_a_large_soft_one() -> None:
    limits = FakeLimits(1024, FakeLimits.RLIM_INFINITY, ceiling=1 << 16)
    result = fit(10000, chosen=True, limits=limits)
    assert limits.soft == 10000 + RESERVED  # the big ask failed; what is needed did not
    assert result.max_clients == 10000


def test_the_default_is_lowered_loudly_when_it_does_not_fit() -> None:
    limits = FakeLimits(1024, 1024)
    result = fit(10000, chosen=False, limits=limits)
    assert result.max_clients == 1024 - RESERVED
    assert result.warning is not None
    assert "--max-clients 10000 needs" in result.warning
    assert f"serving at most {1024 - RESERVED}" in result.warning


def test_a_chosen_max_clients_that_does_not_fit_is_refused() -> None:
    with pytest.raises(DoesNotFit, match=f"lower --max-clients to at most {1024 - RESERVED}"):
        fit(5000, chosen=True, limits=FakeLimits(1024, 1024))


def test_no_room_at_all_is_refused_even_for_the_default() -> None:
    with pytest.raises(DoesNotFit, match="too few for any connection"):
        fit(10000, chosen=False, limits=FakeLimits(32, 32))


def test_the_metrics_ports_connections_are_kept_out_of_the_chats_share() -> None:
    """With --metrics its connections (metricsport.METRICS_DESCRIPTORS) come
    out of the budget, as the server's own files do: they cannot take the
    descriptors the chat port's users need."""
    from twisted_chat.server.metrics.metricsport import METRICS_DESCRIPTORS

    assert fit(1024 - RESERVED, chosen=True, limits=FakeLimits(1024, 1024)).warning is None
    room = 1024 - RESERVED - METRICS_DESCRIPTORS
    with pytest.raises(DoesNotFit, match=f"its --metrics connections included.*at most {room}"):
        fit(1024 - RESERVED, chosen=True, limits=FakeLimits(1024, 1024),
            metrics=METRICS_DESCRIPTORS)
    lowered = fit(10000, chosen=False, limits=FakeLimits(1024, 1024),
                  metrics=METRICS_DESCRIPTORS)
    assert lowered.max_clients == room
