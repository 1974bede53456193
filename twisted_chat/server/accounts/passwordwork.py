"""
The password threads: every hash (a C{PASS} check, a C{REGISTER} or
C{PASSWD}) runs on L{PasswordWork}, a pool of its own with a bound on the
jobs queued or running, never on the reactor thread; the accounts file's
reads and writes run on two threads beside it (docs/accounts.md, "Never on
the reactor thread, and bounded").  L{twisted_chat.server.accounts.login} holds each
address to its share of the jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from twisted_chat.server import logs
from twisted_chat.server.accounts.hashing import make_dummy_hash

__all__ = ["OwnsPasswordWork", "PasswordWork", "Work", "WorkBusy"]

_log = logs.logger()

T = TypeVar("T")


class WorkBusy(Exception):
    """The password threads have as much work waiting as they may."""


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _PasswordThreads(ThreadPool):
    """
    Twisted's pool with daemon threads: the server stops them at shutdown
    (after the last check), but a process that never does (a test that
    starts the service and not its stop) must still exit, and the pool
    has a thread from its start on (the dummy hash).
    """

    threadFactory = _DaemonThread


class PasswordWork:
    """
    The password threads: a dedicated pool and a bound on the jobs queued or
    running in it; and the accounts file's own threads beside it, for the
    quick reads and writes (L{lookup}), so that a queue full of hashes does
    not hold up every C{NICK}'s lookup.  Started and stopped with the server
    (after twistd has daemonized: threads do not survive a fork).
    """

    def __init__(
        self, reactor: Any, threads: int = 2, limit: int = 64, pool: ThreadPool | None = None,
        files: ThreadPool | None = None,
    ) -> None:
        """@param pool: the hashing threads (tests: one that runs jobs inline).
        @param files: the accounts file's threads (default: C{pool} when
            given, else two of their own)."""
        self._reactor = reactor
        self.limit = limit
        self.pending = 0
        self._pool = pool if pool is not None else _PasswordThreads(
            minthreads=0, maxthreads=threads, name="chat-passwords")
        if files is None:
            files = pool if pool is not None else _PasswordThreads(
                minthreads=0, maxthreads=2, name="chat-accounts-file")
        self._files = files

    @property
    def full(self) -> bool:
        return self.pending >= self.limit

    def start(self) -> None:
        self._pool.start()
        if self._files is not self._pool:
            self._files.start()
        # The first job: the dummy hash, before any check needs it (made by
        # that check, it would make it take twice as long).
        threads.deferToThreadPool(self._reactor, self._pool, make_dummy_hash).addErrback(
            lambda f: _log.failure("could not make the dummy hash", f))

    def stop(self) -> None:
        self._pool.stop()
        if self._files is not self._pool:
            self._files.stop()

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """A job that hashes: refused with L{WorkBusy} when L{full}."""
        if self.full:
            raise WorkBusy()
        self.pending += 1
        d = threads.deferToThreadPool(self._reactor, self._pool, f, *args)

        def done(result: Any) -> Any:
            self.pending -= 1
            return result

        d.addBoth(done)
        return d

    def lookup(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """
        A job that only reads or writes the file (well under a millisecond),
        on the file's threads: not queued behind the hashes, and not counted
        against the bound, since a burst of newcomers (each connection has
        at most one job) must not be refused for it.
        """
        return threads.deferToThreadPool(self._reactor, self._files, f, *args)


class OwnsPasswordWork:
    """
    What the top service (one server's, or a cluster node's) does with the
    password threads, when accounts are on (C{work} is not C{None}): starts
    them in its C{startService}, not before (threads do not survive
    twistd's fork), and stops them once the last connection is gone (no
    check is left to answer).  Not a child service of its own:
    C{MultiService.stopService} stops every child at once, so the threads
    would stop while connections still wait for checks.
    """

    work: PasswordWork | None

    def _start_work(self) -> None:
        if self.work is not None:
            self.work.start()

    def _stop_work(self, result: T) -> T:
        """After the last connection; passes C{result} on (a callback)."""
        if self.work is not None:
            self.work.stop()
        return result


class Work(Protocol):
    """What L{Accounts} needs from L{PasswordWork} (tests run jobs inline)."""

    @property
    def full(self) -> bool: ...

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]: ...

    def lookup(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]: ...
