"""
The measured scenarios: fan-out at one offered rate (the fixed rate, and
each step of the search for maximum sustained fan-out, L{bench.search}),
and idle scale.  Each returns plain dicts (they go into the JSON).

Figures and how they are taken:
- delivered lines/s: room-message lines counted by all clients between two
  snapshots taken at the start and the end of the sending window;
- delivered fraction: every line received from the start of sending until
  the counts stop growing (at most ``drain`` seconds after the last send),
  over sent messages x copies per message (C for chat/1, C-1 for IRC);
- server CPU: utime+stime from /proc/PID/stat over the sending window, per
  delivered line in the same window;
- latency: receipt time minus the monotonic send time carried in the text,
  read by the sample receivers (a process of their own) for every message;
- generator CPU: the sum of the worker processes' own CPU time over the
  window, as a share of the one core they run on;
- machine CPU: busy time of both cores (/proc/stat) over the window, per
  delivered line.  On loopback the kernel work of one delivery is split
  between the sender's and the receiver's contexts in a way that depends on
  the server's socket options (with Nagle on, a held write goes out from the
  softirq that handles the peer's ACK, on the generator's core), so this is
  the figure that counts all of it wherever it was charged.
"""

from __future__ import annotations

import time
from typing import Any

from bench.gen import Generator
from bench.servers import RunningServer, machine_busy_seconds

LAT_LIMIT_MS = 100.0
MIN_FRACTION = 0.98
BUSY = 0.90  # a process using this share of its core is the limit


def percentiles(lat_ns: list[int]) -> dict[str, float | None]:
    if not lat_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None, "samples": 0}
    xs = sorted(lat_ns)
    n = len(xs)

    def at(q: float) -> float:
        return xs[min(n - 1, int(q * n))] / 1e6

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": xs[-1] / 1e6,
            "samples": n}


def settle(gen: Generator, timeout: float, quiet: float = 0.3) -> dict[str, Any]:
    """Wait until no client receives anything for ``quiet`` s (at most ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = gen.snapshot()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = gen.snapshot()
        if now["lines"] == last["lines"]:
            return now
        last = now
    return last


def one_rate(srv: RunningServer, gen: Generator, clients: int, rate: float,
             duration: float, drain: float) -> dict[str, Any]:
    """Offer ``rate`` room messages/s for ``duration`` s and measure."""
    copies = gen.dialect.copies(clients)
    settle(gen, 3.0, 0.2)
    gen.snapshot(take_latency=True)  # drop latency samples from before
    s0 = gen.snapshot()
    split = getattr(srv, "cpu_split", None)  # a cluster's servers have none
    u0 = split() if split is not None else None
    c0 = srv.cpu()
    m0 = machine_busy_seconds()
    rss0 = srv.rss()
    gen.send(rate, duration)
    # sample the server's RSS while it runs (bounded by the send duration)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        if srv.alive():
            srv.rss()
    sent = gen.send_result(duration + 30.0)
    s1 = gen.snapshot()
    c1 = srv.cpu()
    u1 = split() if split is not None else None
    m1 = machine_busy_seconds()
    # drain: wait until the counts stop growing or every copy arrived
    expected = sent["sent"] * copies
    deadline = time.monotonic() + drain
    s2 = s1
    grew = time.monotonic()
    while time.monotonic() < deadline and s2["lines"] - s0["lines"] < expected:
        time.sleep(0.1)
        prev = s2
        s2 = gen.snapshot()
        srv.rss()
        if s2["lines"] != prev["lines"]:
            grew = time.monotonic()
        elif time.monotonic() - grew > 0.5:
            break  # nothing more is coming
    lat = gen.snapshot(take_latency=True)["lat"]
    window = s1["t"] - s0["t"]
    in_window = s1["lines"] - s0["lines"]
    delivered = s2["lines"] - s0["lines"]
    server_cpu = c1 - c0
    gen_cpu = s1["cpu"] - s0["cpu"]
    offered_achieved = sent["sent"] / max(1e-9, rate * (sent["t1"] - sent["t0"]))
    out: dict[str, Any] = {
        "clients": clients,
        "rate": rate,
        "offered_deliveries_per_s": rate * copies,
        "sent": sent["sent"],
        "blocked": sent["blocked"],
        "offered_achieved": offered_achieved,
        "expected": expected,
        "delivered": delivered,
        "fraction": delivered / expected if expected else 0.0,
        "lines_per_s": in_window / window if window > 0 else 0.0,
        "window_s": window,
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / window if window > 0 else 0.0,
        "server_us_per_line": server_cpu / in_window * 1e6 if in_window else None,
        # the same, user and system time apart (ticks of 10 ms: read them as
        # +-10 ms over the window)
        "server_user_sys_us_per_line": (
            [(u1[i] - u0[i]) / in_window * 1e6 for i in (0, 1)]
            if u0 is not None and u1 is not None and in_window else None),
        "gen_cpu_share": gen_cpu / window if window > 0 else 0.0,
        "machine_cpu_s": m1 - m0,
        "machine_us_per_line": (m1 - m0) / in_window * 1e6 if in_window else None,
        "rss_start": rss0,
        "rss_max": srv.max_rss,
        "lost": s2["lost"] - s0["lost"],
        "latency_ms": percentiles(lat),
        "server_alive": srv.alive(),
    }
    p99 = out["latency_ms"]["p99"]
    reasons = []
    if out["fraction"] < MIN_FRACTION:
        reasons.append(f"delivered {out['fraction']:.1%}")
    if p99 is None or p99 > LAT_LIMIT_MS:
        reasons.append(f"p99 {p99} ms")
    if offered_achieved < MIN_FRACTION:
        reasons.append(f"only {offered_achieved:.1%} of the rate could be sent")
    if out["lost"]:
        reasons.append(f"{out['lost']} clients cut")
    out["held"] = not reasons
    out["why"] = "; ".join(reasons)
    out["limit"] = limiter(out)
    return out


def limiter(step: dict[str, Any]) -> str:
    s, g = step["server_cpu_share"], step["gen_cpu_share"]
    if g >= BUSY and s < BUSY:
        return "generator"
    if s >= BUSY and g < BUSY:
        return "server"
    if s >= BUSY and g >= BUSY:
        return "both"
    return "neither"


def idle_scale(srv: RunningServer, gen: Generator, clients: int,
               concurrency: int, timeout: float) -> dict[str, Any]:
    """
    Scenario 3: register ``clients`` clients; RSS per connection and
    handshakes/s.  With ``concurrency`` connections opened at once, not the
    fan-out's small window of unanswered ones: handshakes/s is measured
    here, and a server that handles many at once (ours batches its JOINED
    lines) must not be held to a few, nor one with a short accept queue
    (ngircd) spared the burst.
    """
    rss_before = srv.rss()
    cpu_before = srv.cpu()
    res = gen.connect("127.0.0.1", srv.port, clients, 0, 0, "i", concurrency=concurrency,
                      timeout=timeout, window=concurrency)
    cpu_connect = srv.cpu() - cpu_before
    settle(gen, 20.0, 0.5)
    time.sleep(0.5)
    rss_after = srv.rss()
    ok = res["ok"]
    d = res["durations"]
    return {
        "clients": clients,
        "registered": ok,
        "errors": res["errors"],
        "retried": res["retried"],
        "seconds": res["seconds"],
        "handshakes_per_s": ok / res["seconds"] if res["seconds"] > 0 else 0.0,
        "handshake_ms_p50": d[len(d) // 2] * 1e3 if d else None,
        "handshake_ms_p99": d[min(len(d) - 1, int(len(d) * 0.99))] * 1e3 if d else None,
        "server_cpu_s": cpu_connect,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_per_conn": (rss_after - rss_before) / ok if ok else None,
        "server_alive": srv.alive(),
    }
