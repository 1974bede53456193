"""
Where a lobby message's time goes inside our server, at a given load.

    .venv/bin/python -m bench.coldpath [--clients 100] [--rates 200,2000] [--seconds 10]

For each rate, starts our server (its defaults as in the benchmark's
``chat`` column, pinned to CPU 0) with a wall-clock timer around a few of its
methods on a lobby message's path, offers the rate with the full run's own
step (L{bench.scenarios.one_rate}), stops the server and prints, per method,
how often it ran and its p10, p50, p90 and mean time in µs.

Why: at 200 msgs/s the server is idle for 5 ms between two messages, and the
same Python work then takes several times longer than at 2,000 msgs/s (cold
caches).  This tool shows that directly, method by method (docs/benchmark.md,
"Current results", the light-load CPU target).  The timers add well under a
microsecond per call; the figures are for comparing loads, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The methods timed: (module, class, method), in the order of a message's path.
TIMED = [
    ("twisted.internet.epollreactor", "EPollReactor", "_doReadOrWrite"),
    ("twisted_chat.server.protocol", "ChatProtocol", "dataReceived"),
    ("twisted_chat.server.session", "Session", "line_received"),
    ("twisted_chat.server.hub", "Hub", "say"),
    ("twisted_chat.server.lines", "LineListener", "lobby_message"),
    ("twisted.internet.base", "ReactorBase", "runUntilCurrent"),
    ("twisted_chat.server.output.fanout", "LobbyFanout", "flush"),
]


def _instrument(dump: Path) -> None:
    """Wrap the L{TIMED} methods with timers; write the samples at exit."""
    import importlib

    samples: dict[str, list[int]] = {}
    clock = time.perf_counter_ns

    def timed(f: Callable[..., Any], name: str) -> Callable[..., Any]:
        got = samples.setdefault(name, [])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return f(*args, **kwargs)
            finally:
                got.append(clock() - began)

        return wrapper

    for module, cls, method in TIMED:
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, method, timed(getattr(owner, method), f"{cls}.{method}"))
    # twistd leaves without running atexit hooks: write as the reactor stops.
    from twisted.internet import reactor

    reactor.addSystemEventTrigger(
        "after", "shutdown", lambda: dump.write_text(json.dumps(samples)))


def _serve(dump: str, twistd_args: list[str]) -> None:
    """The server's process: instrument, then run twistd as usual."""
    _instrument(Path(dump))
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *twistd_args]
    run()  # type: ignore[no-untyped-call]


def _summary(samples: dict[str, list[int]]) -> list[tuple[str, int, float, float, float, float]]:
    rows = []
    for _module, cls, method in TIMED:
        xs = sorted(samples.get(f"{cls}.{method}", []))
        if not xs:
            continue

        def q(f: float, xs: list[int] = xs) -> float:
            return xs[min(len(xs) - 1, int(f * len(xs)))] / 1e3

        rows.append((f"{cls}.{method}", len(xs), q(0.1), q(0.5), q(0.9), sum(xs) / len(xs) / 1e3))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        _serve(argv[1], argv[3:])  # --serve DUMP -- twistd args...
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.coldpath")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rates", default="200,2000", help="room messages/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    if not 0 < args.seconds <= 30 or not 1 <= len(rates) <= 6:
        ap.error("--seconds must be at most 30, and 1 to 6 rates")

    from bench import scenarios
    from bench.run import FULL, raise_nofile, room, server_specs
    from bench.servers import BENCH, ServerSpec

    @dataclass
    class Instrumented(ServerSpec):
        """Our server with its defaults, started through L{_serve}."""

        dump: Path = Path()

        def argv(self, port: int, workdir: Path) -> list[str]:
            twistd = super().argv(port, workdir)
            return [sys.executable, "-m", "bench.coldpath", "--serve", str(self.dump), "--",
                    *twistd[1:]]

    raise_nofile()
    chat = next(s for s in server_specs(False, None) if s.key == "chat")
    for rate in rates:
        dump = Path(os.environ.get("TMPDIR", "/tmp")) / f"coldpath-{os.getpid()}-{rate:g}.json"
        spec = Instrumented(chat.key, chat.label, chat.dialect, chat.kind, list(chat.extra),
                            tree=BENCH.parent, dump=dump)
        with room(spec, FULL, args.clients) as (srv, gen, _conn):
            res = scenarios.one_rate(srv, gen, args.clients, rate, args.seconds, FULL["drain"])
        for _ in range(100):  # the server writes its samples as it exits
            if dump.exists():
                break
            time.sleep(0.1)
        samples = json.loads(dump.read_text())
        dump.unlink()
        print(f"{args.clients} clients, {rate:g} msgs/s: {res['sent']} messages, server "
              f"{res['server_us_per_line']:.3f} µs per delivered line")
        print(f"  {'method':32} {'calls':>7} {'p10':>8} {'p50':>8} {'p90':>8} {'mean':>8}  (µs)")
        for name, n, p10, p50, p90, mean in _summary(samples):
            print(f"  {name:32} {n:7d} {p10:8.1f} {p50:8.1f} {p90:8.1f} {mean:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
