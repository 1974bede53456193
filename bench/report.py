"""The results as a markdown table and a PNG plot (the plot needs matplotlib)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.search import resolution

MAIN = ["chat", "chat-before", "ngircd", "inspircd"]
RATIO_TO = ["chat-before", "ngircd", "inspircd"]
VARIANTS = ["chat", "chat-nopace", "chat-memdb", "chat-noflood", "chat-bare"]


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.2f}x"


Row = tuple[str, Callable[[dict[str, Any]], Any], int]


def stopped(why: str) -> str:
    if why.startswith("step limit"):
        return "none failed: the step or time budget ran out (a lower bound)"
    return why


ERROR_TAIL = 300


def error_tail(error: str, n: int = ERROR_TAIL) -> str:
    """The end of an error, on one line: a server that failed at start puts
    up to 1,500 bytes of its log in it (the JSON keeps them), and the cause
    is at the end.  Its line breaks are repr's escapes as well as real ones."""
    one_line = " ".join(error.replace("\\r", " ").replace("\\n", " ").split())
    return one_line if len(one_line) <= n else "…" + one_line[-n:]


def failed_because(run: dict[str, Any]) -> str:
    """Why the lowest rate failed, and why a fresh room after a cut could not
    be made if so: that ended the search before its retry or midpoints, so
    the figure may be low and is known more coarsely."""
    why = stopped(run["sustained"]["stopped_by"])
    if "room_error" in run:
        # a markdown table cell: its pipes would split it
        why += "; fresh room failed: " + error_tail(run["room_error"]).replace("|", "\\|")
    return why


def fixed_rows() -> list[Row]:
    def f(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r["fixed"].get(key)

    def latency(run: str, prefix: str) -> list[Row]:
        """p50/p90/p99/max and the sample count of the fixed or the light run."""
        def get(key: str) -> Callable[[dict[str, Any]], Any]:
            return lambda r: r[run]["latency_ms"].get(key)

        return [*[(f"{prefix}latency {q} ms", get(q), 2) for q in ("p50", "p90", "p99", "max")],
                (f"{prefix}latency samples", get("samples"), 0)]

    return [
        ("offered deliveries/s", f("offered_deliveries_per_s"), 0),
        ("delivered lines/s", f("lines_per_s"), 0),
        ("delivered fraction", lambda r: r["fixed"]["fraction"] * 100, 2),
        ("server CPU, % of its core", lambda r: r["fixed"]["server_cpu_share"] * 100, 1),
        ("server CPU µs per delivered line", f("server_us_per_line"), 3),
        ("machine CPU µs per delivered line (both cores)", f("machine_us_per_line"), 3),
        *latency("fixed", ""),
        ("generator CPU, % of its core", lambda r: r["fixed"]["gen_cpu_share"] * 100, 1),
        ("light load: offered deliveries/s", lambda r: r["light"]["offered_deliveries_per_s"], 0),
        ("light load: delivered fraction", lambda r: r["light"]["fraction"] * 100, 2),
        ("light load: server CPU µs per delivered line",
         lambda r: r["light"]["server_us_per_line"], 2),
        *latency("light", "light load: "),
        ("max sustained deliveries/s", lambda r: r["sustained"]["deliveries_per_s"], 0),
        ("… at room messages/s", lambda r: r["sustained"]["rate"], 0),
        ("… known to within (failing ÷ held rate)",
         lambda r: (None if r["sustained"].get("resolution") is None else
                    f"x{r['sustained']['resolution']:.3f}"), 0),
        ("… lowest rate that failed, because", failed_because, 0),
        ("… limit at that step (CPU ≥ 90 %)", lambda r: r["sustained"]["limit_at_failure"], 0),
        ("… server / generator CPU % there",
         lambda r: (None if r["sustained"]["server_cpu_share_at_failure"] is None else
                    f"{r['sustained']['server_cpu_share_at_failure'] * 100:.0f} / "
                    f"{r['sustained']['gen_cpu_share_at_failure'] * 100:.0f}"), 0),
        ("server RSS max MB (whole run)", lambda r: r["rss_max"] / 1e6, 1),
    ]


def idle_rows() -> list[Row]:
    return [
        ("clients registered", lambda r: f"{r['registered']:,} of {r['clients']:,}", 0),
        # a count, not a figure to divide: a string gets no ratio
        ("connections never accepted, made again",
         lambda r: f"{r['retried']:,}" if "retried" in r else None, 0),
        ("handshakes/s", lambda r: r["handshakes_per_s"], 0),
        ("handshake p50 ms", lambda r: r["handshake_ms_p50"], 1),
        ("handshake p99 ms", lambda r: r["handshake_ms_p99"], 1),
        ("server CPU s for all handshakes", lambda r: r["server_cpu_s"], 2),
        ("RSS before MB", lambda r: r["rss_before"] / 1e6, 1),
        ("RSS after MB", lambda r: r["rss_after"] / 1e6, 1),
        ("RSS per connection KiB",
         lambda r: None if r["rss_per_conn"] is None else r["rss_per_conn"] / 1024, 1),
    ]


def table(results: dict[str, Any], keys: list[str], rows: list[Row],
          pick: Callable[[dict[str, Any]], dict[str, Any] | None],
          ratio_to: list[str]) -> list[str]:
    servers = results["servers"]
    cols = [k for k in keys if k in servers]
    base = cols[0] if cols else None
    others = [k for k in ratio_to if k in cols and k != base]
    head = ["", *[servers[k]["label"] for k in cols],
            *[f"{base} ÷ {k}" for k in others]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, get, digits in rows:
        vals: dict[str, Any] = {}
        for k in cols:
            data = pick(servers[k])
            if data is None or "error" in data:
                vals[k] = None if data is None else "error"
                continue
            try:
                vals[k] = get(data)
            except (KeyError, TypeError):
                vals[k] = None
        cells = [name, *[fmt(vals[k], digits) for k in cols]]
        cells += [ratio(vals[base], vals[k]) if base else "-" for k in others]
        out.append("| " + " | ".join(cells) + " |")
    return out


def rate_for(plan: dict[str, Any], c: int, key: str = "fixed_rate") -> float:
    rates = plan.get(key, {})
    return float(rates.get(c, rates.get(str(c), 0.0)))


def search_method(plan: dict[str, Any]) -> str:
    """How max sustained was searched for, and so how finely it is known."""
    factor = plan["step_factor"]
    text = f"stepped up x{factor} until < 98 % delivered or p99 > 100 ms"
    if "refine_steps" not in plan:  # a run from before the refinement
        return (text + ", a failing step tried once more: max sustained is known to within"
                f" x{factor}.")
    halvings = plan["refine_steps"]
    return (text + ", each failing rate (the fixed one too) tried once more; then the gap"
            " between the last rate that held and the first that failed cut at its geometric"
            f" midpoint {halvings} times: max sustained is known to within"
            f" x{resolution(factor, halvings):.3f}.")


def retried_fixed(servers: dict[str, Any], keys: list[str], clients: int) -> list[str]:
    """A note for each server whose fixed-rate step failed once: the table
    has its retry, and the failure should not pass unseen."""
    notes = []
    for key in [k for k in keys if k in servers]:
        run = servers[key].get("fanout", {}).get(str(clients))
        if isinstance(run, dict) and "fixed_first" in run:
            notes.append(f"- `{key}`: the fixed-rate step failed at first"
                         f" ({run['fixed_first']['why']}); the table has its retry.")
    return ["", *notes] if notes else []


def fanout_at(clients: int) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """A server's fan-out results with C{clients} in the room, if it has them."""
    return lambda s: s["fanout"].get(str(clients))


def markdown(results: dict[str, Any], png: str | None) -> str:
    servers = results["servers"]
    plan = results["plan"]
    lines = [
        f"# Benchmark {results['date']}" + (" (quick mode)" if results["quick"] else ""),
        "",
        f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
        f"kernel {results['machine']['kernel']}. Each server pinned to CPU 0 (`taskset -c 0`),"
        " the generator's processes to CPU 1; loopback only. "
        + ("With contention: a CPU-bound process shared CPU 0 with each server. "
           if results.get("contention") else "") +
        f"{plan['senders']} senders among the clients, latency read by {plan['samples']} "
        f"sample receivers, {plan['duration']} s per rate step, steps x{plan['step_factor']}. "
        f"Whole run: {results.get('seconds', 0):.0f} s.",
        "",
        "Servers:",
    ]
    for key, s in servers.items():
        extra = " ".join(s.get("options", []))
        state = f"skipped: {s['skipped']}" if "skipped" in s else s.get("version", "")
        lines.append(f"- `{key}`: {s['label']} {state}" + (f" (`{extra}`)" if extra else ""))
    lines.append("")
    for c in plan["fan_clients"]:
        lines += [f"## Fan-out, {c} clients in the room",
                  "",
                  f"Fixed offered rate: {rate_for(plan, c):,.0f} room messages/s; then"
                  f" {search_method(plan)} Light load, measured"
                  f" first: {rate_for(plan, c, 'light_rate'):,.0f} room messages/s for"
                  f" {plan.get('light_duration', 0)} s.",
                  ""]
        lines += table(results, MAIN, fixed_rows(), fanout_at(c), RATIO_TO)
        lines += retried_fixed(servers, MAIN, c)
        lines.append("")
    if any("idle" in s for s in servers.values()):
        lines += [f"## Idle scale: {plan['idle_clients']:,} registered clients", "",
                  "chat/1: from connect until the USERS line that ends the READY block, so "
                  "each handshake also sends JOINED to every user online and the whole user "
                  "list to the newcomer (O(N) per handshake, O(N^2) in all). IRC: NICK/USER "
                  "until the 001 welcome, no channel joined (joining one channel with every "
                  "client made both IRC servers take minutes). So this table favours IRC.",
                  ""]
        lines += table(results, MAIN, idle_rows(), lambda s: s.get("idle"), RATIO_TO)
        lines.append("")
    if sum(1 for k in VARIANTS if k in servers) > 1:
        lines += ["## What each feature of our server costs", ""]
        for c in plan["fan_clients"]:
            lines += [f"### {c} clients", ""]
            lines += table(results, VARIANTS, fixed_rows(), fanout_at(c),
                           ["chat-nopace", "chat-memdb", "chat-noflood", "chat-bare"])
            lines += retried_fixed(servers, VARIANTS, c)
            lines.append("")
    errors = [(k, where, d["error"]) for k, s in servers.items()
              for where, d in [*s.get("fanout", {}).items(), ("idle", s.get("idle", {}))]
              if isinstance(d, dict) and "error" in d]
    if errors:
        lines += ["## Errors", ""]
        lines += [f"- {k} {where}: `{e}`" for k, where, e in errors]
        lines.append("")
    if png:
        lines += ["## Latency against offered load", "", f"![latency]({png})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Latency against offered load, one panel per fan-out size, to
    C{path}; C{False} (no file) without matplotlib or without a fan-out
    size in the plan (C{--clients 0}: the idle scale only)."""
    if not results["plan"]["fan_clients"]:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    counts = results["plan"]["fan_clients"]
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.5), squeeze=False)
    for ax, c in zip(axes[0], counts, strict=True):
        for key, s in results["servers"].items():
            run = s.get("fanout", {}).get(str(c))
            if not run or "error" in run:
                continue
            runs = [*([run["fixed_first"]] if "fixed_first" in run else []), run["fixed"],
                    *run["steps"], *([run["light"]] if "light" in run else [])]
            pts = sorted(runs, key=lambda p: p["offered_deliveries_per_s"])
            xs = [p["offered_deliveries_per_s"] for p in pts if p["latency_ms"]["p99"]]
            p50 = [p["latency_ms"]["p50"] for p in pts if p["latency_ms"]["p99"]]
            p99 = [p["latency_ms"]["p99"] for p in pts if p["latency_ms"]["p99"]]
            if not xs:
                continue
            line = ax.plot(xs, p99, marker="o", label=f"{key} p99")[0]
            ax.plot(xs, p50, marker=".", linestyle="--", color=line.get_color(),
                    label=f"{key} p50")
        ax.axhline(100, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("offered deliveries/s (room messages/s x recipients)")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{c} clients in the room")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Rewrite the markdown (and the plot) of a results JSON: python -m bench.report FILE."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    for name in args:
        path = Path(name)
        results = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(results, path.with_suffix(".png").name))
        plot(results, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
