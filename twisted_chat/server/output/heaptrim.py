"""
Giving memory back after an output burst (docs/security.md, "Output held in
all").  Two things kept a burst's peak for good on an idle server: the
connections cut in it, whose Twisted buffers stay with them until Python's
cyclic collector frees them (a connection and its user refer to each other,
and a full collection waits for allocations an idle server does not make);
and glibc, which keeps freed memory in the process and raises its threshold
for mapping large blocks apart each time one is freed.  L{HeapTrim} runs a
full collection, then glibc's C{malloc_trim(0)} where libc has it (L{load};
elsewhere, musl or macOS, only the collection).  L{OutputBudget
<twisted_chat.server.output.outputwatch.OutputBudget>} decides when, never
on the path of a write (both walk all they hold).
"""

from __future__ import annotations

import ctypes
import gc
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
    collection and the trim took (they hold the reactor meanwhile)."""

    __slots__ = ("_collect", "_malloc_trim", "_rss")

    def __init__(self, malloc_trim: Callable[[int], int] | None,
                 rss: Callable[[], int | None] = rss,
                 collect: Callable[[], int] = gc.collect) -> None:
        self._malloc_trim = malloc_trim
        self._rss = rss
        self._collect = collect

    def __call__(self, peak: int) -> None:
        """Give back what a burst whose output held peaked at C{peak}
        bytes left behind."""
        before = self._rss()
        started = time.perf_counter()
        freed = self._collect()
        collected = time.perf_counter()
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        trimmed = time.perf_counter()
        after = self._rss()
        if before is None or after is None:
            rss_text = "RSS not known"
        else:
            rss_text = f"RSS {before / 1e6:.0f} to {after / 1e6:.0f} MB"
        _log.info("Output held fell from a peak of {peak:.0f} MiB: memory given back ({rss}; "
                  "{freed} objects collected in {gc_ms:.1f} ms, {trim}", peak=peak / (1 << 20),
                  rss=rss_text, freed=freed, gc_ms=(collected - started) * 1000,
                  trim=(f"heap trimmed in {(trimmed - collected) * 1000:.1f} ms)"
                        if self._malloc_trim is not None else "no malloc_trim here)"))


def load() -> HeapTrim:
    """A L{HeapTrim}, with C{malloc_trim} where libc has it."""
    return HeapTrim(_malloc_trim())
