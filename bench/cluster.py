"""
Cluster mode's benchmark: ``python -m bench.cluster [--clients 1000] [--out DIR]``.

The lobby fan-out with the same clients (1) on one plain server, (2) on one
cluster node (``--redis``) and (3) spread over two cluster nodes, at the
same offered rates: a light load (latency) and a fixed heavy one.  The
servers and redis-server are pinned to CPU 0, the generator to CPU 1 (this
machine has two cores: the two nodes share one, so the figures are ratios
and per-message / per-delivery costs, not a scaling curve).  Writes
``<out>/<date>-cluster.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.gen import Generator
from bench.run import GENEROUS_FLOOD, chat_options, raise_nofile
from bench.servers import RunningServer, ServerSpec, cpu_seconds, free_port


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        if shutil.which("taskset"):
            argv = ["taskset", "-c", "0", *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def command(self, *args: str) -> str:
        parts = "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(f"*{len(args)}\r\n{parts}".encode())
            time.sleep(0.05)
            return sock.recv(1 << 20).decode(errors="replace")

    def commandstats(self) -> dict[str, dict[str, float]]:
        """Redis's own count and CPU time (us) per command since the last reset."""
        out: dict[str, dict[str, float]] = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                fields = dict(kv.split("=", 1) for kv in rest.split(","))
                out[name[8:]] = {"calls": float(fields["calls"]), "usec": float(fields["usec"])}
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Nodes:
    """Several servers measured as one (CPU and memory summed)."""

    def __init__(self, servers: list[RunningServer]) -> None:
        self.servers = servers
        self.max_rss = 0

    def cpu(self) -> float:
        return sum(s.cpu() for s in self.servers)

    def rss(self) -> int:
        value = sum(s.rss() for s in self.servers)
        self.max_rss = max(self.max_rss, value)
        return value

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)


@contextlib.contextmanager
def setup(kind: str, clients: int, senders: int, samples: int
          ) -> Iterator[tuple[Nodes, Generator, Redis | None]]:
    flood = GENEROUS_FLOOD if "--flood-rate" in chat_options() else []
    redis = Redis() if kind != "single" else None
    count = 2 if kind == "two-nodes" else 1
    extra = [*flood, "--max-per-ip", "100000"]
    if redis is not None:
        extra += ["--redis", redis.url]
    else:
        extra += ["--db", ":memory:"]
    servers: list[RunningServer] = []
    gen = None
    try:
        for _ in range(count):
            servers.append(RunningServer(ServerSpec("chat", kind, "chat/1", "chat", extra)))
        time.sleep(0.5)
        gen = Generator("chat/1", 1)
        share = clients // count
        for i, server in enumerate(servers):
            got = gen.connect("127.0.0.1", server.port, share, senders // count,
                              max(1, samples // count), f"n{i}x", concurrency=200,
                              timeout=120.0)
            if got["ok"] < share:
                raise RuntimeError(f"{kind}: only {got['ok']} of {share} registered: "
                                   f"{got['errors']} {server.tail(600)}")
        yield Nodes(servers), gen, redis
    finally:
        if gen is not None:
            gen.close()
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()


def measure(kind: str, clients: int, light_rate: float, heavy_rate: float,
            duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "clients": clients}
    with setup(kind, clients, senders=10, samples=8) as (nodes, gen, redis):
        for name, rate in (("light", light_rate), ("heavy", heavy_rate)):
            r0 = redis.cpu() if redis else 0.0
            if redis:
                redis.command("CONFIG", "RESETSTAT")
            res = scenarios.one_rate(nodes, gen, clients, rate, duration, 3.0)  # type: ignore[arg-type]
            r1 = redis.cpu() if redis else 0.0
            if redis:
                stats = redis.commandstats()
                res["redis_commands"] = stats
                res["redis_commands_per_message"] = (
                    sum(x["calls"] for x in stats.values()) / res["sent"] if res["sent"] else None)
                res["redis_command_us_per_message"] = (
                    sum(x["usec"] for x in stats.values()) / res["sent"] if res["sent"] else None)
                # Nodes hear events on the channel; a stream read (XRANGE, or
                # XREAD on older code) is a catch-up after a gap or reconnection.
                reads = sum(stats.get(c, {}).get("calls", 0.0) for c in ("xrange", "xread"))
                res["stream_reads_per_message"] = reads / res["sent"] if res["sent"] else None
            res["redis_cpu_s"] = r1 - r0
            res["redis_us_per_message"] = ((r1 - r0) / res["sent"] * 1e6
                                           if redis and res["sent"] else None)
            out[name] = res
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| setup | load | offered deliveries/s | delivered/s | delivered | p50 ms | p99 ms "
            "| node CPU us/delivery | Redis CPU us/message | Redis commands/message "
            "| Redis in-command us/message | stream reads/message |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name in ("light", "heavy"):
            x = r[name]
            lat = x["latency_ms"]
            us = x["server_us_per_line"]
            rus = x["redis_us_per_message"]
            rows.append(
                f"| {r['kind']} | {name} {x['rate']:g} msg/s | {x['offered_deliveries_per_s']:.0f} "
                f"| {x['lines_per_s']:.0f} | {x['fraction']:.3f} | {lat['p50']:.2f} "
                f"| {lat['p99']:.2f} | {us:.2f} | {'-' if rus is None else f'{rus:.0f}'} "
                f"| {_num(x.get('redis_commands_per_message'))} "
                f"| {_num(x.get('redis_command_us_per_message'))} "
                f"| {_num(x.get('stream_reads_per_message'), 3)} |"
                if us is not None and lat["p50"] is not None else
                f"| {r['kind']} | {name} | - | - | - | - | - | - | - | - | - | - |")
    return "\n".join(rows)


def _num(x: float | None, places: int = 1) -> str:
    return "-" if x is None else f"{x:.{places}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--light", type=float, default=20.0, help="light load, messages/s")
    ap.add_argument("--heavy", type=float, default=100.0, help="heavy load, messages/s")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args(argv)
    raise_nofile()
    results = []
    for kind in ("single", "one-node", "two-nodes"):
        print(f"== {kind}", file=sys.stderr, flush=True)
        results.append(measure(kind, args.clients, args.light, args.heavy, args.duration))
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    path = args.out / f"{stamp}-cluster.json"
    for r in results:
        for name in ("light", "heavy"):
            r[name].pop("lat", None)
    path.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                "results": results}, indent=1, default=str))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
