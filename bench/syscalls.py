"""
Count a server's system calls and wake-ups during one fan-out step.

    .venv/bin/python -m bench.syscalls [--servers chat,inspircd] [--clients 100]
        [--rate 2000] [--seconds 3]

For each server in turn (started as in the full run, pinned to CPU 0), it
connects the clients, starts the senders, and has ``perf stat`` (on CPU 1)
count, for ``--seconds`` in the middle of the sending, the calls that say
where a delivered line's cost goes: writes to sockets (ours: one per member
per fan-out), reads, ``epoll_wait`` (one per wake-up or reactor turn),
``epoll_ctl`` (reading paused or resumed), context switches, and the CPU
time (``task-clock``).  It prints a table, per room message sent.  Needs
``perf`` (Debian: ``linux-perf``) and permission to trace (root, or
``kernel.perf_event_paranoid`` at most 1).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from bench import scenarios
from bench.run import FULL, raise_nofile, room, server_specs

# perf's event, and the column it counts in.
EVENTS = {
    "syscalls:sys_enter_sendto": "writes",
    "syscalls:sys_enter_write": "writes",
    "syscalls:sys_enter_writev": "writes",
    "syscalls:sys_enter_sendmsg": "writes",
    "syscalls:sys_enter_recvfrom": "reads",
    "syscalls:sys_enter_read": "reads",
    "syscalls:sys_enter_recvmsg": "reads",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_epoll_pwait": "epoll_wait",
    "syscalls:sys_enter_epoll_ctl": "epoll_ctl",
    "context-switches": "switches",
    "task-clock": "cpu_us",
}
COLUMNS = ["writes", "reads", "epoll_wait", "epoll_ctl", "switches", "cpu_us"]


def parse_perf_stat(text: str) -> dict[str, float]:
    """``perf stat -x,`` output summed into our columns (task-clock stays in ms)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or fields[2] not in EVENTS:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue  # "<not counted>" or "<not supported>"
        column = EVENTS[fields[2]]
        out[column] = out.get(column, 0.0) + value
    return out


def measure(key: str, clients: int, rate: float, seconds: float) -> dict[str, float]:
    spec = {s.key: s for s in server_specs(False, None)}[key]
    with room(spec, FULL, clients) as (srv, gen, _conn):
        scenarios.settle(gen, 3.0, 0.2)
        gen.send(rate, seconds + 1.0)
        time.sleep(0.5)
        done = subprocess.run(
            ["taskset", "-c", "1", "perf", "stat", "-x,", "-e", ",".join(EVENTS),
             "-p", str(srv.pid), "--", "sleep", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 30)
        gen.send_result(seconds + 30)
    counts = parse_perf_stat(done.stderr)
    if not counts:
        raise RuntimeError(f"perf stat counted nothing: {done.stderr[-400:]}")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.syscalls")
    ap.add_argument("--servers", default="chat,inspircd")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2000.0, help="room messages/s")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 30:
        ap.error("--seconds must be at most 30")
    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    raise_nofile()
    messages = args.rate * args.seconds
    print(f"C={args.clients}, {args.rate:g} room messages/s, {args.seconds:g} s counted; "
          f"per room message (about {messages:.0f} messages):")
    print(f"{'server':12s}" + "".join(f"{name:>11s}" for name in COLUMNS))
    for key in args.servers.split(","):
        counts = measure(key, args.clients, args.rate, args.seconds)
        # task-clock is in ms: per message, in µs
        row = [counts.get(name, 0.0) / messages * (1000 if name == "cpu_us" else 1)
               for name in COLUMNS]
        print(f"{key:12s}" + "".join(f"{value:11.2f}" for value in row))
    print("(cpu_us: µs of CPU per message; the others: calls per message; writes are\n"
          " sendto, write, writev and sendmsg, reads recvfrom, read and recvmsg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
