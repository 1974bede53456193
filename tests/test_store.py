"""
Unit tests of L{twisted_chat.server.store} on temporary files.

The store reports back with C{reactor.callFromThread}, so these tests run on
the real reactor through pytest-twisted and wait on the store's Deferreds.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from twisted_chat.server.history import Entry
from twisted_chat.server.store import SQLiteStore
from twisted_chat.server.storefile import APPLICATION_ID, SCHEMA_VERSION, StoreError

reactor: Any = _reactor
Gen = Generator[Any, Any, None]
T0 = 1_700_000_000.0

# The version 1 schema exactly as the previous release wrote it: frozen here,
# so that a change to the module's own copy cannot hide a broken upgrade.
V1_DDL = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    nick TEXT NOT NULL,
    text TEXT NOT NULL);
"""


def entries(n: int, start: int = 0, ts: float = T0) -> list[Entry]:
    return [Entry(ts + i, f"nick{i % 7}", f"message {i}") for i in range(start, start + n)]


def fill(store: SQLiteStore, items: Sequence[Entry]) -> None:
    for entry in items:
        store.append(entry)


class FullDisk(SQLiteStore):
    """
    A store whose writes fail (a full disk) while C{failing} is true.

    Its writer does not retry on its own for a second or more (the first
    retry delay is 1 s): the tests make it try with L{failed_write} or
    L{SQLiteStore.flush}, and read its backlog between two tries.
    """

    max_retry_delay = 3600.0
    failing = True

    def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        super()._insert(rows)


def rows(path: Path) -> list[tuple[int, float, str, str]]:
    """Every row of a closed database, read with a plain connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, ts, nick, text FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(path: Path, match: str) -> None:
    """Opening C{path} fails with one sentence naming it, and changes nothing."""
    before = digest(path)
    listing = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StoreError, match=match) as info:
        SQLiteStore.open(str(path), reactor)
    assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def timeout(d: Deferred[Any], seconds: float = 10.0) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


@inlineCallbacks
def failed_write(store: SQLiteStore) -> Gen:
    """Wait until the writer has tried to write everything appended so far,
    and failed (a flush fails with the write's error)."""
    with pytest.raises(StoreError, match="Could not write"):
        yield timeout(store.flush())


class Calls:
    """
    Counts calls that the writer thread reports (L{called}), on the reactor
    thread, in order with what the writer sent there before them: a test
    waits for the count to grow (L{more}) instead of for a time.
    """

    def __init__(self) -> None:
        self.count = 0
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def called(self) -> None:
        """One more (on the writer thread)."""
        reactor.callFromThread(self._one_more)

    def _one_more(self) -> None:
        self.count += 1
        due = [d for n, d in self._waiting if n <= self.count]
        self._waiting = [(n, d) for n, d in self._waiting if n > self.count]
        for d in due:
            d.callback(None)

    def more(self, n: int) -> Deferred[Any]:
        """Fires once C{n} more calls than now have been counted."""
        d: Deferred[None] = Deferred()
        self._waiting.append((self.count + n, d))
        return timeout(d)


class FixedClock:
    """A reactor whose C{seconds()} is chosen by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        reactor.callFromThread(f, *args, **kwargs)

    def seconds(self) -> float:
        return self.now


class CountingStore(SQLiteStore):
    """Records the size of every batch inserted (in the writer thread)."""

    batches: list[int]

    def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
        self.batches.append(len(rows))
        super()._insert(rows)


def open_counting(path: Path | str, **kwargs: Any) -> CountingStore:
    store = CountingStore.open(str(path), reactor, **kwargs)
    assert isinstance(store, CountingStore)
    store.batches = []
    return store


@inlineCallbacks
def first_batch(store: CountingStore, failure: str) -> Gen:
    """Wait until the writer has inserted a batch; fail after 5 s."""
    started = time.monotonic()
    while not store.batches:
        assert time.monotonic() - started < 5, failure
        yield deferLater(reactor, 0.01, lambda: None)


def make_v1(path: Path, messages: Sequence[Entry]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executemany(
        "INSERT INTO messages (ts, nick, text) VALUES (?, ?, ?)",
        [(e.ts, e.nick, e.text) for e in messages],
    )
    conn.commit()
    conn.close()


# -- writing and reading back -----------------------------------------------


@pytest_twisted.inlineCallbacks
def test_write_then_read_back_last_n_in_order(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    assert store.recent(5) == []
    written = entries(30)
    fill(store, written)
    yield timeout(store.flush())
    assert store.recent(5) == written[-5:]
    yield timeout(store.close())

    again = SQLiteStore.open(str(path), reactor)
    try:
        assert again.recent(5) == written[-5:]
        assert again.recent(100) == written
        assert again.recent(0) == []
    finally:
        yield timeout(again.close())


@pytest_twisted.inlineCallbacks
def test_close_commits_everything_pending_and_leaves_only_the_file(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = open_counting(path)
    store.commit_interval = 3600.0  # nothing is committed until close
    written = entries(500)
    fill(store, written)
    yield timeout(store.close())
    assert [(ts, nick, text) for _, ts, nick, text in rows(path)] == [
        (e.ts, e.nick, e.text) for e in written
    ]
    assert store.batches == [500], "one transaction for everything queued"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3"]


@pytest_twisted.inlineCallbacks
def test_many_messages_share_a_transaction(tmp_path: Path) -> Gen:
    store = open_counting(tmp_path / "chat.sqlite3")
    store.commit_interval = 3600.0
    fill(store, entries(1000))
    yield timeout(store.flush())
    fill(store, entries(10, start=1000))
    yield timeout(store.flush())
    yield timeout(store.close())
    assert store.batches == [1000, 10]


@pytest.mark.parametrize("size", [1, 2, 15, 16, 17, 32, 50])
@pytest_twisted.inlineCallbacks
def test_a_batch_of_any_size_goes_in_whole_and_in_order(tmp_path: Path, size: int) -> Gen:
    """A batch is inserted as statements of up to 16 rows: every row of
    every statement, in the order appended, in one transaction."""
    path = tmp_path / "chat.sqlite3"
    store = open_counting(path)
    store.commit_interval = 3600.0
    written = entries(size)
    fill(store, written)
    yield timeout(store.flush())
    assert store.stored == size
    yield timeout(store.close())
    assert store.batches == [size]
    assert rows(path) == [(i + 1, e.ts, e.nick, e.text) for i, e in enumerate(written)]


@pytest_twisted.inlineCallbacks
def test_commits_on_its_own_within_the_interval(tmp_path: Path) -> Gen:
    """No flush, no close: the writer commits by itself (the crash bound)."""
    path = tmp_path / "chat.sqlite3"
    store = open_counting(path)
    store.append(Entry(T0, "alice", "hello"))
    yield first_batch(store, "the writer never committed")
    # The commit is visible to another connection once the store lets go.
    yield timeout(store.close())
    assert rows(path) == [(1, T0, "alice", "hello")]


@pytest_twisted.inlineCallbacks
def test_a_message_to_an_idle_writer_wakes_it(tmp_path: Path) -> Gen:
    """
    The writer sleeps while nothing is pending (until its next path check,
    10 s away): the first message after a quiet spell must wake it, so it
    is committed within the interval, not at the writer's next errand.
    """
    store = open_counting(tmp_path / "chat.sqlite3")
    yield timeout(store.flush())  # the writer has looked, found nothing, and sleeps
    yield deferLater(reactor, 0.2, lambda: None)
    store.append(Entry(T0, "alice", "hello"))
    yield first_batch(store, "the writer slept through the message")
    yield timeout(store.close())
    assert store.batches == [1]


@pytest_twisted.inlineCallbacks
def test_wal_mode_and_exclusive_lock(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    try:
        store.append(Entry(T0, "alice", "hi"))
        yield timeout(store.flush())
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("SELECT count(*) FROM messages").fetchone()
        other.close()
    finally:
        yield timeout(store.close())
    header = path.read_bytes()[:100]
    assert header[18:20] == b"\x02\x02", "the file is in WAL mode"
    assert int.from_bytes(header[60:64], "big") == SCHEMA_VERSION
    assert int.from_bytes(header[68:72], "big") == APPLICATION_ID


@pytest.fixture
def umask_022() -> Generator[None, None, None]:
    """The umask of a shell, as C{twistd -n} keeps it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest_twisted.inlineCallbacks
def test_a_new_database_and_its_log_are_the_servers_only(tmp_path: Path, umask_022: None) -> Gen:
    """Made 0600 under umask 022, its write-ahead log too: the lobby's
    messages are not for every local user (rev12 newuser #10)."""
    path = tmp_path / "chat.sqlite3"
    SQLiteStore.check(str(path))  # what makeService does first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    store = SQLiteStore.open(str(path), reactor)
    try:
        store.append(Entry(T0, "alice", "hi"))
        yield timeout(store.flush())
        made = sorted(p.name for p in tmp_path.iterdir())
        assert made == ["chat.sqlite3", "chat.sqlite3-wal"], made
        for name in made:
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        yield timeout(store.close())


@pytest_twisted.inlineCallbacks
def test_a_new_database_through_a_dangling_symlink_is_the_servers_only(
    tmp_path: Path, umask_022: None,
) -> Gen:
    """A C{--db} symlink to a file not made yet: the file it points to is
    made 0600, its write-ahead log too (rr22-l 1: the exclusive create
    failed on the link itself, and SQLite then made the target 0644)."""
    real = tmp_path / "real" / "chat.sqlite3"
    real.parent.mkdir()
    link = tmp_path / "chat.sqlite3"
    link.symlink_to(real)
    store = SQLiteStore.open(str(link), reactor)
    try:
        store.append(Entry(T0, "alice", "hi"))
        yield timeout(store.flush())
        made = sorted(p.name for p in real.parent.iterdir())
        assert made == ["chat.sqlite3", "chat.sqlite3-wal"], made
        for name in made:
            assert stat.S_IMODE((real.parent / name).stat().st_mode) == 0o600, name
        assert link.is_symlink()
    finally:
        yield timeout(store.close())


def test_an_existing_database_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    """The operator's choice (0640, for a backup group) stays."""
    path = tmp_path / "chat.sqlite3"
    SQLiteStore.check(str(path))
    path.chmod(0o640)
    SQLiteStore.check(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest_twisted.inlineCallbacks
def test_ids_keep_increasing_after_everything_is_pruned(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    fill(store, entries(3))
    yield timeout(store.close())
    # Keep 1 day; every row is 30 days old.
    pruned = SQLiteStore.open(str(path), FixedClock(T0 + 30 * 86400), retain_days=1)
    assert pruned.recent(10) == []
    pruned.append(Entry(T0 + 30 * 86400, "bob", "new"))
    yield timeout(pruned.flush())
    assert pruned.stored == 1  # 3 counted at the start, pruned by age; 1 written
    yield timeout(pruned.close())
    assert rows(path) == [(4, T0 + 30 * 86400, "bob", "new")]


@pytest_twisted.inlineCallbacks
def test_memory_keeps_nothing_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gen:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore.open(":memory:", reactor)
    written = entries(5)
    fill(store, written)
    yield timeout(store.flush())
    assert store.recent(3) == written[-3:]
    yield timeout(store.close())
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.inlineCallbacks
def test_append_after_close_is_dropped_not_raised(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    yield timeout(store.close())
    store.append(Entry(T0, "late", "too late"))
    yield timeout(store.flush())
    yield timeout(store.close())  # a second close is harmless
    assert rows(path) == []


# -- schema versions ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_upgrade_from_version_1(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    old = entries(4)
    make_v1(path, old)
    store = SQLiteStore.open(str(path), reactor)
    assert store.recent(10) == old
    store.append(Entry(T0 + 100, "carol", "after the upgrade"))
    yield timeout(store.close())

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    indexes = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")]
    assert "messages_ts" in indexes
    plan = conn.execute("EXPLAIN QUERY PLAN DELETE FROM messages WHERE ts < 1").fetchall()
    assert "messages_ts" in str(plan)
    conn.close()
    assert [r[0] for r in rows(path)] == [1, 2, 3, 4, 5]
    assert rows(path)[-1][1:] == (T0 + 100, "carol", "after the upgrade")


@pytest_twisted.inlineCallbacks
def test_check_creates_or_upgrades_then_lets_go(tmp_path: Path) -> Gen:
    fresh = tmp_path / "fresh.sqlite3"
    SQLiteStore.check(str(fresh))
    assert int.from_bytes(fresh.read_bytes()[68:72], "big") == APPLICATION_ID
    old = tmp_path / "old.sqlite3"
    make_v1(old, entries(2))
    SQLiteStore.check(str(old))
    assert int.from_bytes(old.read_bytes()[60:64], "big") == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.sqlite3", "old.sqlite3"]
    store = SQLiteStore.open(str(old), reactor)  # nothing still holds it
    assert store.recent(5) == entries(2)
    with pytest.raises(StoreError, match="already open"):
        SQLiteStore.check(str(old))
    yield timeout(store.close())
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    with pytest.raises(StoreError, match="not a chat database"):
        SQLiteStore.check(str(notes))
    assert notes.read_text() == "notes\n"
    SQLiteStore.check(":memory:")


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    make_v1(path, entries(2))
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    assert_refused(path, "newer")


def make_v1_with(path: Path, table: str) -> None:
    """A file marked as a version 1 chat database, with C{table} (SQL) as
    its only table: changed by hand."""
    conn = sqlite3.connect(path)
    conn.execute(table)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


def test_a_schema_upgrade_that_fails_is_refused_untouched(tmp_path: Path) -> None:
    """A version 1 file whose table lacks C{ts} (changed by hand): the
    upgrade's index cannot be made, and that is not a permissions problem
    (rr22-l 2: it was refused as "Cannot open"), nor known damage (SQLite's
    generic error: a statement failed)."""
    path = tmp_path / "chat.sqlite3"
    make_v1_with(path, "CREATE TABLE messages (id INTEGER PRIMARY KEY, nick TEXT, text TEXT)")
    assert_refused(path, r"^A statement failed on the chat database .* \(no such column: ts\):"
                         r" its tables are not the ones this server expects \(changed by hand,"
                         r" or another program's file\); restore a backup of it, or give --db"
                         r" another file\.$")


def test_a_chat_database_without_its_message_table_is_refused_untouched(
    tmp_path: Path,
) -> None:
    """Marked as a chat database, but another table in place of its own:
    said as that, not as damage."""
    path = tmp_path / "chat.sqlite3"
    make_v1_with(path, "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    assert_refused(path, r"^The chat database .* has no message table: its tables are not"
                         r" the ones this server expects \(changed by hand, or another"
                         r" program's file\); restore a backup of it, or give --db another"
                         r" file\.$")


# -- files that are not chat databases ----------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"hello, this is a text file\n" * 20, b"SQLite format 3\x00 but too short", b"\x00" * 4096],
    ids=["text", "short", "zeros"],
)
def test_non_sqlite_file_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    assert_refused(path, "not a chat database")
    assert path.read_bytes() == content


@pytest.mark.parametrize("app_id", [0, 0x0F055112])
def test_other_applications_sqlite_file_is_refused_untouched(tmp_path: Path, app_id: int) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO messages (body) VALUES ('theirs')")
    conn.execute(f"PRAGMA application_id={app_id}")
    conn.commit()
    conn.close()
    assert_refused(path, "another application")


@pytest_twisted.inlineCallbacks
def test_an_empty_file_becomes_a_chat_database(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    path.touch()
    store = SQLiteStore.open(str(path), reactor)
    store.append(Entry(T0, "alice", "first"))
    yield timeout(store.close())
    assert rows(path) == [(1, T0, "alice", "first")]


@inlineCallbacks
def _chat_file(path: Path, n: int) -> Gen:
    store = SQLiteStore.open(str(path), reactor)
    for entry in entries(n):
        store.append(Entry(entry.ts, entry.nick, entry.text * 20))
    yield timeout(store.close())


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
@pytest_twisted.inlineCallbacks
def test_corrupt_chat_database_is_refused_untouched(tmp_path: Path, damage: str) -> Gen:
    path = tmp_path / "chat.sqlite3"
    yield _chat_file(path, 2000)
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    if damage == "overwrite":
        data[5 * 4096 : 7 * 4096] = b"\xa5" * (2 * 4096)
    else:
        del data[len(data) // 2 :]
    path.write_bytes(bytes(data))
    assert_refused(path, "corrupt")


CRASHER = textwrap.dedent(
    """
    import os, sys
    from twisted.internet import reactor
    from twisted_chat.server.history import Entry
    from twisted_chat.server.store import SQLiteStore
    store = SQLiteStore.open(sys.argv[1], reactor)
    store._write([Entry(1.0 + i, "alice", "x" * 200) for i in range(3000)])
    store._conn.execute("PRAGMA wal_checkpoint")
    store._write([Entry(5000.0 + i, "bob", f"after {i}") for i in range(100)])
    os._exit(0)  # a crash: the last commits are only in the write-ahead log
    """
)


def crash_leaving_wal(path: Path) -> None:
    subprocess.run([sys.executable, "-c", CRASHER, str(path)], check=True, timeout=60)
    assert (path.parent / (path.name + "-wal")).stat().st_size > 0


@pytest_twisted.inlineCallbacks
def test_crash_leftovers_are_recovered_and_tidied(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    crash_leaving_wal(path)
    store = SQLiteStore.open(str(path), reactor)
    assert store.recent(2) == [Entry(5098.0, "bob", "after 98"), Entry(5099.0, "bob", "after 99")]
    yield timeout(store.close())
    assert len(rows(path)) == 3100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3"]


@pytest_twisted.inlineCallbacks
def test_a_crash_log_beside_a_name_that_is_not_utf8_is_recovered(tmp_path: Path) -> Gen:
    """rev20-ops F3: the read-only look at a crashed database quoted its
    name for the C{file:} URI as UTF-8, a traceback for a Latin-1 byte."""
    path = tmp_path / os.fsdecode(b"caf\xe9.sqlite3")
    crash_leaving_wal(path)
    store = SQLiteStore.open(str(path), reactor)
    assert store.recent(1) == [Entry(5099.0, "bob", "after 99")]
    yield timeout(store.close())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_corrupt_database_with_a_crash_log_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    crash_leaving_wal(path)
    data = bytearray(path.read_bytes())
    data[20 * 4096 : 22 * 4096] = b"\xa5" * (2 * 4096)
    path.write_bytes(bytes(data))
    wal = tmp_path / "chat.sqlite3-wal"
    log = wal.read_bytes()
    assert_refused(path, "corrupt")
    assert wal.read_bytes() == log, "the write-ahead log is kept for recovery"


def test_a_symlinked_corrupt_database_with_a_crash_log_is_refused_untouched(
    tmp_path: Path,
) -> None:
    """rr22-c 2: the leftover -wal was looked for beside the symlink, not
    beside the file SQLite uses, so the read-write connection refused the
    file and then folded the log into it as it closed."""
    real = tmp_path / "real" / "chat.sqlite3"
    real.parent.mkdir()
    crash_leaving_wal(real)
    data = bytearray(real.read_bytes())
    data[20 * 4096 : 22 * 4096] = b"\xa5" * (2 * 4096)
    real.write_bytes(bytes(data))
    wal = tmp_path / "real" / "chat.sqlite3-wal"
    before, log = digest(real), wal.read_bytes()
    link = tmp_path / "chat.sqlite3"
    link.symlink_to(real)
    assert_refused(link, "corrupt")
    assert (digest(real), wal.read_bytes()) == (before, log)
    assert sorted(p.name for p in real.parent.iterdir()) == ["chat.sqlite3", "chat.sqlite3-wal"]


def test_a_shm_that_cannot_be_made_is_named_where_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rr22-g: a symlinked database's -shm is made beside the file it
    points to (as SQLite makes it), and the error names that file, not one
    beside the symlink."""
    real = tmp_path / "real" / "chat.sqlite3"
    real.parent.mkdir()
    crash_leaving_wal(real)
    link = tmp_path / "chat.sqlite3"
    link.symlink_to(real)
    opened = os.open

    def refused(name: str, *args: Any, **kwargs: Any) -> int:
        if str(name).endswith("-shm"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return opened(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(StoreError) as info:
        SQLiteStore.open(str(link), reactor)
    assert str(info.value) == f"Cannot create {os.path.realpath(real)}-shm: Permission denied."


@pytest.mark.parametrize(("code", "said"), [
    (errno.ENOSPC, "The disk of the chat database {shown} is full: free space and start again"),
    (errno.EDQUOT, "The disk quota for the chat database {shown} is exceeded:"
                   " free space or raise the quota and start again"),
], ids=["ENOSPC", "EDQUOT"])
def test_a_shm_refused_for_want_of_room_says_which_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, said: str,
) -> None:
    """A disk quota exceeded is not a full disk: the operator told the disk
    is full finds room on it and looks no further."""
    path = tmp_path / "chat.sqlite3"
    crash_leaving_wal(path)
    opened = os.open

    def refused(name: str, *args: Any, **kwargs: Any) -> int:
        if str(name).endswith("-shm"):
            raise OSError(code, os.strerror(code), name)
        return opened(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(StoreError) as info:
        SQLiteStore.open(str(path), reactor)
    assert str(info.value) == f"{said.format(shown=path)} ({os.strerror(code)})."


OPEN_WITH_NO_ROOM = textwrap.dedent(
    """
    import resource, signal, sys
    from twisted.internet import reactor
    from twisted_chat.server.store import SQLiteStore
    from twisted_chat.server.storefile import StoreError
    # No file may grow past 24 KiB: as on a full disk, the 32 KiB -shm
    # index a reader of a write-ahead log maps cannot be made.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (24 * 1024, resource.RLIM_INFINITY))
    try:
        store = SQLiteStore.open(sys.argv[1], reactor)
    except StoreError as e:
        print(e)
    else:
        print(store.recent(1))
    """
)


def test_a_crash_log_on_a_full_disk_is_opened_and_kept(tmp_path: Path) -> None:
    """
    rev22-attack 1: a shutdown while the disk is full leaves a -wal (its
    messages not yet in the file).  The read-only look at it had to make
    the -shm index, which a full disk refused ("disk I/O error"), and the
    server then called the sound file corrupt.  Now it starts: the
    read-only look maps no -shm, and the server's own connection (in
    exclusive locking mode) never needs one.  The full disk is a limit on
    the size of any file the process writes (RLIMIT_FSIZE).
    """
    path = tmp_path / "chat.sqlite3"
    crash_leaving_wal(path)
    wal = tmp_path / "chat.sqlite3-wal"
    before, log = digest(path), wal.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", OPEN_WITH_NO_ROOM, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.stdout, done.stderr) == (f"{[Entry(5099.0, 'bob', 'after 99')]}\n", "")
    assert (digest(path), wal.read_bytes()) == (before, log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3", "chat.sqlite3-wal"]


def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "chat.sqlite3"
    with pytest.raises(StoreError, match=r"Cannot create .*: No such file") as info:
        SQLiteStore.open(str(missing), reactor)
    assert str(missing) in str(info.value)
    with pytest.raises(StoreError, match="Cannot read") as info:
        SQLiteStore.open(str(tmp_path), reactor)
    assert str(tmp_path) in str(info.value)


def test_empty_path_is_refused() -> None:
    with pytest.raises(StoreError, match="empty"):
        SQLiteStore.open("", reactor)


def test_bad_retain_days() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="retain_days"):
            SQLiteStore.open(":memory:", reactor, retain_days=bad)


# -- one server per file -------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_second_open_in_the_same_process_fails(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    try:
        with pytest.raises(StoreError, match="already open") as info:
            SQLiteStore.open(str(tmp_path / "." / "chat.sqlite3"), reactor)
        assert str(path) in str(info.value)
    finally:
        yield timeout(store.close())
    again = SQLiteStore.open(str(path), reactor)  # free again once closed
    yield timeout(again.close())


HOLDER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted_chat.server.store import SQLiteStore
    store = SQLiteStore.open(sys.argv[1], reactor)
    print("open", flush=True)
    sys.stdin.readline()
    """
)


@pytest_twisted.inlineCallbacks
def test_second_process_on_the_same_file_fails_at_once(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    link = tmp_path / "hard-link.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    store.append(Entry(T0, "alice", "mine"))
    yield timeout(store.close())
    link.hardlink_to(path)

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        for name in (path, link):  # by another name of the same file too
            started = time.monotonic()
            with pytest.raises(StoreError, match="in use by another process") as info:
                SQLiteStore.open(str(name), reactor)
            # Python's sqlite3 waits 5 s for a lock by default: this does not.
            assert time.monotonic() - started < 3.0, "fails at once, no busy wait"
            assert str(name) in str(info.value)
            with pytest.raises(StoreError, match="in use by another process"):
                SQLiteStore.check(str(name))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    store = SQLiteStore.open(str(path), reactor)  # the holder is gone
    assert store.recent(10) == [Entry(T0, "alice", "mine")]
    yield timeout(store.close())


# -- retention -------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_retention_prunes_old_rows_in_the_background(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    day = 86400.0
    store = SQLiteStore.open(str(path), reactor)
    old = [Entry(T0 + i, "old", f"old {i}") for i in range(7)]
    recent = [Entry(T0 + 9 * day + i, "new", f"new {i}") for i in range(3)]
    fill(store, old + recent)
    yield timeout(store.close())

    clock = FixedClock(T0 + 10 * day)

    class Small(SQLiteStore):
        prune_chunk = 2  # several chunks, interleaved with writes

    kept = Small.open(str(path), clock, retain_days=2)
    assert kept.recent(100) == recent, "start-up replay already honours retention"
    for _ in range(5):
        yield timeout(kept.flush())
    yield timeout(kept.close())
    assert [r[3] for r in rows(path)] == ["new 0", "new 1", "new 2"]


# -- failures and slowness ------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_failed_write_is_retried_without_loss_or_duplicates(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"

    class Flaky(SQLiteStore):
        max_retry_delay = 0.01
        failures = 2

        def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
            super()._insert(rows)  # half-done work must be rolled back
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")

    store = Flaky.open(str(path), reactor)
    written = entries(5)
    fill(store, written[:3])
    with pytest.raises(StoreError, match="disk I/O error") as info:
        yield timeout(store.flush())
    assert str(path) in str(info.value)
    fill(store, written[3:])
    with pytest.raises(StoreError):
        yield timeout(store.flush())
    yield timeout(store.flush())
    yield timeout(store.close())
    assert [r[3] for r in rows(path)] == [e.text for e in written]


@pytest_twisted.inlineCallbacks
def test_a_disk_that_keeps_failing_is_retried_with_pauses_and_reported(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"

    class Broken(SQLiteStore):
        max_retry_delay = 0.05  # every retry delay, with this bound
        prune_interval = 0.01  # a prune is nearly always due
        attempts: ClassVar[list[float]] = []  # when each write began
        tried = Calls()

        def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
            self.attempts.append(time.monotonic())
            self.tried.called()
            raise sqlite3.OperationalError("database or disk is full")

    # With retention on, a due prune must not turn the retries into a busy loop.
    store = Broken.open(str(path), reactor, retain_days=30)
    fill(store, entries(3))
    yield Broken.tried.more(5)  # the first write and four retries
    began = list(Broken.attempts)
    gaps = [b - a for a, b in itertools.pairwise(began)]
    # A retry waits the delay from the failure, which came after its write
    # began: a busy machine can make the pauses longer, never shorter.
    assert min(gaps) >= Broken.max_retry_delay - 1e-6, gaps  # (less float rounding)
    with pytest.raises(StoreError, match="disk is full") as info:
        yield timeout(store.close())
    assert str(path) in str(info.value)
    assert rows(path) == []


@pytest_twisted.inlineCallbacks
def test_unstorable_message_does_not_block_the_others(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore.open(str(path), reactor)
    store.append(Entry(T0, "alice", "before"))
    store.append(Entry(T0 + 1, "mallory", "lone surrogate \ud800"))
    store.append(Entry(T0 + 2, "bob", "after"))
    yield timeout(store.flush())
    assert store.stored == 2  # chat_history_messages: the rows that went in
    yield timeout(store.close())
    assert [r[3] for r in rows(path)] == ["before", "after"]


@pytest_twisted.inlineCallbacks
def test_reactor_turns_and_append_returns_while_a_write_is_stuck(tmp_path: Path) -> Gen:
    """
    A write that does not finish (a stalled disk) holds up the writer thread
    alone: meanwhile the reactor turns and C{append} queues.  Fails if writes
    happen on the reactor thread, or if C{append} (or the reactor turn that
    commits) waits for the writer: then nothing releases the stuck write for
    10 s.
    """
    reactor_thread = threading.current_thread()
    writers: set[threading.Thread] = set()
    release = threading.Event()
    released: list[bool] = []  # each write's wait: True if the test ended it
    inside: Deferred[None] = Deferred()

    class Stuck(SQLiteStore):
        def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
            writers.add(threading.current_thread())
            if threading.current_thread() is not reactor_thread:
                if not released:
                    reactor.callFromThread(inside.callback, None)
                released.append(release.wait(10))  # the stuck disk
            super()._insert(rows)

    path = tmp_path / "chat.sqlite3"
    store = Stuck.open(str(path), reactor)
    store.append(Entry(T0, "alice", "message 0"))
    yield timeout(inside)  # the writer is stuck writing message 0
    flushed = store.flush()
    for count in range(1, 101):
        store.append(Entry(T0 + count, "alice", f"message {count}"))
        yield deferLater(reactor, 0, lambda: None)  # a reactor turn
    assert released == [], "the stuck write ended on its own: something waited for it"
    assert store.backlog == 100  # queued behind it
    assert not flushed.called
    release.set()
    yield timeout(flushed)
    yield timeout(store.close())

    assert writers and reactor_thread not in writers
    assert released and all(released), "a write waited 10 s: the reactor waited for it"
    assert [r[3] for r in rows(path)] == [f"message {i}" for i in range(101)]


# -- a failing disk, a vanished file, a bound by count (issue 14.5) ---------------


@pytest.fixture
def logged() -> Generator[list[dict[str, Any]], None, None]:
    """Every log event emitted while the test runs."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        events.append({**event, "text": formatEvent(event)})

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def texts(events: list[dict[str, Any]], level: str | None = None) -> list[str]:
    return [e["text"] for e in events if level is None or e["log_level"].name == level]


@pytest_twisted.inlineCallbacks
def test_a_failing_disk_holds_a_bounded_backlog_and_recovery_is_logged(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> Gen:
    """While writes fail, at most max_backlog messages wait (the oldest are
    dropped, counted and logged); when the disk is back the rest are written
    and the log says so."""
    path = tmp_path / "chat.sqlite3"

    store = FullDisk.open(str(path), reactor, max_backlog=10)
    assert isinstance(store, FullDisk)
    written = entries(30)
    fill(store, written[:5])
    yield failed_write(store)
    fill(store, written[5:])
    yield failed_write(store)  # the writer had them all, put them back
    assert store.backlog == 10
    assert store.shed == 20
    dropped = [t for t in texts(logged, "error") if "backlog is full" in t]
    assert len(dropped) == 1, dropped  # at most one line per interval
    assert "dropped the 1 oldest" in dropped[0]
    store.failing = False
    yield timeout(store.flush())
    recovered = [t for t in texts(logged, "warn") if "written again" in t]
    assert len(recovered) == 1 and "10 waiting lobby message(s) stored, 20 dropped" in (
        recovered[0]), recovered
    yield timeout(store.close())
    assert [r[3] for r in rows(path)] == [e.text for e in written[20:]]


@pytest_twisted.inlineCallbacks
def test_the_dropped_count_never_goes_back_when_the_disk_recovers(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> Gen:
    """C{shed} is exported as the counter chat_history_dropped_total: a
    recovery starts the log's "since the failure began" count again, but
    not it (a counter that went back to 0 between two scrapes would hide
    the loss from an alert on its increase)."""

    class Full(FullDisk):
        drop_report_interval = 0.0

    store = Full.open(str(tmp_path / "chat.sqlite3"), reactor, max_backlog=10)
    assert isinstance(store, Full)
    fill(store, entries(30))
    yield failed_write(store)
    assert store.shed == 20
    store.failing = False
    yield timeout(store.flush())
    assert store.shed == 20  # the disk is back: the total stays
    store.failing = True  # a second failure: 15 more, 5 of them dropped
    fill(store, entries(15, start=30))
    yield failed_write(store)
    assert store.shed == 25
    store.failing = False
    yield timeout(store.flush())
    yield timeout(store.close())
    assert store.shed == 25
    # The log's count is per failure: the second one's lines say 5, not 25.
    recovered = [t for t in texts(logged, "warn") if "written again" in t]
    assert len(recovered) == 2, recovered
    assert "20 dropped" in recovered[0] and "5 dropped" in recovered[1], recovered
    dropped = [t for t in texts(logged, "error") if "backlog is full" in t]
    assert "5 since the failure began" in dropped[-1], dropped


@pytest.mark.parametrize("how", ["file", "directory", "replaced"])
@pytest_twisted.inlineCallbacks
def test_a_database_removed_while_running_is_reported_loudly(
    tmp_path: Path, logged: list[dict[str, Any]], how: str
) -> Gen:
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "chat.sqlite3"

    class Watchful(SQLiteStore):
        path_check_interval = 0.01
        checked = Calls()

        def _check_path(self) -> float:
            due = super()._check_path()
            self.checked.called()  # after what the check logged
            return due

    store = Watchful.open(str(path), reactor)
    fill(store, entries(3))
    yield timeout(store.flush())
    yield Watchful.checked.more(3)
    assert texts(logged, "critical") == []
    if how == "file":
        for leftover in directory.iterdir():
            leftover.unlink()
    elif how == "directory":
        import shutil

        shutil.rmtree(directory)
    else:
        other = tmp_path / "other"
        other.write_bytes(b"")
        other.replace(path)
    yield Watchful.checked.more(5)  # the first may have begun before
    alarms = texts(logged, "critical")
    assert len(alarms) == 1, alarms  # once, not every check
    assert str(path) in alarms[0]
    assert ("replaced" if how == "replaced" else "was deleted") in alarms[0]
    yield timeout(store.close())


@pytest_twisted.inlineCallbacks
def test_max_messages_keeps_only_the_newest(tmp_path: Path) -> Gen:
    path = tmp_path / "chat.sqlite3"

    class Small(SQLiteStore):
        prune_chunk = 30  # several chunks

    store = Small.open(str(path), reactor, max_messages=100)
    written = entries(250)
    fill(store, written)
    for _ in range(10):
        yield timeout(store.flush())
    assert store.recent(1000) == written[150:]
    assert store.stored == 100  # chat_history_messages: inserts less the pruned
    yield timeout(store.close())
    assert [r[3] for r in rows(path)] == [e.text for e in written[150:]]
    # Kept at the next start too, before anything is written.
    again = Small.open(str(path), reactor, max_messages=50)
    for _ in range(3):
        yield timeout(again.flush())
    assert again.stored == 50  # counted at the start (100), less the pruned
    yield timeout(again.close())
    assert [r[3] for r in rows(path)] == [e.text for e in written[200:]]
