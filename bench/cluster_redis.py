"""
What one lobby message costs Redis as the cluster grows:
``python -m bench.cluster_redis [--nodes 1,2,4,8] [--rate 200] [--duration 5]
[--read pubsub,xread]``.

No chat server: a writer appends each message as a node does, at a steady
rate, and N readers stand for N nodes, reading as a node does and doing
nothing with what they get.  Two ways of reading (``--read``), measured in
the same run:

- ``pubsub`` (the nodes' way since the channel): the writer runs the node's
  append script (``EVALSHA`` of redislog.APPEND: ``XADD`` and ``PUBLISH``
  on the channel) and the history's ``ZADD``; each reader is subscribed to
  the channel (and catches up from the stream only after a gap, which does
  not happen here).
- ``xread`` (the nodes' way before): the writer sends ``XADD`` and ``ZADD``;
  each reader reads the stream with ``XREAD COUNT 2000 BLOCK`` from the last
  id it got, as fast as it can, so each read returns as few events as it can
  (the worst case for Redis).  ``--read-gap MS`` makes each reader wait that
  long after a read before the next (what a node that read in bigger
  batches, at the cost of that much latency, would do).

redis-server is pinned to CPU 0, this process to CPU 1.  Prints Redis's CPU
time per message (its main thread, from /proc/PID/schedstat), the commands
the clients sent per message (commands run inside the script not counted),
Redis's own in-command time per message, the reads per message and the
events a read returned.  docs/cluster.md, "The model", uses the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer, task

from bench.cluster import Redis
from twisted_chat.server.cluster.redisconn import connect, parse_url
from twisted_chat.server.cluster.redisstream import APPEND, APPEND_SHA, CHANNEL

STREAM = "chat:events"
HISTORY = "chat:history"
# Run inside the append script: not commands a client sends.
IN_SCRIPT = ("xadd", "xrevrange", "publish", "memory")


def redis_cpu_ns(pid: int) -> int:
    """Time on CPU of Redis's main thread (where commands run), in ns."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0])


async def run_one(reactor: Any, redis: Redis, nodes: int, rate: float, duration: float,
                  gap: float, how: str = "xread") -> dict[str, Any]:
    writer = await txredisapi.Connection("127.0.0.1", redis.port, reconnect=False,
                                         convertNumbers=False)
    pubsub = how == "pubsub"
    target = parse_url(redis.url)
    got = [0] * nodes
    if pubsub:
        readers = [await connect(target, reactor, subscriber=True) for _ in range(nodes)]
        for i, reader in enumerate(readers):
            def heard(message: str, i: int = i) -> None:
                got[i] += 1
            reader.heard = heard
            await reader.execute_command("SUBSCRIBE", CHANNEL)
        await writer.execute_command("SCRIPT", "LOAD", APPEND)
    else:
        readers = [await txredisapi.Connection("127.0.0.1", redis.port, reconnect=False,
                                               convertNumbers=False) for _ in range(nodes)]
    await writer.execute_command("DEL", STREAM, HISTORY)
    await writer.execute_command("CONFIG", "RESETSTAT")
    stop = False

    async def read(i: int) -> None:
        last = "0-0"
        while not stop:
            reply = await readers[i].execute_command(
                "XREAD", "COUNT", 2000, "BLOCK", 500, "STREAMS", STREAM, last)
            if reply:
                entries = reply[0][1]
                last = entries[-1][0]
                got[i] += len(entries)
            if gap:
                await task.deferLater(reactor, gap, lambda: None)

    sent = 0

    def send() -> None:
        nonlocal sent
        sent += 1
        event = json.dumps({"t": "say", "u": "1700000000000-5", "x": f"message {sent} of the "
                            "benchmark, about as long as a line", "n": "0123456789ab",
                            "k": sent}, separators=(",", ":"))
        if pubsub:
            # A command's bound (--stream-bytes's default): the MEMORY
            # USAGE check each command's append makes.
            writer.execute_command("EVALSHA", APPEND_SHA, 1, STREAM, CHANNEL, 64 << 20, event)
        else:
            writer.execute_command("XADD", STREAM, "*", "e", event)
        member = f"{sent:08d} " + json.dumps(["sender", f"message {sent}"])
        writer.execute_command("ZADD", HISTORY, int(time.time() * 1000), member)

    loops = [] if pubsub else [defer.ensureDeferred(read(i)) for i in range(nodes)]
    await task.deferLater(reactor, 0.3, lambda: None)
    cpu0 = redis_cpu_ns(redis.proc.pid)
    sent0 = sent
    ticker = task.LoopingCall(send)
    ticker.clock = reactor
    ticker.start(1.0 / rate, now=True)
    await task.deferLater(reactor, duration, lambda: None)
    ticker.stop()
    messages = sent - sent0
    await task.deferLater(reactor, 0.3, lambda: None)  # the readers catch up
    cpu = (redis_cpu_ns(redis.proc.pid) - cpu0) / 1e3
    stop = True
    await defer.DeferredList(loops)
    stats = redis.commandstats()
    reads = stats.get("xread", {}).get("calls", 0.0)
    # The script's own commands are inside EVALSHA's time already.
    sent_calls = {name: x["calls"] for name, x in stats.items()
                  if not name.startswith("config") and not (pubsub and name in IN_SCRIPT)}
    usec = sum(x["usec"] for name, x in stats.items()
               if not name.startswith("config") and not (pubsub and name in IN_SCRIPT))
    await writer.disconnect()
    for reader in readers:
        if pubsub:
            reader.transport.loseConnection()
        else:
            await reader.disconnect()
    return {"read": how, "nodes": nodes, "rate": rate, "gap_ms": gap * 1000,
            "messages": messages,
            "redis_cpu_us_per_message": cpu / messages,
            "commands_per_message": sum(sent_calls.values()) / messages,
            "commands": sent_calls,
            "in_command_us_per_message": usec / messages,
            "xread_us_per_call": stats.get("xread", {}).get("usec", 0.0) / max(reads, 1),
            "reads_per_message": reads / messages,
            "events_per_read": sum(got) / max(reads, 1) if reads else None,
            "delivered": sum(got) / (nodes * max(sent, 1))}


async def main_async(reactor: Any, args: argparse.Namespace) -> None:
    redis = Redis()
    try:
        rows = []
        for how in args.read.split(","):
            gaps = args.read_gap.split(",") if how == "xread" else ["0"]
            for gap in (float(x) / 1000 for x in gaps):
                for nodes in (int(x) for x in args.nodes.split(",")):
                    for rate in (float(x) for x in args.rate.split(",")):
                        print(f"== {how}: {nodes} readers, {rate:g} msg/s, "
                              f"gap {gap * 1000:g} ms", file=sys.stderr, flush=True)
                        rows.append(await run_one(reactor, redis, nodes, rate, args.duration,
                                                  gap, how))
        print("| read | readers (nodes) | msg/s | read gap ms | Redis CPU us/message "
              "| commands/message | in-command us/message | XREAD in-command us/call "
              "| reads/message | events/read | delivered |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            per_read = "-" if r["events_per_read"] is None else f"{r['events_per_read']:.1f}"
            print(f"| {r['read']} | {r['nodes']} | {r['rate']:g} | {r['gap_ms']:g} "
                  f"| {r['redis_cpu_us_per_message']:.0f} | {r['commands_per_message']:.2f} "
                  f"| {r['in_command_us_per_message']:.1f} "
                  f"| {r['xread_us_per_call']:.1f} | {r['reads_per_message']:.2f} "
                  f"| {per_read} | {r['delivered']:.0%} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster_redis", description=__doc__)
    ap.add_argument("--nodes", default="1,2,4,8", help="comma-separated numbers of readers")
    ap.add_argument("--rate", default="200", help="comma-separated messages/s")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--read-gap", default="0",
                    help="comma-separated ms each XREAD reader waits")
    ap.add_argument("--read", default="pubsub,xread",
                    help="comma-separated ways of reading: pubsub (the nodes'), xread (before)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    task.react(lambda reactor: defer.ensureDeferred(main_async(reactor, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
