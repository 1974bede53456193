"""
The benchmark's one command: ``python -m bench [--quick] [--out DIR]
[--contention] [--baseline TREE]``.

It starts every available server in turn (pinned to CPU 0), drives it with
the generator (pinned to CPU 1), stops everything it started, and writes
``<out>/<date>.md``, ``.json`` and ``.png`` (``<date>-b`` and so on for a
second run on the same day); ``<out>`` is bench/results, which git ignores.
With ``--contention``, a CPU-bound process shares CPU 0 with each server
while it is measured.  With ``--baseline TREE``, our server is also run
from another source tree (e.g. ``git archive`` of an older commit), as
``chat-before``, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.gen import Generator
from bench.search import Limits, search
from bench.servers import BENCH, Contention, RunningServer, ServerSpec

MAIN_KEYS = ("chat", "chat-before", "ngircd", "inspircd")
GENEROUS_FLOOD = ["--flood-rate", "1000000", "--flood-burst", "1000000"]

FULL: dict[str, Any] = {
    "fan_clients": [100, 1000],
    "senders": 10,
    "samples": 8,
    # room messages/s: the targets are 100 clients at 200 and 2,000,
    # 1,000 clients at 20 to 300
    "fixed_rate": {100: 2000.0, 1000: 300.0},
    "light_rate": {100: 200.0, 1000: 20.0},
    "light_duration": 3.0,
    "max_rate": {100: 100000.0, 1000: 30000.0},
    "duration": 2.0,
    "drain": 3.0,
    "step_factor": 1.5,
    "max_steps": 12,
    "fan_budget": 50.0,  # seconds of stepping per server and client count
    "variant_budget": 10.0,  # the same for the variants of our server (keeps the run short)
    # then halve the gap between the last rate that held and the first that
    # failed, twice: max sustained known to x1.5 ** (1/4) = 1.107, not x1.5
    "refine_steps": 2,
    "refine_budget": 30.0,  # seconds of that, its own: a longer climb must not cut it
    "idle_clients": 10000,
    "idle_concurrency": 200,
    "idle_timeout": 80.0,
    "receiver_workers": 1,
}

QUICK: dict[str, Any] = {
    "fan_clients": [50],
    "senders": 4,
    "samples": 4,
    "fixed_rate": {50: 200.0},
    "light_rate": {50: 20.0},
    "light_duration": 0.5,
    "max_rate": {50: 2000.0},
    "duration": 0.5,
    "drain": 1.5,
    "step_factor": 2.0,
    "max_steps": 1,
    "fan_budget": 5.0,
    "variant_budget": 5.0,
    "refine_steps": 2,
    "refine_budget": 5.0,
    "idle_clients": 200,
    "idle_concurrency": 50,
    "idle_timeout": 20.0,
    "receiver_workers": 1,
}


def chat_options() -> set[str]:
    """The long options our server's twistd plugin knows (it grows over time)."""
    twistd = Path(sys.executable).with_name("twistd")
    try:
        out = subprocess.run([str(twistd), "chat", "--help"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    opts = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("--"):
                opts.add(word.split("=")[0])
    return opts


def interpreter_arg(text: str) -> str:
    """An C{--interpreter} value, NAME=PYTHON with both given: argparse
    says so otherwise, rather than a traceback when the column starts."""
    name, _, python = text.partition("=")
    if not name or not python:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=PYTHON, e.g. deb=/tmp/debvenv/bin/python")
    return text


def server_specs(quick: bool, only: list[str] | None, baseline: Path | None = None,
                 variants: list[str] | None = None,
                 interpreters: list[str] | None = None) -> list[ServerSpec]:
    opts = chat_options()
    flood = GENEROUS_FLOOD if "--flood-rate" in opts else []
    specs = []
    # our server as deployed: its defaults (durable history when it has --db),
    # flood control on but generous enough not to cut the senders
    specs.append(ServerSpec("chat", "twisted-chat (defaults" + (", history db" if "--db" in opts
                                                                 else "") + ", limits on)",
                            "chat/1", "chat", list(flood)))
    for variant in variants or []:
        name, _, options = variant.partition("=")
        specs.append(ServerSpec(f"chat-{name}", f"twisted-chat {options}", "chat/1", "chat",
                                [*flood, *options.split()]))
    for interpreter in interpreters or []:
        name, _, python = interpreter.partition("=")
        # absolute, not resolved: the server starts in its own workdir, and
        # a venv's python is a symlink out of the venv, away from its twistd
        specs.append(ServerSpec(f"chat-{name}", f"twisted-chat under {python}", "chat/1",
                                "chat", list(flood), python=Path(python).absolute()))
    if baseline is not None:
        specs.append(ServerSpec("chat-before", f"twisted-chat from {baseline.name}", "chat/1",
                                "chat", list(flood), tree=baseline.resolve()))
    if not quick:
        specs.append(ServerSpec("ngircd", "ngircd", "irc", "ngircd"))
        specs.append(ServerSpec("inspircd", "InspIRCd", "irc", "inspircd"))
        if "--db" in opts:
            specs.append(ServerSpec("chat-memdb", "twisted-chat --db :memory:", "chat/1",
                                    "chat", [*flood, "--db", ":memory:"]))
        if flood:
            specs.append(ServerSpec("chat-noflood", "twisted-chat --flood-rate 0", "chat/1",
                                    "chat", ["--flood-rate", "0"]))
        if "--fanout-delay" in opts:
            specs.append(ServerSpec("chat-nopace", "twisted-chat --fanout-delay 0", "chat/1",
                                    "chat", [*flood, "--fanout-delay", "0"]))
        if "--db" in opts and flood:
            specs.append(ServerSpec("chat-bare", "twisted-chat --db :memory: --flood-rate 0 "
                                    "--history 0", "chat/1", "chat",
                                    ["--db", ":memory:", "--flood-rate", "0", "--history", "0"]))
    if only:
        # in the order given: a server's place in the run moves its figures
        # (what ran before it warms or loads the machine), so it is chosen
        by_key = {s.key: s for s in specs}
        unknown = [k for k in only if k not in by_key]
        if unknown:
            raise ValueError(f"no server column {', '.join(unknown)} in this run "
                             f"(its columns: {', '.join(by_key)})")
        specs = [by_key[k] for k in dict.fromkeys(only)]
    return specs


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def room(spec: ServerSpec, plan: dict[str, Any],
         clients: int) -> Iterator[tuple[RunningServer, Generator, dict[str, Any]]]:
    """A fresh server with C{clients} registered in the room; stops both after."""
    srv = RunningServer(spec)
    gen = None
    try:
        gen = Generator(spec.dialect, plan["receiver_workers"])
        conn = gen.connect("127.0.0.1", srv.port, clients, plan["senders"], plan["samples"],
                           "b", concurrency=200, timeout=120.0)
        if conn["ok"] < clients:
            raise RuntimeError(f"only {conn['ok']} of {clients} clients registered: "
                               f"{conn['errors']} {srv.tail(400)}")
        yield srv, gen, conn
    finally:
        if gen is not None:
            gen.close()
        srv.stop()


def search_limits(plan: dict[str, Any], clients: int, key: str) -> Limits:
    """The plan's bounds on the search for C{clients}; the variants of our
    server climb on a shorter budget, which keeps the whole run short."""
    return Limits(plan["step_factor"], plan["max_steps"], plan["max_rate"][clients],
                  plan["fan_budget"] if key in MAIN_KEYS else plan["variant_budget"],
                  plan["refine_steps"], plan["refine_budget"])


class Rooms:
    """
    The room a fan-out search measures in, made again (a fresh server and
    fresh clients) before the next step once clients were cut: a room with
    members missing fails every later step, since its expected copies count
    them, so a retry or a midpoint there would measure nothing.
    """

    def __init__(self, spec: ServerSpec, plan: dict[str, Any], clients: int) -> None:
        self.spec, self.plan, self.clients = spec, plan, clients
        self.made = 0
        self.rss_max = 0
        self.fresh = False
        self.error: str | None = None
        self.open()

    def open(self) -> None:
        self.stack = contextlib.ExitStack()
        self.srv, self.gen, self.conn = self.stack.enter_context(
            room(self.spec, self.plan, self.clients))
        self.made += 1

    def close(self) -> None:
        self.rss_max = max(self.rss_max, self.srv.max_rss)
        self.stack.close()

    def ready(self) -> bool:
        """Whether the next step may run (not if the server died), in a
        room made again first if it lost clients."""
        if not self.srv.alive():
            return False
        if self.gen.snapshot()["lost"]:
            self.close()
            try:
                self.open()
            except Exception as e:  # the search ends with what it found
                self.error = repr(e)
                return False
            self.fresh = True
        return True

    def measure(self, rate: float) -> dict[str, Any]:
        step = scenarios.one_rate(self.srv, self.gen, self.clients, rate, self.plan["duration"],
                                  self.plan["drain"])
        if self.fresh:
            step["fresh_room"] = True
            self.fresh = False
        return step


def run_fanout(spec: ServerSpec, plan: dict[str, Any], clients: int,
               log: Any) -> dict[str, Any]:
    rooms = Rooms(spec, plan, clients)
    try:
        connect_seconds = rooms.conn["seconds"]
        light = scenarios.one_rate(rooms.srv, rooms.gen, clients, plan["light_rate"][clients],
                                   plan["light_duration"], plan["drain"])
        res = search(rooms.measure, plan["fixed_rate"][clients],
                     search_limits(plan, clients, spec.key), rooms.ready)
    finally:
        rooms.close()
    res["light"] = light
    res["connect_seconds"] = connect_seconds
    res["rooms"] = rooms.made
    if rooms.error:
        res["room_error"] = rooms.error
    res["rss_max"] = rooms.rss_max
    log(f"  C={clients}: light p50 {light['latency_ms']['p50']} ms; "
        f"fixed {res['fixed']['lines_per_s']:.0f} lines/s, "
        f"{res['fixed']['server_us_per_line']} us/line, p99 "
        f"{res['fixed']['latency_ms']['p99']} ms; sustained "
        f"{res['sustained']['deliveries_per_s']:.0f}/s ({res['sustained']['stopped_by']}; "
        f"climb {res['search_seconds']['climb']:.0f} s, "
        f"refinement {res['search_seconds']['refine']:.0f} s, rooms {rooms.made}"
        + (f"; fresh room failed: {rooms.error}" if rooms.error else "") + ")")
    return res


def run_idle(spec: ServerSpec, plan: dict[str, Any], log: Any) -> dict[str, Any]:
    srv = RunningServer(spec)
    gen = None
    try:
        # IRC clients register only (to 001): joining one channel makes every
        # JOIN an O(N) broadcast, which chat/1's READY block has to do
        dialect = "irc-noroom" if spec.dialect == "irc" else spec.dialect
        gen = Generator(dialect, plan["receiver_workers"])
        res = scenarios.idle_scale(srv, gen, plan["idle_clients"], plan["idle_concurrency"],
                                   plan["idle_timeout"])
        res["rss_max"] = srv.max_rss
        log(f"  idle: {res['registered']}/{res['clients']} in {res['seconds']:.1f} s, "
            f"{res['handshakes_per_s']:.0f}/s, rss/conn {res['rss_per_conn']}, "
            f"{res['retried']} attempts never accepted made again")
        return res
    finally:
        if gen is not None:
            gen.close()
        srv.stop()


def measure(spec: ServerSpec, plan: dict[str, Any], entry: dict[str, Any], skip_idle: bool,
            log: Any) -> None:
    """Every scenario for one server, into C{entry} (with its count of failures)."""
    failures = 0
    for clients in plan["fan_clients"]:
        try:
            entry["fanout"][str(clients)] = run_fanout(spec, plan, clients, log)
        except Exception as e:
            failures += 1
            entry["fanout"][str(clients)] = {"error": repr(e)}
            log(f"  C={clients}: error: {e!r}")
            traceback.print_exc()
    if not skip_idle and spec.key in MAIN_KEYS:
        try:
            entry["idle"] = idle = run_idle(spec, plan, log)
            if idle["registered"] < idle["clients"]:
                failures += 1
                log(f"  idle: ONLY {idle['registered']} of {idle['clients']} clients "
                    f"registered: {idle['errors']}")
        except Exception as e:
            failures += 1
            entry["idle"] = {"error": repr(e)}
            log(f"  idle: error: {e!r}")
            traceback.print_exc()
    entry["failures"] = failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, our server only")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the results (default bench/results, which git ignores; "
                         "quick: none kept)")
    ap.add_argument("--contention", action="store_true",
                    help="a CPU-bound process shares CPU 0 with each server under test")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also run our server from this source tree, as chat-before")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                    help="also run our server with these options, as chat-NAME (repeatable)")
    ap.add_argument("--interpreter", action="append", default=[], metavar="NAME=PYTHON",
                    type=interpreter_arg,
                    help="also run our server under this venv's python (the package "
                         "installed there), as chat-NAME (repeatable)")
    ap.add_argument("--servers", default=None,
                    help="comma-separated keys to run, in this order")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--clients", default=None, help="comma-separated fan-out client counts")
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    if args.clients:
        wanted = [int(x) for x in args.clients.split(",")]
        plan["fan_clients"] = [c for c in plan["fan_clients"] if c in wanted]
    nofile = raise_nofile()
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    results: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "contention": args.contention,
        "plan": {k: (dict(v) if isinstance(v, dict) else v) for k, v in plan.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "nofile": nofile},
        "servers": {},
    }
    only = args.servers.split(",") if args.servers else None
    try:
        specs = server_specs(args.quick, only, args.baseline, args.variant, args.interpreter)
    except ValueError as e:
        ap.error(str(e))
    failures = 0
    for spec in specs:
        entry: dict[str, Any] = {"label": spec.label, "dialect": spec.dialect,
                                 "options": spec.extra, "fanout": {}}
        results["servers"][spec.key] = entry
        why = spec.available()
        if why:
            entry["skipped"] = why
            log(f"{spec.key}: skipped: {why}")
            continue
        entry["version"] = server_version(spec)
        log(f"{spec.key}: {spec.label} {entry['version']}")
        hog = Contention(cpu=0, limit=900.0) if args.contention else None
        try:
            measure(spec, plan, entry, args.skip_idle, log)
        finally:
            if hog is not None:
                hog.stop()
        failures += entry.pop("failures")
    results["seconds"] = time.monotonic() - started
    out = args.out
    if out is None and not args.quick:
        out = BENCH / "results"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = free_stem(out, ("quick-" if args.quick else "") + now.strftime("%Y-%m-%d"))
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        stem.with_suffix(".md").write_text(report.markdown(results, stem.name + ".png"))
        plotted = report.plot(results, stem.with_suffix(".png"))
        log(f"wrote {stem}.md, .json" + (", .png" if plotted else " (no matplotlib: no plot)"))
    else:
        print(report.markdown(results, None))
    log(f"done in {results['seconds']:.0f} s, {failures} failures")
    return 1 if failures else 0


def free_stem(out: Path, name: str) -> Path:
    """
    C{out/name}, or C{out/name-b}, C{-c}... when a run of the same day is
    there already: a second run must not overwrite the first's results.
    """
    for suffix in ["", *(f"-{chr(c)}" for c in range(ord("b"), ord("z") + 1))]:
        stem = out / f"{name}{suffix}"
        if not any(stem.with_suffix(ext).exists() for ext in (".json", ".md", ".png")):
            return stem
    raise RuntimeError(f"{out} already holds 26 runs named {name}*")


def server_version(spec: ServerSpec) -> str:
    try:
        if spec.kind == "chat":
            if spec.tree is not None:
                return spec.tree.name
            import twisted_chat
            return str(getattr(twisted_chat, "__version__", "?"))
        if spec.kind == "ngircd":
            out = subprocess.run(["ngircd", "--version"], capture_output=True, text=True,
                                 timeout=20).stdout
            return out.splitlines()[0].split("-")[0] if out else "?"
        out = subprocess.run(["inspircd", "--version"], capture_output=True, text=True,
                             timeout=20).stdout
        return out.strip() or "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"
