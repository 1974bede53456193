"""
The cost of a browser user: ``python -m bench.web [--rates 200,1000] ...``.

The same server (twisted-chat with ``--web``, pinned to CPU 0) is driven in
turn by N raw TCP clients and by N WebSocket clients (the generator's
``chat/1-ws`` dialect: one line per text frame, as the page speaks it), all
in the lobby, at the same offered rates; each mode gets a fresh server.
The figures are the benchmark's own (L{bench.scenarios.one_rate}): server
CPU per delivered line, latency from the sample receivers, delivered
fraction.  Modes alternate (tcp, ws, tcp, ws...) so that a neighbour's load
on the shared machine falls on both.  Bounded: ``rounds`` x rates x
(duration + drain + set-up) seconds.

Writes a JSON file and prints a table with the WebSocket/TCP ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.gen import Generator
from bench.run import GENEROUS_FLOOD, raise_nofile
from bench.scenarios import one_rate
from bench.servers import ROOT, RunningServer, ServerSpec, free_port

MODES = {"tcp": "chat/1", "ws": "chat/1-ws"}


def measure(mode: str, clients: int, senders: int, samples: int, rates: list[float],
            duration: float, drain: float) -> list[dict[str, Any]]:
    web_port = free_port()
    spec = ServerSpec(
        "chat-web", "twisted-chat --web", MODES[mode], "chat",
        [*GENEROUS_FLOOD, "--db", ":memory:", "--exempt", "127.0.0.0/8",
         "--web", f"tcp:{web_port}:interface=127.0.0.1"])
    srv = RunningServer(spec)
    gen = Generator(MODES[mode])
    try:
        port = web_port if mode == "ws" else srv.port
        joined = gen.connect("127.0.0.1", port, clients, senders, samples, prefix=f"{mode}u")
        if joined["ok"] != clients:
            raise RuntimeError(f"{mode}: only {joined['ok']} of {clients} joined: "
                               f"{joined['errors']}")
        results = []
        for rate in rates:
            step = one_rate(srv, gen, clients, rate, duration, drain)
            step["mode"] = mode
            results.append(step)
        return results
    finally:
        gen.close()
        srv.stop()


def row(step: dict[str, Any]) -> str:
    lat = step["latency_ms"]
    return (f"{step['mode']:>3}  {step['rate']:>6g} msg/s  {step['lines_per_s']:>9,.0f} lines/s  "
            f"{step['server_us_per_line']:>6.2f} us/line  cpu {step['server_cpu_share']:>5.1%}  "
            f"p50 {lat['p50']:>6.2f} ms  p99 {lat['p99']:>6.2f} ms  "
            f"delivered {step['fraction']:.1%}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rates", default="200,1000",
                    help="lobby messages per second, comma-separated")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--drain", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-web")
    args = ap.parse_args(argv)
    raise_nofile()
    rates = [float(r) for r in args.rates.split(",")]
    steps: list[dict[str, Any]] = []
    for k in range(args.rounds):
        for mode in ("tcp", "ws"):
            for step in measure(mode, args.clients, args.senders, args.samples, rates,
                                args.duration, args.drain):
                step["round"] = k
                steps.append(step)
                print(row(step), flush=True)
    print()
    print("WebSocket / TCP, mean over rounds:")
    summary: list[dict[str, object]] = []
    for rate in rates:
        def mean(mode: str, key: str, rate: float = rate) -> float:
            values = [_get(s, key) for s in steps if s["mode"] == mode and s["rate"] == rate]
            return sum(values) / len(values)
        line: dict[str, dict[str, float | None]] = {}
        for key in ("server_us_per_line", "latency_ms.p50", "latency_ms.p99"):
            tcp, ws = mean("tcp", key), mean("ws", key)
            line[key] = {"tcp": tcp, "ws": ws, "ratio": ws / tcp if tcp else None}
        summary.append({"rate": rate, **line})
        print(f"  {rate:g} msg/s: CPU/line {line['server_us_per_line']['ratio']:.2f}x "
              f"({line['server_us_per_line']['tcp']:.2f} -> "
              f"{line['server_us_per_line']['ws']:.2f} us), "
              f"p50 {line['latency_ms.p50']['ratio']:.2f}x, "
              f"p99 {line['latency_ms.p99']['ratio']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("web-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "steps": steps, "summary": summary}, indent=1))
    print(f"\nwritten: {path}")


def _get(step: dict[str, Any], key: str) -> float:
    value: Any = step
    for part in key.split("."):
        value = value[part]
    return float(value)


if __name__ == "__main__":
    main()
