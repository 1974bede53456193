"""
The accounts file: the single server's accounts in SQLite, with no reactor
in it (docs/accounts.md, "Where accounts live").  The server
(L{twisted_chat.server.accounts.login}) runs everything here on its own
threads through L{SQLiteBook}, and the operator's tool
(C{python -m twisted_chat.accounts}) calls it directly.  The hashes are
made by L{twisted_chat.server.accounts.hashing}; the record and errors
both stores share are in L{twisted_chat.server.accounts.records}.

Where accounts live, and why not in the history database
--------------------------------------------------------
The history store keeps an exclusive SQLite lock on its file for as long as
the server runs (see L{twisted_chat.server.store}): that lock is what makes a
second server on the same file fail at once, and it shuts out every other
program.  Accounts must be changeable by the operator while the server runs,
so they live in a file of their own beside it, the I{accounts file}
(L{accounts_path}: C{chat.sqlite3} -> C{chat.accounts.sqlite3}), and that
file is never held open: every lookup or change opens it, does one short
transaction and closes it.  The file is in SQLite's rollback journal with a
busy timeout, so the server and the tool can both use it at any time (each
waits out the other's short transaction), a read creates no file (it needs
no room on the disk: see L{_leave_wal}), and a change the tool commits is
what the server reads at the very next login, without a restart or a
signal.  The history store's locking stays exactly as it was.

Opening the file per check costs well under a millisecond, next to the
50 ms the password hash takes on purpose.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer

from twisted_chat.server.accounts.fileaccess import access_problem
from twisted_chat.server.accounts.records import (
    Account,
    AccountExists,
    AccountsFull,
    AccountStoreError,
    NoSuchAccount,
    PasswordChanged,
)
from twisted_chat.server.config import MEMORY
from twisted_chat.wire import is_valid_nick, nick_key

__all__ = [
    "AccountStore",
    "SQLiteBook",
    "accounts_path",
]


#: C{PRAGMA application_id} of an accounts file: "CHAC" in ASCII.
APPLICATION_ID = 0x43484143
SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE accounts ("
    " key TEXT PRIMARY KEY,"  # the nick without regard to case
    " nick TEXT NOT NULL,"
    " hash TEXT NOT NULL,"
    " created REAL NOT NULL,"
    " changed REAL NOT NULL)"
)
# Why a file this store knows cannot be used (AccountStore).
GONE = ("it is gone (moved or deleted since the server saw it): no login with a password, "
        "and no REGISTER, until it is back")
EMPTIED = ("it has no accounts table (emptied since it was seen as an accounts file?): no "
           "login with a password, and no REGISTER, until it is restored")


def _leave_wal(conn: sqlite3.Connection) -> None:
    """
    Take a file out of WAL mode (files made before used it), best effort:
    in WAL mode, the first connection after the last one closed must create
    the C{-wal} and C{-shm} files, so on a full disk nobody could even be
    looked up; in the rollback journal a read creates no file.  Changing
    needs the file to itself: when another process has it open, left for
    a later connection.
    """
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError:
        pass


def _roll_back(conn: sqlite3.Connection) -> None:
    """
    End the transaction a failure cut short, if SQLite has not: on a full
    disk or an I/O error it rolls back by itself, and a ROLLBACK then raises
    "no transaction is active", which would hide the error that said why.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _denied(e: BaseException | str) -> bool:
    """Whether C{e} may come from a file's or a folder's permissions."""
    if isinstance(e, PermissionError):
        return True
    return isinstance(e, sqlite3.OperationalError) and str(e) in (
        "unable to open database file", "attempt to write a readonly database")


def accounts_path(db: str) -> str:
    """
    The accounts file that goes with the history database C{db}:
    C{chat.sqlite3} -> C{chat.accounts.sqlite3}; C{:memory:} stays in memory.
    """
    if db == MEMORY:
        return MEMORY
    head, tail = os.path.split(db)
    stem, dot, ext = tail.rpartition(".")
    name = f"{stem}.accounts.{ext}" if dot and stem else f"{tail}.accounts"
    return os.path.join(head, name)


class AccountStore:
    """
    Accounts in an SQLite file that is opened for each operation and closed
    right after (see the module's docstring), so that any number of processes
    may use it; safe to call from any thread.  C{:memory:} keeps them in one
    in-process connection instead (gone when the server stops).

    A store that has not seen its file yet reads a missing or empty one as
    "no accounts yet" (the operator's tool before the first C{add}; a
    server's first start, whose L{check} makes it).  Once it has seen the
    file as an accounts file (L{check}, or any operation), the file must
    stay one: gone, out of reach, emptied or replaced by something else, it
    is an L{AccountStoreError} for every operation, never "no accounts", so
    the server fails closed (see docs/accounts.md, "Where accounts live":
    when the file cannot be used).
    """

    busy_timeout = 5.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._memory: sqlite3.Connection | None = None
        self._memory_lock = threading.Lock()
        # Whether this store has seen the file with an accounts file's header.
        self.known = False
        self._made = False  # whether it gave the file its schema
        if path == MEMORY:
            self._memory = sqlite3.connect(MEMORY, check_same_thread=False)
            self._memory.execute(_SCHEMA)
            self.known = True

    @classmethod
    def for_db(cls, db: str) -> AccountStore:
        """The accounts of the server whose history is C{db} (L{accounts_path})."""
        return cls(accounts_path(db))

    def _fail(self, what: str, e: BaseException | str) -> AccountStoreError:
        said = f"cannot {what} accounts file {self.path!r}: {e}"
        if _denied(e):
            # SQLite's "unable to open database file" says nothing of why:
            # most often, the file (made by root's tool before the first
            # start) or its folder is not the server's user's.
            problem = access_problem(self.path)
            if problem is not None:
                said = f"{said} ({problem})"
        return AccountStoreError(said)

    def _connect(self) -> sqlite3.Connection:
        """A connection to the file, which must exist: C{mode=rw} never
        creates it (a seam for tests)."""
        # The path's own bytes (os.fsencode): a name that is not UTF-8 is
        # kept, where quote(str) would encode it as UTF-8 and fail.
        uri = "file:" + urllib.parse.quote(os.fsencode(self.path)) + "?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)

    def missing(self) -> bool:
        """
        Whether the file is not there (only ENOENT: a file that cannot be
        looked at, EACCES on its folder, is not a missing file).

        @raise AccountStoreError: it cannot be looked at.
        """
        try:
            os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError as e:
            raise self._fail("reach", e) from None
        return False

    @contextlib.contextmanager
    def _transaction(
        self, *, create: bool, write: bool
    ) -> Iterator[sqlite3.Connection | None]:
        """
        One short transaction on a fresh connection (C{None}: no accounts
        yet, a file this store never saw is missing or empty, and C{create}
        is false).
        """
        if self._memory is not None:
            with self._memory_lock, self._memory:
                yield self._memory
            return
        if self.missing():
            if self.known:
                raise self._fail("use", GONE)
            if not create:
                yield None
                return
            try:
                # Only the server's user may read the hashes.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as e:
                raise self._fail("create", e) from None
        try:
            conn = self._connect()
        except sqlite3.Error as e:
            raise self._fail("open", e) from None
        try:
            try:
                usable = self._prepare(conn, create)
                if usable:
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.DatabaseError as e:
                raise self._fail("use", e) from None
            if not usable:
                yield None
                return
            try:
                yield conn
            except BaseException:
                _roll_back(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._fail("write", e) from None
        finally:
            conn.close()

    def _prepare(self, conn: sqlite3.Connection, create: bool) -> bool:
        """
        Check the file is an accounts file (then this store knows it); give
        an empty one the schema if C{create}.  False: an empty file this
        store never saw, read without C{create} (no accounts yet).
        """
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
            self.known = True
            _leave_wal(conn)
            return True
        if app_id == APPLICATION_ID:
            raise sqlite3.DatabaseError(f"schema version {version} is not {SCHEMA_VERSION}")
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != 0 or tables:
            raise sqlite3.DatabaseError("it is not a twisted-chat accounts file")
        if self.known:
            raise sqlite3.DatabaseError(EMPTIED)
        if not create:
            return False
        # A new file, in the default rollback journal (see _leave_wal).
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._made = True
            conn.execute("COMMIT")
        except BaseException:
            _roll_back(conn)
            raise
        self.known = True
        return True

    def _run(
        self,
        what: str,
        create: bool,
        work: Callable[[sqlite3.Connection], Any],
        *,
        write: bool = False,
    ) -> Any:
        with self._transaction(create=create, write=write) as conn:
            if conn is None:
                return None
            try:
                return work(conn)
            except sqlite3.Error as e:
                raise self._fail(what, e) from None

    # -- the operations ----------------------------------------------------

    def check(self) -> bool:
        """Create the file if need be and check that it can be used: whether
        it was made now (there was none, or an empty one: no accounts yet)."""
        known = self.known
        self._run("open", True, lambda conn: None, write=True)
        return not known and self._made


    def get(self, nick: str) -> Account | None:
        def work(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT nick, hash, created, changed FROM accounts WHERE key = ?",
                (nick_key(nick),),
            ).fetchone()
            return Account(*row) if row is not None else None

        result: Account | None = self._run("read", False, work)
        return result

    def exists(self, nick: str) -> bool:
        return self.get(nick) is not None

    def add(self, nick: str, password_hash: str, most: int | None = None) -> None:
        """
        @param most: refuse it if there are this many accounts already
            (C{None}: no bound; the operator's tool).
        @raise AccountExists: the nick (in any case) has an account.
        @raise AccountsFull: there are C{most} accounts (or more) already.
        """
        if not is_valid_nick(nick):
            raise ValueError(f"{nick!r} is not a valid nick")
        now = time.time()

        def work(conn: sqlite3.Connection) -> None:
            # Counted in the write transaction: no other writer meanwhile.
            if most is not None and self._count(conn) >= most:
                if _has(conn, nick):
                    raise AccountExists(nick)
                raise AccountsFull(nick)
            try:
                conn.execute(
                    "INSERT INTO accounts (key, nick, hash, created, changed)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (nick_key(nick), nick, password_hash, now, now),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(nick) from None

        self._run("write", True, work, write=True)

    @staticmethod
    def _count(conn: sqlite3.Connection) -> int:
        count: int = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
        return count

    def count(self) -> int:
        """How many accounts there are."""
        return self._run("read", False, self._count) or 0

    def set_hash(self, nick: str, password_hash: str, expected: str | None = None) -> None:
        """
        @param expected: change it only if this is the account's hash now
            (the one its user proved; C{None}: whatever it is, the tool).
        @raise NoSuchAccount: the nick has no account.
        @raise PasswordChanged: its hash is not C{expected}.
        """

        def work(conn: sqlite3.Connection) -> bool:
            key = nick_key(nick)
            if expected is None:
                cursor = conn.execute(
                    "UPDATE accounts SET hash = ?, changed = ? WHERE key = ?",
                    (password_hash, time.time(), key),
                )
            else:
                cursor = conn.execute(
                    "UPDATE accounts SET hash = ?, changed = ? WHERE key = ? AND hash = ?",
                    (password_hash, time.time(), key, expected),
                )
                if cursor.rowcount == 0 and _has(conn, nick):
                    raise PasswordChanged(nick)
            return cursor.rowcount > 0

        if not self._run("write", False, work, write=True):
            raise NoSuchAccount(nick)

    def remove(self, nick: str) -> None:
        """@raise NoSuchAccount: the nick has no account."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM accounts WHERE key = ?", (nick_key(nick),))
            return cursor.rowcount > 0

        if not self._run("write", False, work, write=True):
            raise NoSuchAccount(nick)

    def list(self) -> list[Account]:
        def work(conn: sqlite3.Connection) -> list[Account]:
            rows = conn.execute(
                "SELECT nick, hash, created, changed FROM accounts ORDER BY key"
            ).fetchall()
            return [Account(*row) for row in rows]

        return self._run("read", False, work) or []


def _has(conn: sqlite3.Connection, nick: str) -> bool:
    row = conn.execute("SELECT 1 FROM accounts WHERE key = ?", (nick_key(nick),)).fetchone()
    return row is not None


# -- the server's view of a store ------------------------------------------------


class SQLiteBook:
    """
    An L{AccountStore} as an L{AccountBook}: each call runs through C{run}
    (the server's accounts-file threads, beside the password threads: these
    quick file operations never wait behind a hash, nor count against the
    hashes' bound; the operator's tool runs them inline).
    """

    #: One server: its protocol has no C{RETRY unavailable}.
    retry_unavailable = False

    def __init__(self, store: AccountStore, run: Callable[..., defer.Deferred[Any]]) -> None:
        self.store = store
        self._run = run

    def get(self, nick: str) -> defer.Deferred[Account | None]:
        return self._run(self.store.get, nick)

    def add(
        self, nick: str, password_hash: str, most: int | None = None
    ) -> defer.Deferred[None]:
        return self._run(self.store.add, nick, password_hash, most)

    def set_hash(
        self, nick: str, password_hash: str, expected: str | None = None
    ) -> defer.Deferred[None]:
        return self._run(self.store.set_hash, nick, password_hash, expected)

    def remove(self, nick: str) -> defer.Deferred[None]:
        return self._run(self.store.remove, nick)

    def list(self) -> defer.Deferred[list[Account]]:
        return self._run(self.store.list)
