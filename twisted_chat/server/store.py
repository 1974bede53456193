"""
Durable lobby history in an embedded SQLite database.

L{SQLiteStore} satisfies L{twisted_chat.server.history.MessageStore}.  The reactor
thread only ever puts entries on a list under a short lock; one dedicated
writer thread owns every write.

Why a dedicated writer thread and not C{twisted.enterprise.adbapi}:
  - adbapi runs one C{runInteraction} per call on the reactor's shared thread
    pool, so batching several messages into one transaction would still need
    a queue of our own in front of it, and the pool is also where name
    resolution and other C{deferToThread} work runs.  A thread of our own
    batches for free (it takes whatever queued up while it slept or wrote),
    can never starve or be starved by other thread-pool users, and is the
    natural place for the periodic retention prune.
  - The connection holds an exclusive lock on the file for its whole life
    (see below); one long-lived connection used by one thread is exactly the
    shape that needs.

Durability: the writer commits a batch at most L{SQLiteStore.commit_interval}
(0.1 s) after the oldest message in it was appended, or at once on L{flush}
and L{close}.  The journal is a write-ahead log (WAL) with C{synchronous=FULL}:
each commit is fsync'ed, so a committed batch survives a SIGKILL and also a
power cut.  Because commits are batched, that costs at most about ten fsyncs
a second however busy the lobby is.  The bound: after a crash, only messages
appended in the last C{commit_interval} plus the duration of one commit
(normally a few milliseconds) can be missing.

One server per file: the connection uses C{PRAGMA locking_mode=EXCLUSIVE} and
starts with C{BEGIN EXCLUSIVE}, so it takes SQLite's own exclusive lock on the
database file and never releases it until closed.  A second server (any
process, and any path to the same file, hard links included) cannot even read
the file and fails at once with L{StoreError}, because the busy timeout is 0.
In exclusive mode the WAL index lives in the process's memory, so there is no
C{-shm} file.  The price: while the server runs, other programs (the
C{sqlite3} shell included) cannot open the file either.

What is a chat database (L{twisted_chat.server.storefile}, which checks
and opens the file): an SQLite file whose header carries its
C{APPLICATION_ID}.  The first 100 bytes are read before SQLite opens the
file, so a file of another kind, or another application's SQLite database, is
rejected without ever being opened for writing.  A chat database is
integrity-checked (C{PRAGMA quick_check}) inside the exclusive transaction,
before anything is written to it; if a crash left a write-ahead log beside
it, the checks run first on a read-only connection, because a read-write
connection folds the log into the file when it closes, even after refusing
it.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from twisted_chat.server import logs
from twisted_chat.server.config import MEMORY
from twisted_chat.server.history import Entry
from twisted_chat.server.storefile import StoreError, create, identity, open_file, release

__all__ = ["SQLiteStore"]

#: Most rows one INSERT statement takes.  A batch goes in as a few
#: statements of many rows (a busy lobby's batch of two or three messages as
#: one), not one statement per row: SQLite then sets up its cursors and
#: updates the AUTOINCREMENT counter once per statement.
_ROWS_PER_INSERT = 16
#: The INSERT statement of each number of rows, 1 to L{_ROWS_PER_INSERT}.
_INSERTS = {
    n: "INSERT INTO messages (ts, nick, text) VALUES " + ", ".join(["(?, ?, ?)"] * n)
    for n in range(1, _ROWS_PER_INSERT + 1)
}

_log = logs.logger("twisted_chat.server.store")


class _Reactor(Protocol):
    """What the store needs from the reactor."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...

    def seconds(self) -> float: ...


Row = tuple[float, str, str]


class SQLiteStore:
    """
    Lobby messages in an SQLite file, written by one background thread.

    Make one with L{open}.  L{append} never blocks; L{flush} and L{close}
    return Deferreds that fire on the reactor thread.
    """

    #: Longest time (seconds) a message waits before its batch is committed.
    commit_interval: ClassVar[float] = 0.1
    #: Told how long (seconds) each successful commit took; called on the
    #: writer thread (see twisted_chat.server.metrics.counters).
    on_commit: Callable[[float], None] | None = None
    #: How often (seconds) old rows are pruned when C{retain_days} is set.
    prune_interval: ClassVar[float] = 3600.0
    #: Most rows deleted per transaction, so pruning never delays new
    #: messages for long.
    prune_chunk: ClassVar[int] = 5000
    #: Longest wait (seconds) between retries after a failed write.
    max_retry_delay: ClassVar[float] = 30.0
    #: How often (seconds) the writer checks that the file it writes is
    #: still the one at the database's path (not deleted or replaced).
    path_check_interval: ClassVar[float] = 10.0
    #: How often (seconds) it says so again while the file is missing.
    path_reminder_interval: ClassVar[float] = 600.0
    #: Least time (seconds) between two log lines about dropped messages.
    drop_report_interval: ClassVar[float] = 10.0

    def __init__(
        self,
        conn: sqlite3.Connection,
        reactor: _Reactor,
        name: str,
        claim: str | None,
        retain_days: float | None,
        max_messages: int | None = None,
        max_backlog: int = 10_000,
    ) -> None:
        """Use L{open}."""
        self._conn = conn
        # The writer's statements go through one cursor, not a new one per
        # execute (three or more a batch).
        self._writes = conn.cursor()
        self._reactor = reactor
        self._name = name
        self._claim = claim
        self._retain = None if retain_days is None else retain_days * 86400.0
        self._max_messages = max_messages or None
        # Prune by count once this many rows went in since the last time.
        self._trim_every = max((max_messages or 0) // 100, 1)
        self._max_backlog = max(max_backlog, 1)
        self._identity = identity(name) if claim is not None else None
        self._db_lock = threading.Lock()  # the connection: writer vs. recent()
        # The writer's alarm clock: held while no wake-up is due, released
        # (L{_wake_writer}) to wake it.  A bare lock, not a Condition, whose
        # wait and notify are Python code run for every batch.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._lock = threading.Lock()  # guards everything below
        self._pending: deque[Entry] = deque()
        self._pending_since = 0.0  # time.monotonic() of the oldest pending entry
        self._flushes: list[Deferred[None]] = []
        self._stopping = False
        self._stopped = False  # the writer took its last batch
        self._dropped = 0
        # Messages dropped from a full backlog (the disk is failing): how
        # many since this failure began, how many the log has been told of,
        # and when it may be told again (its lines' throttle: it counts
        # lines left out, the line counts messages); all start again when
        # the disk recovers.
        self._shed = 0
        # ... and how many since the store opened, which only grows (the
        # chat_history_dropped_total counter: it must never go back).
        self._shed_total = 0
        self._shed_reported = 0
        self._shed_tell = logs.Throttle(self.drop_report_interval)
        # The messages in the database (chat_history_messages): counted once
        # by the writer thread as it starts, then kept by it as it inserts and
        # prunes; None until counted.  Written by that thread alone, read as
        # one int from any.
        self.stored: int | None = None
        self._close_waiters: list[Deferred[None]] = []
        self._close_result: StoreError | bool | None = False  # False: not yet
        self._thread = threading.Thread(target=self._run, name=f"chat-store {name}", daemon=True)
        self._thread.start()

    # -- start-up -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str,
        reactor: _Reactor,
        *,
        retain_days: float | None = None,
        max_messages: int | None = None,
        max_backlog: int = 10_000,
    ) -> SQLiteStore:
        """
        Open or create the chat database at C{path}; blocking, for start-up.

        Creates or upgrades the schema, takes the exclusive lock, and rejects
        a file that is not a chat database, is corrupt, or is in use, with a
        L{StoreError} and without modifying it.  L{MEMORY} (C{":memory:"})
        keeps nothing on disk.

        @param max_messages: keep at most this many messages, deleting the
            oldest (C{None}: no bound by count).
        @param max_backlog: hold at most this many messages not yet written
            (while the disk fails); past it the oldest are dropped.
        """
        if retain_days is not None and not (math.isfinite(retain_days) and retain_days > 0):
            raise ValueError(f"retain_days must be a positive number, not {retain_days!r}")
        if path == MEMORY:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN")
            create(conn)
            conn.execute("COMMIT")
            return cls(conn, reactor, path, None, retain_days, max_messages, max_backlog)
        conn, shown, claim = open_file(path)
        return cls(conn, reactor, shown, claim, retain_days, max_messages, max_backlog)

    @staticmethod
    def check(path: str) -> None:
        """
        Blocking: raise the L{StoreError} that L{open} would raise now, else
        create or upgrade the file and let go of it again.

        For a clean one-line error before twistd daemonizes: L{open} itself
        must wait until after the fork (threads and file locks do not survive
        it), when an exception can only be reported with a traceback.
        """
        if path != MEMORY:
            conn, _, claim = open_file(path)
            conn.close()
            release(claim)

    def recent(self, n: int) -> list[Entry]:
        """The last C{n} lobby messages, oldest first; blocking, for start-up."""
        if n <= 0:
            return []
        query = "SELECT ts, nick, text FROM messages"
        params: tuple[float | int, ...] = (n,)
        if self._retain is not None:
            query += " WHERE ts >= ?"
            params = (self._reactor.seconds() - self._retain, n)
        with self._db_lock:
            rows = self._conn.execute(query + " ORDER BY id DESC LIMIT ?", params).fetchall()
        return [Entry(ts, nick, text) for ts, nick, text in reversed(rows)]

    # -- the reactor side ---------------------------------------------------

    def append(self, entry: Entry) -> None:
        """
        Queue C{entry}; never blocks on the disk.  While the disk fails, at
        most C{max_backlog} messages wait: past that the oldest is dropped.
        """
        with self._lock:
            if self._stopped:
                self._dropped += 1
                closed: int | None = self._dropped
                report = None
            else:
                closed = None
                pending = self._pending
                if not pending:
                    self._pending_since = time.monotonic()
                    self._wake_writer()
                pending.append(entry)
                if len(pending) <= self._max_backlog:
                    return
                pending.popleft()
                self._shed += 1
                self._shed_total += 1
                report = self._shed_report()
        if report is not None:
            _log.error("{message}", message=report)
        if closed is not None:
            _log.error(
                "Chat database {name} is closed: lobby message not stored ({n} so far).",
                name=self._name,
                n=closed,
            )

    def flush(self) -> Deferred[None]:
        """Fire once everything appended so far is committed."""
        d: Deferred[None] = Deferred()
        with self._lock:
            if not self._stopped:
                self._flushes.append(d)
                self._wake_writer()
                return d
        return self._when_closed()

    def close(self) -> Deferred[None]:
        """Commit everything appended, stop the writer, close the database."""
        with self._lock:
            self._stopping = True
            self._wake_writer()
        return self._when_closed()

    def _wake_writer(self) -> None:
        """Have the writer look at its work again (any thread)."""
        try:  # noqa: SIM105 (contextlib.suppress is slower, once a batch)
            self._wake.release()
        except RuntimeError:
            pass  # a wake-up is already due

    @property
    def backlog(self) -> int:
        """Messages waiting to be written."""
        with self._lock:
            return len(self._pending)

    @property
    def shed(self) -> int:
        """Messages dropped from a full backlog since the store opened: only
        grows (a disk that recovers starts the log's count again, not this)."""
        with self._lock:
            return self._shed_total

    def _shed_report(self) -> str | None:
        """
        The line to log about dropped messages, if one is due (under
        C{_lock}): at the first, then at most once per
        C{drop_report_interval}.
        """
        if (self._shed == self._shed_reported
                or self._shed_tell.allow(time.monotonic()) is None):
            return None
        new = self._shed - self._shed_reported
        self._shed_reported = self._shed
        return (
            f"The chat database {self._name} is not being written and the backlog is full"
            f" ({self._max_backlog} messages): dropped the {new} oldest unwritten lobby"
            f" message(s), {self._shed} since the failure began."
        )

    def _when_closed(self) -> Deferred[None]:
        if self._close_result is False:
            d: Deferred[None] = Deferred()
            self._close_waiters.append(d)
            return d
        if isinstance(self._close_result, StoreError):
            return fail(self._close_result)
        return succeed(None)

    def _closed(self, error: StoreError | None) -> None:
        """On the reactor thread, when the writer has finished."""
        self._thread.join()
        if self._claim is not None:
            release(self._claim)
        self._close_result = error
        waiters, self._close_waiters = self._close_waiters, []
        self._fire(waiters, error)

    def _fire(self, waiting: Sequence[Deferred[None]], error: StoreError | None) -> None:
        """Fire each of C{waiting} with C{error}, or with C{None} if there is none."""
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        error: StoreError | None = None
        try:
            error = self._loop()
        except Exception as e:  # a bug: report it rather than hang close()
            with self._lock:
                self._stopped = True
            error = StoreError(f"The chat database writer for {self._name} failed: {e!r}.")
        self._finish(error)

    def _loop(self) -> StoreError | None:
        """Write batches until closed; the error of the last write, if any."""
        pruning = self._retain is not None or self._max_messages is not None
        next_prune = 0.0 if pruning else math.inf
        failures = 0
        failing_since = 0.0
        retry_at = 0.0
        written_since_trim = 0
        watching = self._identity is not None
        next_check = time.monotonic() + self.path_check_interval if watching else math.inf
        self._count()
        while True:
            due = next_prune if next_prune < next_check else next_check
            batch, since, flushes, stopping = self._next_work(due, retry_at)
            error: StoreError | None = None
            if batch:
                began = time.monotonic()
                try:
                    self._write(batch)
                except sqlite3.Error as e:
                    if not failures:
                        failing_since = time.monotonic()
                    failures += 1
                    delay = min(self.max_retry_delay, 0.5 * 2 ** min(failures, 16))
                    retry_at = time.monotonic() + delay
                    error = StoreError(
                        f"Could not write {len(batch)} lobby message(s) to the chat database"
                        f" {self._name}: {e}."
                    )
                    report = None
                    with self._lock:
                        pending = self._pending
                        pending.extendleft(reversed(batch))
                        over = len(pending) - self._max_backlog
                        if over > 0:
                            for _ in range(over):
                                pending.popleft()
                            self._shed += over
                            self._shed_total += over
                            report = self._shed_report()
                        self._pending_since = since
                    if report:
                        self._log_error(report)
                    next_prune = max(next_prune, retry_at)  # no busy loop
                    if not stopping:
                        self._log_error(f"{error} Retrying in {delay:g} s.")
                else:
                    on_commit = self.on_commit
                    if on_commit is not None:
                        on_commit(time.monotonic() - began)
                    if failures:
                        self._recovered(len(batch), time.monotonic() - failing_since)
                    failures = 0
                    retry_at = 0.0
                    written_since_trim += len(batch)
                    if self._max_messages and written_since_trim >= self._trim_every:
                        written_since_trim = 0
                        next_prune = 0.0
            if watching and time.monotonic() >= next_check:
                next_check = self._check_path()
            if error is None and time.monotonic() >= next_prune:
                next_prune = self._prune()
            if flushes:
                self._reactor.callFromThread(self._fire, flushes, error)
            if stopping:
                return error

    def _next_work(
        self, due: float, retry_at: float
    ) -> tuple[deque[Entry], float, list[Deferred[None]], bool]:
        """
        Sleep until there is work: a batch to commit (C{commit_interval}
        after its oldest message, not before C{retry_at}), a flush, the
        close, or C{due} (a prune or a path check).  Then take the batch,
        when its oldest message came, the flushes, and whether to stop.
        """
        interval = self.commit_interval
        wake = self._wake
        while True:
            with self._lock:
                now = time.monotonic()
                if self._pending:
                    write_at = self._pending_since + interval
                    if write_at < retry_at:
                        write_at = retry_at
                    if write_at < due:
                        due = write_at
                if now >= due or self._flushes or self._stopping:
                    batch, self._pending = self._pending, deque()
                    flushes, self._flushes = self._flushes, []
                    stopping = self._stopping
                    self._stopped = stopping
                    return batch, self._pending_since, flushes, stopping
            wake.acquire(True, -1 if due == math.inf else due - now)

    def _finish(self, error: StoreError | None) -> None:
        """End of the writer thread: close the database, report to the reactor."""
        try:
            with self._db_lock:
                self._conn.close()  # checkpoints the WAL into the file, removes it
        except sqlite3.Error as e:
            if error is None:
                error = StoreError(f"Could not close the chat database {self._name}: {e}.")
        if error is not None:
            self._log_error(f"{error} Messages not written: {len(self._pending)}.")
        self._reactor.callFromThread(self._closed, error)

    def _log_error(self, message: str) -> None:
        self._reactor.callFromThread(_log.error, "{message}", message=message)

    def _recovered(self, written: int, after: float) -> None:
        """The first write after failures went through (writer thread)."""
        with self._lock:
            shed = self._shed
            report = self._shed_report() if shed != self._shed_reported else None
            self._shed = self._shed_reported = 0
            self._shed_tell = logs.Throttle(self.drop_report_interval)
        if report:
            self._log_error(report)
        message = (
            f"The chat database {self._name} is written again after {after:.1f} s of"
            f" failures: {written} waiting lobby message(s) stored"
            + (f", {shed} dropped meanwhile." if shed else ", none lost.")
        )
        self._reactor.callFromThread(_log.warn, "{message}", message=message)

    _missing_since: float | None = None
    _missing_told: float = 0.0

    def _check_path(self) -> float:
        """
        Is the file being written still the one at the database's path?
        A file deleted (or its directory) or replaced while the server
        runs keeps taking writes that are lost at the next start: say so,
        loudly, when it is noticed and every C{path_reminder_interval}
        while it lasts.  Returns when to check next (writer thread).
        """
        now = time.monotonic()
        try:
            found: tuple[int, int] | None = identity(self._name)
        except OSError:
            found = None
        if found == self._identity:
            if self._missing_since is not None:
                self._missing_since = None
                self._reactor.callFromThread(
                    _log.warn, "The chat database {name} is back at its path.", name=self._name
                )
        elif self._missing_since is None or now - self._missing_told >= (
            self.path_reminder_interval
        ):
            if self._missing_since is None:
                self._missing_since = now
            self._missing_told = now
            what = "was replaced by another file" if found is not None else "was deleted"
            self._reactor.callFromThread(
                _log.critical,
                "The chat database {name} {what} while the server runs: lobby messages"
                " go on being written to the old file, which is gone at the next start,"
                " and the history with it. Restore the file (or its directory), or stop"
                " the server and start it on a database that is there.",
                name=self._name,
                what=what,
            )
        return now + self.path_check_interval

    def _count(self) -> None:
        """Count the messages in the database (writer thread, at its start:
        one read of the smallest index, C{messages_ts})."""
        try:
            with self._db_lock:
                self.stored = self._conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        except sqlite3.Error as e:
            self._log_error(f"Could not count the messages in the chat database "
                            f"{self._name}: {e}.")

    def _counted(self, delta: int) -> None:
        """C{delta} messages more (or fewer) in the database, committed."""
        stored = self.stored
        if stored is not None:
            self.stored = stored + delta

    def _write(self, batch: Sequence[Entry]) -> None:
        """Commit C{batch} in one transaction (writer thread)."""
        rows: Sequence[Row] = batch  # an Entry is the tuple of its row
        with self._db_lock:
            self._writes.execute("BEGIN IMMEDIATE")
            try:
                # The rows inserted: the connection's count of changes (a
                # rollback does not take it back, so it is read again after one).
                before = self._conn.total_changes
                try:
                    self._insert(rows)
                except sqlite3.Error:
                    raise
                except Exception:
                    # A row the driver cannot bind (not valid text, say): store
                    # the others rather than retrying the whole batch forever.
                    self._writes.execute("ROLLBACK")
                    self._writes.execute("BEGIN IMMEDIATE")
                    before = self._conn.total_changes
                    self._insert_each(rows)
                inserted = self._conn.total_changes - before
                self._writes.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._writes.execute("ROLLBACK")
                raise
        self._counted(inserted)

    def _insert(self, rows: Sequence[Row]) -> None:
        """Insert C{rows}; the one place a test can make writes slow."""
        values = list(itertools.chain.from_iterable(rows))
        full, rest = divmod(len(rows), _ROWS_PER_INSERT)
        step = 3 * _ROWS_PER_INSERT
        if full:
            self._writes.executemany(
                _INSERTS[_ROWS_PER_INSERT],
                [values[i:i + step] for i in range(0, full * step, step)],
            )
        if rest:
            self._writes.execute(_INSERTS[rest], values[full * step:])

    def _insert_each(self, rows: Sequence[Row]) -> None:
        for row in rows:
            try:
                self._writes.execute(_INSERTS[1], row)
            except sqlite3.Error:
                raise
            except Exception as e:
                self._log_error(f"Lobby message from {row[1]!r} not stored: {e!r}.")

    def _prune(self) -> float:
        """
        Delete one chunk of expired rows and one chunk of rows over
        C{max_messages}; return when to prune next.  Ids only grow, so the
        rows over the count are those more than C{max_messages} ids below
        the newest.
        """
        deleted = removed = 0
        try:
            with self._db_lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._retain is not None:
                        cutoff = self._reactor.seconds() - self._retain
                        deleted = removed = self._conn.execute(
                            "DELETE FROM messages WHERE id IN"
                            " (SELECT id FROM messages WHERE ts < ? LIMIT ?)",
                            (cutoff, self.prune_chunk),
                        ).rowcount
                    if self._max_messages is not None:
                        newest = self._conn.execute("SELECT max(id) FROM messages").fetchone()[0]
                        if newest is not None:
                            over = self._conn.execute(
                                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                                " WHERE id <= ? ORDER BY id LIMIT ?)",
                                (newest - self._max_messages, self.prune_chunk),
                            ).rowcount
                            deleted = max(deleted, over)
                            removed += over
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            self._log_error(f"Could not prune the chat database {self._name}: {e}.")
            return time.monotonic() + self.prune_interval
        self._counted(-removed)
        if deleted >= self.prune_chunk:
            return 0.0  # more to delete: go on after the next batch
        return time.monotonic() + self.prune_interval
