"""
The search for maximum sustained fan-out, apart from the servers it
measures (L{bench.run.run_fanout} hands it the measuring), so that which
rates are tried, in which order and what is reported can be tested with
made-up steps.

From the fixed rate the rate climbs by C{step_factor} until a rate fails;
then the gap between the last rate that held and the first that failed is
cut at its geometric midpoint C{refine_steps} times, so the figure is known
to within C{resolution()}, not one whole step.  Every rate, the fixed one
included, is tried once more when it fails: one noisy step must not end the
search (nor, at the fixed rate, make the figure 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Step = dict[str, Any]
NO_FAILURE = "step limit (held at the top rate)"


def resolution(step_factor: float, refine_steps: int) -> float:
    """The factor within which a full search knows the figure: each midpoint
    halves the gap's logarithm.  The report computes it from a run's plan."""
    return math.pow(step_factor, 0.5 ** refine_steps)


@dataclass(frozen=True)
class Limits:
    """How far the search may go: in steps and rate while it climbs, and in
    seconds for the climb and for the refinement each (the refinement has its
    own, so that a server that climbed further is not measured coarser)."""

    step_factor: float
    max_steps: int
    max_rate: float
    climb_budget: float
    refine_steps: int
    refine_budget: float

    def resolution(self) -> float:
        """The factor within which a full search with these limits knows the figure."""
        return resolution(self.step_factor, self.refine_steps)


def attempt(measure: Callable[[float], Step], rate: float,
            ready: Callable[[], bool]) -> list[Step]:
    """C{rate} measured, and again (marked C{retry}) if it failed and the
    room is C{ready}; the last one counts, the first stays in the record."""
    first = measure(rate)
    if first["held"] or not ready():
        return [first]
    again = measure(rate)
    again["retry"] = True
    return [first, again]


def search(measure: Callable[[float], Step], fixed_rate: float, limits: Limits,
           ready: Callable[[], bool] = lambda: True,
           now: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """
    The fixed rate, the climb and the refinement: what the JSON keeps.
    C{ready} is asked before every step but the first, and C{False} (the
    server died, say) ends the search.
    """
    fixed_tries = attempt(measure, fixed_rate, ready)
    fixed = fixed_tries[-1]
    best: Step | None = fixed if fixed["held"] else None
    failed: Step | None = None if best else fixed
    climb: list[Step] = []
    started = now()
    rate = fixed_rate * limits.step_factor
    while best is not None and failed is None and len(climb) < limits.max_steps \
            and rate <= limits.max_rate and now() < started + limits.climb_budget and ready():
        tries = attempt(measure, rate, ready)
        climb += tries
        if tries[-1]["held"]:
            best = tries[-1]
            rate *= limits.step_factor
        else:
            failed = tries[-1]
    refine: list[Step] = []
    refining = now()
    for _ in range(limits.refine_steps):
        if best is None or failed is None or now() >= refining + limits.refine_budget \
                or not ready():
            break
        tries = attempt(measure, math.sqrt(best["rate"] * failed["rate"]), ready)
        for step in tries:
            step["refine"] = True
        refine += tries
        if tries[-1]["held"]:
            best = tries[-1]
        else:
            failed = tries[-1]
    out: dict[str, Any] = {"fixed": fixed, "steps": climb + refine,
                           "sustained": sustained(best, failed),
                           "search_seconds": {"climb": refining - started,
                                              "refine": now() - refining}}
    if len(fixed_tries) > 1:
        out["fixed_first"] = fixed_tries[0]
    return out


def sustained(best: Step | None, failed: Step | None) -> dict[str, Any]:
    """The highest rate that held, and why the lowest rate above it failed."""
    return {
        "rate": best["rate"] if best else 0.0,
        "deliveries_per_s": best["lines_per_s"] if best else 0.0,
        "offered_deliveries_per_s": best["offered_deliveries_per_s"] if best else 0.0,
        "failed_rate": failed["rate"] if failed else None,
        # the true limit lies between the two rates: within this factor
        "resolution": failed["rate"] / best["rate"] if best and failed else None,
        "stopped_by": failed["why"] if failed else NO_FAILURE,
        "limit_at_failure": failed["limit"] if failed else None,
        "server_cpu_share_at_failure": failed["server_cpu_share"] if failed else None,
        "gen_cpu_share_at_failure": failed["gen_cpu_share"] if failed else None,
    }
