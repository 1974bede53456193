"""
Profile our server under the fan-out scenario with py-spy.

    .venv/bin/python -m bench.profile [--clients 1000] [--rate 1000] [--seconds 8]

Starts the server (pinned to CPU 0, its defaults as in the benchmark's
``chat`` column), connects the clients, has py-spy (on CPU 1, sampling
without stopping the server) record while the senders send, and prints the
functions with the most samples, by own time and by total time.  The raw
collapsed stacks are kept in ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gen import Generator
from bench.run import GENEROUS_FLOOD, chat_options, raise_nofile
from bench.servers import RunningServer, ServerSpec


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        # py-spy raw frames look like "function (file.py:line)"; fold the line away
        names = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f
                 for f in frames]
        own[names[-1]] += n
        for name in set(names):
            total[name] += n
    out = [f"{samples} samples", "", "own time:"]
    out += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    out += ["", "total time (the function and what it calls):"]
    out += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0, help="room messages/s")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--extra", default="", help="more server options, space-separated")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists() and not shutil.which("py-spy"):
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    raise_nofile()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    flood = GENEROUS_FLOOD if "--flood-rate" in chat_options() else []
    spec = ServerSpec("chat", "twisted-chat", "chat/1", "chat", [*flood, *args.extra.split()])
    srv = RunningServer(spec)
    gen = None
    spy = None
    try:
        gen = Generator("chat/1", 1)
        conn = gen.connect("127.0.0.1", srv.port, args.clients, 10, 8, "p")
        print(f"{conn['ok']} clients in {conn['seconds']:.1f} s", flush=True)
        raw = out / "pyspy.raw"
        spy = subprocess.Popen(
            ["taskset", "-c", "1", pyspy, "record", "--pid", str(srv.pid), "--rate", "250",
             "--duration", str(int(args.seconds)), "--format", "raw", "--nonblocking",
             "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        c0 = srv.cpu()
        s0 = gen.snapshot()
        gen.send(args.rate, args.seconds)
        sent = gen.send_result(args.seconds + 30)
        s1 = gen.snapshot()
        c1 = srv.cpu()
        _, err = spy.communicate(timeout=args.seconds + 60)
        lines = s1["lines"] - s0["lines"]
        print(f"sent {sent['sent']} messages, {lines} lines delivered, server CPU "
              f"{c1 - c0:.2f} s = {(c1 - c0) / max(lines, 1) * 1e6:.3f} us/line "
              f"(py-spy's sampling adds a little)")
        if not raw.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
            return 1
        print(summarize(raw, args.top))
        print(f"\nraw stacks: {raw}")
        return 0
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        if gen is not None:
            gen.close()
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
