"""The order in which the benchmark's clients register, and how many at once
(bench.gen)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any, cast

import pytest

from bench import bulk as bulk_module
from bench import gen as gen_module
from bench.dialects import DIALECTS
from bench.gen import Generator, Worker, registration_phases, worker_plans


def test_senders_first_then_the_samples_spread_through_the_receivers() -> None:
    phases = registration_phases(100, 10, 8, "b")
    order = [spec for phase in phases for spec in phase]
    assert sorted(index for index, *_ in order) == list(range(100)), "each client once"
    assert [spec[3] for spec in order[:10]] == [True] * 10, "the senders come first"
    samples = [pos for pos, spec in enumerate(order) if spec[2]]
    assert [order[pos][1] for pos in samples] == [f"b{i}" for i in range(10, 18)]
    # one in the middle of each eighth of the 82 bulk receivers
    assert samples == [15, 26, 37, 48, 60, 71, 82, 93]
    # each sample registers alone, after the receivers before it have
    assert all(len(phases[1 + 2 * k + 1]) == 1 for k in range(8))


def test_without_samples_everyone_registers_at_once() -> None:
    phases = registration_phases(500, 0, 0, "i")
    assert len(phases) == 1 and len(phases[0]) == 500


def test_more_samples_than_receivers() -> None:
    order = [spec for phase in registration_phases(3, 2, 8, "q") for spec in phase]
    assert [(index, sample, sender) for index, _, sample, sender in order] == [
        (0, False, True), (1, False, True), (2, True, False)]


def test_each_worker_gets_its_kind_and_the_bulk_is_shared() -> None:
    phases = registration_phases(40, 4, 2, "w")
    plans = [worker_plans(phase, 4) for phase in phases]
    assert [spec[1] for spec in plans[0][0]] == ["w0", "w1", "w2", "w3"]
    assert all(not plan[0] and not plan[1] for plan in plans[1::2]), "bulk phases"
    assert [plan[1][0][1] for plan in plans[2::2][:2]] == ["w4", "w5"], "one sample each"
    bulk = [spec for plan in plans for worker in plan[2:] for spec in worker]
    assert len(bulk) == 34
    assert all(spec in plan[2 + spec[0] % 2] for plan in plans for spec in plan[2] + plan[3])
    assert {len(plan[2]) - len(plan[3]) for plan in plans[1::2]} <= {-1, 0, 1}


def _listener() -> socket.socket:
    """A server that accepts in the kernel only: it never reads nor answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


def _queued(server: socket.socket) -> int:
    server.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            server.accept()[0].close()
            count += 1
    return count


def _bulk_connect(server: socket.socket, clients: int, prefix: str,
                  **kwargs: Any) -> dict[str, Any]:
    """Register chat/1 clients of C{server} through one bulk receiver."""
    gen = Generator("chat/1", 1, cpu=None)
    try:
        return gen.connect("127.0.0.1", server.getsockname()[1], clients, 0, 0, prefix,
                           **kwargs)
    finally:
        gen.close()


def test_the_bulk_receivers_open_no_more_than_the_window_before_an_answer() -> None:
    """A server's accept queue may be short (ngircd's holds 10): the
    generator opens no more connections than the window while none of
    them has been answered, whatever its concurrency."""
    server = _listener()
    res = _bulk_connect(server, 12, "w", concurrency=50, timeout=2.0, window=3)
    assert res["ok"] == 0
    assert res["errors"] == {"unfinished (out of time): accepted, no reply": 3,
                             "not started (out of time)": 9}
    assert _queued(server) == 3
    server.close()


def test_the_bulk_receivers_make_an_unaccepted_connection_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that accepts in its kernel and never answers, with every
    registration reported unacknowledged: each client is tried
    MAX_ATTEMPTS times, then counted with that reason (the workers are
    forked, so they inherit the patched constants)."""
    monkeypatch.setattr(bulk_module, "RETRY_UNACKED", 0.05)
    monkeypatch.setattr(bulk_module, "CHECK_EVERY", 0.02)
    monkeypatch.setattr(bulk_module, "MAX_ATTEMPTS", 3)
    monkeypatch.setattr(bulk_module, "HANDSHAKE_TIMEOUT", 0.4)
    monkeypatch.setattr(bulk_module, "unacked_bytes", lambda sock: 45)
    server = _listener()
    res = _bulk_connect(server, 2, "r", concurrency=10, timeout=20.0, window=10)
    server.close()
    assert res["ok"] == 0
    assert res["retried"] == 2 * (3 - 1)
    assert res["errors"] == {"TimeoutError: never accepted (registration not acknowledged)": 2}


def test_the_asyncio_workers_open_no_more_than_the_window_before_an_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The senders' and samples' worker too: 12 clients of a server that
    never answers, each given up after 0.05 s, open three at a time, in
    four rounds (all at once they would take one)."""
    monkeypatch.setattr(gen_module, "HANDSHAKE_TIMEOUT", 0.05)
    server = _listener()
    worker = Worker(cast(Any, None), DIALECTS["chat/1"])
    specs = [(i, f"a{i}", False, True) for i in range(12)]
    start = time.monotonic()
    res = asyncio.run(worker.cmd_connect("127.0.0.1", server.getsockname()[1], specs,
                                         concurrency=50, window=3))
    assert time.monotonic() - start >= 0.2
    assert res["errors"] == {"TimeoutError:None": 12}
    assert _queued(server) == 12
    server.close()


def test_an_irc_registration_asks_for_an_answer_at_once() -> None:
    """InspIRCd sends nothing for a second before its 001: the PING draws a
    reply (PONG, or 451 before the registration ends) that tells the
    generator the connection was accepted."""
    assert DIALECTS["irc"].register("n").endswith(b"PING :open\r\n")
    assert DIALECTS["irc-noroom"].register("n").endswith(b"PING :open\r\n")
