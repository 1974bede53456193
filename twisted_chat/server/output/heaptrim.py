"""
Giving the C heap back after an output burst (docs/security.md, "Output held
in all").  glibc keeps what a burst's buffers freed in the process, and
raises its threshold for mapping large blocks apart each time one is freed,
so the RSS stays at the burst's peak for good.  (The buffers of the
connections the burst cut are freed at their loss, with no collection:
L{twisted_chat.tcpinfo.drop_twisted_buffers}.)  L{load} returns a
L{HeapTrim} that calls glibc's C{malloc_trim(0)}, or C{None} where libc has
none (musl, macOS): there nothing is trimmed.  L{OutputBudget
<twisted_chat.server.output.outputwatch.OutputBudget>} decides when, never
on the path of a write (C{malloc_trim} walks the whole heap).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable

from twisted_chat.server.logs import logger

__all__ = ["HeapTrim", "load", "rss"]

_log = logger()


def rss(path: str = "/proc/self/statm") -> int | None:
    """This process's resident set in bytes (Linux's C{/proc}); C{None}
    where it cannot be read."""
    try:
        with open(path, "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGESIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    """libc's C{malloc_trim} (glibc), or C{None} where there is none."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # pragma: no cover - not this platform
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # pragma: no cover - not this platform
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrim:
    """One trim, and its log line: what the RSS gave back and how long the
    trim took (it holds the reactor meanwhile)."""

    __slots__ = ("_malloc_trim", "_rss")

    def __init__(self, malloc_trim: Callable[[int], int],
                 rss: Callable[[], int | None] = rss) -> None:
        self._malloc_trim = malloc_trim
        self._rss = rss

    def __call__(self, peak: int) -> None:
        """Trim after a burst whose output held peaked at C{peak} bytes."""
        before = self._rss()
        started = time.perf_counter()
        self._malloc_trim(0)
        took = time.perf_counter() - started
        after = self._rss()
        if before is None or after is None:
            rss_text = "RSS not known"
        else:
            rss_text = f"RSS {before / 1e6:.0f} to {after / 1e6:.0f} MB"
        _log.info("Output held fell from a peak of {peak:.0f} MiB: heap trimmed "
                  "({rss}, in {ms:.1f} ms)", peak=peak / (1 << 20), rss=rss_text,
                  ms=took * 1000)


def load() -> HeapTrim | None:
    """A L{HeapTrim} where libc has C{malloc_trim}, else C{None}."""
    trim = _malloc_trim()
    return HeapTrim(trim) if trim is not None else None
