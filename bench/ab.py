"""
Interleaved A/B runs of one fan-out step, for questions the full run is too
noisy to answer from one sample.

    .venv/bin/python -m bench.ab --servers chat,ngircd --clients 100 --rate 2000 \\
        --rounds 4 [--order rotate|fixed] [--variant "chat-fd3=--fanout-delay 3"] \\
        [--baseline TREE] [--interpreter deb=/tmp/debvenv/bin/python] [--out FILE]

Each round starts every server in turn (fresh, pinned to CPU 0 as in the
full run), connects the clients, and measures one step at ``--rate`` room
messages/s with the full run's own code (L{bench.scenarios.one_rate}).  A
variant is our server with its defaults (as the ``chat`` column) plus more
options; ``--baseline TREE`` adds our server from another source tree as
``chat-before``; ``--interpreter NAME=PYTHON`` adds our server under
another venv's interpreter (with the package installed in that venv) as
``chat-NAME``; the key ``floor`` is the platform's floor (L{bench.floor}:
our fan-out and send path, no chat logic).  The order within a round moves
the figures (the server first in a round comes out higher), so by default
(``--order rotate``) round r runs the servers rotated by r: over a multiple
of n rounds each server is in each position equally often; ``--order
fixed`` runs them as listed every round.  It prints a line per measurement
and a summary: per server the mean and range of server µs per line and of
p50, the ratio of the means to the first-listed server, and the server's
user and system µs per line apart (the interpreter's cost against the
kernel's); then for each other server its paired ratio to the first-listed
one, round by round (each round's two figures come from the same minutes of
the machine, so the pairs cancel the drift that the means carry): median,
range, and in how many rounds it was below 1.0.  ``--out`` also writes that
output to a file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.run import FULL, interpreter_arg, raise_nofile, room, server_specs
from bench.servers import BENCH, ServerSpec

ORDERS = ("rotate", "fixed")


def round_order(keys: list[str], r: int, order: str) -> list[str]:
    """Round C{r}'s servers: rotated by r (mod n) unless the order is fixed,
    so that no server is always first, the position that comes out higher."""
    if order == "fixed":
        return list(keys)
    shift = r % len(keys)
    return [*keys[shift:], *keys[:shift]]


@dataclass(frozen=True)
class Paired:
    """One server's µs/line over the first server's, each round against the
    same round's: the spread of these says more than a ratio of means."""

    median: float
    low: float
    high: float
    below: int  # rounds in which the ratio was below 1.0
    rounds: int

    def __str__(self) -> str:
        return (f"median {self.median:.2f}x [{self.low:.2f}-{self.high:.2f}], "
                f"below 1.0 in {self.below} of {self.rounds} rounds")


def paired_ratio(figures: list[float | None], base: list[float | None]) -> Paired | None:
    """The per-round ratios of C{figures} to C{base} (same rounds, in order);
    a round where either has no figure (nothing delivered) is left out, and
    None if no round is left."""
    ratios = [f / b for f, b in zip(figures, base, strict=True)
              if f is not None and b]
    if not ratios:
        return None
    return Paired(statistics.median(ratios), min(ratios), max(ratios),
                  sum(1 for x in ratios if x < 1.0), len(ratios))


def measure(spec: ServerSpec, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    with room(spec, FULL, clients) as (srv, gen, _conn):
        return scenarios.one_rate(srv, gen, clients, rate, seconds, FULL["drain"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab")
    ap.add_argument("--servers", default="chat,ngircd", help="keys, in the order to run")
    ap.add_argument("--variant", action="append", default=[],
                    help='"KEY=OPTIONS": our server with more options (repeatable)')
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2000.0, help="room messages/s")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--order", choices=ORDERS, default="rotate",
                    help="rotate: round r starts at the r-th server (default); "
                         "fixed: as listed every round")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also our server from this source tree, as chat-before")
    ap.add_argument("--interpreter", action="append", default=[], metavar="NAME=PYTHON",
                    type=interpreter_arg,
                    help="also our server under this venv's python, as chat-NAME")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0 < args.seconds <= 30:
        ap.error("--rounds must be 1 to 20 and --seconds at most 30")
    raise_nofile()
    specs = {s.key: s for s in server_specs(False, None, baseline=args.baseline,
                                                 interpreters=args.interpreter)}
    # The platform's floor (bench/floor.py): only here, not in the full run.
    specs["floor"] = ServerSpec("floor", "the platform's floor (bench/floor.py)", "chat/1",
                                "floor", tree=BENCH.parent)
    for v in args.variant:
        key, _, options = v.partition("=")
        specs[key] = replace(specs["chat"], key=key, label=f"twisted-chat {options}",
                             extra=[*specs["chat"].extra, *options.split()])
    keys = args.servers.split(",")
    missing = [k for k in keys if k not in specs]
    if missing:
        ap.error(f"unknown servers {missing}; known: {sorted(specs)}")
    out: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    say(f"A/B: C={args.clients}, {args.rate:g} room messages/s, {args.seconds:g} s per step, "
        f"{args.rounds} rounds of {', '.join(keys)}, order {args.order}"
        + (" (not a multiple of the servers: positions uneven)"
           if args.order == "rotate" and args.rounds % len(keys) else ""))
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for k in round_order(keys, r, args.order):
            res = measure(specs[k], args.clients, args.rate, args.seconds)
            results[k].append(res)
            lat = res["latency_ms"]
            split = res.get("server_user_sys_us_per_line")
            apart = f", user {split[0]:.3f} sys {split[1]:.3f}" if split else ""
            say(f"round {r + 1} {k:14s} server {res['server_us_per_line']:.3f} us/line "
                f"(CPU {res['server_cpu_share'] * 100:.1f} %{apart}), machine "
                f"{res['machine_us_per_line']:.3f} us/line, generator "
                f"{res['gen_cpu_share'] * 100:.0f} %, delivered {res['fraction'] * 100:.1f} %, "
                f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms")
    base = statistics.mean(r["server_us_per_line"] for r in results[keys[0]])
    splits = {k: [r["server_user_sys_us_per_line"] for r in results[k]
                  if r.get("server_user_sys_us_per_line")] for k in keys}
    say("summary (server us/line: mean [min-max], ratio of means to the first; p50 ms mean):")
    for k in keys:
        per_line = [r["server_us_per_line"] for r in results[k]]
        p50 = [r["latency_ms"]["p50"] for r in results[k]]
        say(f"  {k:14s} {statistics.mean(per_line):.3f} [{min(per_line):.3f}-"
            f"{max(per_line):.3f}] {statistics.mean(per_line) / base:.2f}x; "
            f"p50 {statistics.mean(p50):.2f}" + (
                f"; user {statistics.mean(s[0] for s in splits[k]):.3f} sys "
                f"{statistics.mean(s[1] for s in splits[k]):.3f} us/line" if splits[k] else ""))
    if len(keys) > 1:
        say(f"paired ratio to {keys[0]} (server us/line over its, round by round):")
    for k in keys[1:]:
        pair = paired_ratio([r["server_us_per_line"] for r in results[k]],
                            [r["server_us_per_line"] for r in results[keys[0]]])
        say(f"  {k:14s} {pair if pair is not None else 'no round with both figures'}")
    if args.out is not None:
        args.out.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
