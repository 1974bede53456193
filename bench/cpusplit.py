"""
Split a server's CPU time by thread and by where it runs: the kernel, the
interpreter, the C library, SQLite, the rest.

    .venv/bin/python -m bench.cpusplit [--servers chat,floor,inspircd]
        [--clients 100] [--rate 200] [--seconds 10] [--rounds 2] [--baseline TREE]

For each server in turn (started as in the full run, pinned to CPU 0), it
connects the clients, starts the senders, and has ``perf record`` sample the
server's CPU clock (10,000 samples per CPU-second, on every thread) for
``--seconds`` in the middle of the sending.  It prints, per room message
sent, the µs of CPU in each part, for the main thread and for the others
(our server's history writer).  Sampling adds its own cost, so the totals
run above ``bench.ab``'s; compare the parts between servers within one run.

The question it answers (docs/benchmark.md, "Not reliably met: CPU per line with 100 clients at
200 msgs/s"): where our server spends more than the C servers at a light load.  Needs ``perf``
(Debian: ``linux-perf``) and permission to trace (root, or ``kernel.perf_event_paranoid`` at
most 1).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import scenarios
from bench.run import FULL, raise_nofile, room, server_specs
from bench.servers import BENCH, ServerSpec

FREQUENCY = 10_000  # samples per CPU-second
PARTS = ["kernel", "python", "libc", "sqlite", "other"]


def part_of(dso: str) -> str:
    """The part a sample's shared object belongs to."""
    name = dso.rsplit("/", 1)[-1].strip("()[]")
    if name.startswith("kernel"):
        return "kernel"
    if name.startswith("libpython"):
        return "python"
    if name.startswith("libc.so"):
        return "libc"
    if name.startswith("libsqlite3"):
        return "sqlite"
    return "other"


def parse_script(text: str) -> tuple[int | None, Counter[tuple[str, str]]]:
    """``perf script -F tid,ip,dso`` output (``TID IP (DSO)`` a line): the
    main thread's id (the process's own, the lowest) and the samples per
    (thread, part), the thread being "main" or "others"."""
    rows: list[tuple[int, str]] = []
    for line in text.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[0].isdigit():
            rows.append((int(fields[0]), part_of(fields[2].strip())))
    main = min((tid for tid, _ in rows), default=None)
    counts: Counter[tuple[str, str]] = Counter(
        ("main" if tid == main else "others", part) for tid, part in rows)
    return main, counts


def measure(spec: ServerSpec, clients: int, rate: float,
            seconds: float) -> Counter[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="cpusplit-") as tmp:
        data = Path(tmp) / "perf.data"
        with room(spec, FULL, clients) as (srv, gen, _conn):
            scenarios.settle(gen, 3.0, 0.2)
            gen.send(rate, seconds + 1.0)
            time.sleep(0.5)
            subprocess.run(
                ["taskset", "-c", "1", "perf", "record", "-q", "-e", "cpu-clock",
                 "-F", str(FREQUENCY), "-o", str(data), "-p", str(srv.pid),
                 "--", "sleep", str(seconds)],
                capture_output=True, text=True, timeout=seconds + 30, check=True)
            gen.send_result(seconds + 30)
        done = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,ip,dso"],
                              capture_output=True, text=True, timeout=300, check=True)
    _, counts = parse_script(done.stdout)
    if not counts:
        raise RuntimeError(f"perf recorded nothing: {done.stderr[-400:]}")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpusplit")
    ap.add_argument("--servers", default="chat,floor,inspircd")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=200.0, help="room messages/s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also our server from this source tree, as chat-before")
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 30 or not 1 <= args.rounds <= 10:
        ap.error("--seconds must be at most 30 and --rounds 1 to 10")
    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    raise_nofile()
    specs = {s.key: s for s in server_specs(False, None, baseline=args.baseline)}
    specs["floor"] = ServerSpec("floor", "the platform's floor (bench/floor.py)", "chat/1",
                                "floor", tree=BENCH.parent)
    keys = args.servers.split(",")
    missing = [k for k in keys if k not in specs]
    if missing:
        ap.error(f"unknown servers {missing}; known: {sorted(specs)}")
    messages = args.rate * args.seconds
    us_per_sample = 1e6 / FREQUENCY
    print(f"C={args.clients}, {args.rate:g} room messages/s, {args.seconds:g} s sampled, "
          f"{args.rounds} rounds; µs of CPU per room message (about {messages:.0f} "
          "messages a round):")
    print(f"{'server':10s}{'thread':>8s}" + "".join(f"{p:>9s}" for p in PARTS) + f"{'all':>9s}")
    for r in range(args.rounds):
        for key in keys:
            counts = measure(specs[key], args.clients, args.rate, args.seconds)
            for thread in ("main", "others"):
                row = [counts[(thread, p)] * us_per_sample / messages for p in PARTS]
                if thread == "others" and not any(row):
                    continue
                print(f"{key if thread == 'main' else '':10s}{thread:>8s}"
                      + "".join(f"{v:9.1f}" for v in row) + f"{sum(row):9.1f}", flush=True)
        if r + 1 < args.rounds:
            print("-" * (18 + 9 * (len(PARTS) + 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
