"""
What a chat database file is, and how one is opened (docs/history.md): the
checks before and while SQLite opens it (one open per file in a process,
the header's L{APPLICATION_ID}, integrity, the schema version), the lock it
keeps, and the schema with its upgrades.  The store
(L{twisted_chat.server.store.SQLiteStore}) opens its file through
L{open_file}.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import urllib.parse

from twisted_chat.server import logs

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "StoreError", "create", "identity",
           "open_file", "release"]

#: C{PRAGMA application_id} of every chat database: "CHAT" in ASCII.
APPLICATION_ID = 0x43484154

#: The schema this code writes.  History:
#:   1. table C{messages(id, ts, nick, text)}, C{id} an AUTOINCREMENT key.
#:   2. adds the index C{messages_ts} so retention pruning does not scan.
SCHEMA_VERSION = 2

_SCHEMA_V1 = (
    "CREATE TABLE messages ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"  # never reused, even after pruning
    " ts REAL NOT NULL,"  # POSIX seconds
    " nick TEXT NOT NULL,"
    " text TEXT NOT NULL)"
)

#: Statements that take schema version C{k} to C{k + 1}.  A new file is
#: created as version 1 and then upgraded, so the upgrade path always runs.
_UPGRADES: dict[int, tuple[str, ...]] = {
    1: ("CREATE INDEX messages_ts ON messages (ts)",),
}

_SQLITE_MAGIC = b"SQLite format 3\x00"

# The lines a schema upgrade logs, under the store's namespace as always.
_log = logs.logger("twisted_chat.server.store")

# Paths (resolved) with an open store in this process.  SQLite's file locks
# are per process, and reading a locked file's header with a plain open() and
# close() would drop them, so a second open in the same process is refused
# before that can happen.
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


class StoreError(Exception):
    """Start-up failure; C{str()} is one clear sentence naming the file."""


#: The end of a refusal of a file whose tables are not a chat database's:
#: said as known, without calling it damaged (SQLite does not).
_NOT_ITS_TABLES = ("its tables are not the ones this server expects (changed by hand,"
                   " or another program's file); restore a backup of it, or give --db"
                   " another file.")
#: The start of the refusal for a full disk (L{_refusal}).
_NO_ROOM = "The disk of the chat database {shown} is full: free space and start again"
#: The start of the refusal for a disk quota exceeded (C{EDQUOT}): the disk
#: may have room, and the operator who looks for none is misled.
_NO_QUOTA = ("The disk quota for the chat database {shown} is exceeded:"
             " free space or raise the quota and start again")


def identity(path: str) -> tuple[int, int]:
    """Which file is at C{path} now (device, inode)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def open_file(path: str) -> tuple[sqlite3.Connection, str, str]:
    """The locked, checked connection; the path to show; the claim to release."""
    if not path:
        raise StoreError("The chat database path is empty (use :memory: to keep nothing).")
    shown = os.path.abspath(path)
    claim = os.path.realpath(path)
    with _open_paths_lock:
        if claim in _open_paths:
            raise StoreError(f"The chat database {shown} is already open in this process.")
        _open_paths.add(claim)
    try:
        _sniff(path, shown)
        return _connect(path, shown), shown, claim
    except BaseException:
        release(claim)
        raise


def release(claim: str) -> None:
    with _open_paths_lock:
        _open_paths.discard(claim)


def _sniff(path: str, shown: str) -> None:
    """Reject a file that is not a chat database before SQLite opens it."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"Cannot read the chat database {shown}: {e.strerror}.") from e
    if not header:
        return  # an empty file: a new database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(
            f"{shown} is not a chat database: it is not an SQLite file (wrong path, or corrupt)."
        )
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise StoreError(
            f"{shown} is not a chat database: it is an SQLite database of another application."
        )


def _refusal(e: BaseException, shown: str) -> BaseException:
    """
    The L{StoreError} for an SQLite error met while opening C{shown}, told
    by SQLite's result code, not its English text: only a file SQLite
    calls corrupt (C{SQLITE_CORRUPT}, C{SQLITE_NOTADB}) is said to be one.
    C{SQLITE_ERROR} is SQLite's generic error: all that is known is that a
    statement failed on this file (a schema upgrade meeting tables changed
    by hand, another program's file), not that it is damaged.
    A full disk or an I/O error says so (docs/history.md, "Start-up
    errors": restoring a backup would throw away what the C{-wal} holds).
    SQLite calls only C{ENOSPC} full: to it a disk quota exceeded
    (C{EDQUOT}) is an I/O error, whose refusal so names the quota too.
    """
    code = getattr(e, "sqlite_errorcode", None)
    if not isinstance(e, sqlite3.DatabaseError) or code is None:
        return e  # not SQLite's answer: a bug, with its traceback
    code &= 0xFF  # the primary result code of an extended one
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(
            f"The chat database {shown} is in use by another process"
            " (is another chat server running on it?)."
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreError(f"The chat database {shown} is corrupt: {e}.")
    if code == sqlite3.SQLITE_ERROR:
        return StoreError(f"A statement failed on the chat database {shown} ({e}):"
                          f" {_NOT_ITS_TABLES}")
    if code == sqlite3.SQLITE_FULL:
        return StoreError(f"{_NO_ROOM.format(shown=shown)} ({e}).")
    if code == sqlite3.SQLITE_IOERR:
        return StoreError(
            f"The chat database {shown} could not be read or written ({e}):"
            " is its disk full, over its quota or failing? Free space, raise the quota"
            " or mend the disk and start again."
        )
    return StoreError(f"Cannot open the chat database {shown}: {e}.")


def _inspect_read_only(path: str, shown: str) -> None:
    """
    Check a chat database that a crash (or a shutdown on a full disk) left
    with a write-ahead log, without changing it: a read-write connection
    that refused it would still fold the log into the file when it closed.

    The reader writes nothing, so that a full disk does not stop it: it
    opens the C{-shm} index read-only (SQLite's C{readonly_shm} URI
    parameter) and so reads the log into its own memory.  Where there is no
    C{-shm}, it gets an empty one (no room needed), removed after.
    C{path} is the file itself (a symlink's target): SQLite keeps the
    C{-wal} and C{-shm} beside it.
    """
    shm = path + "-shm"
    try:
        os.close(os.open(shm, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        _check_read_only(path, shown)
        return
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = _NO_ROOM if e.errno == errno.ENOSPC else _NO_QUOTA
            raise StoreError(f"{why.format(shown=shown)} ({e.strerror}).") from e
        raise StoreError(f"Cannot create {shm}: {e.strerror}.") from e
    try:
        _check_read_only(path, shown)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(shm)


def _check_read_only(path: str, shown: str) -> None:
    uri = ("file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))
           + "?mode=ro&readonly_shm=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return  # the read-write open reports what is wrong
    try:
        conn.execute("BEGIN")  # one consistent snapshot for all the checks
        _check(conn, shown)
    except sqlite3.Error as e:
        raise _refusal(e, shown) from e
    finally:
        conn.close()


def _connect(path: str, shown: str) -> sqlite3.Connection:
    """Open, lock, check and create or upgrade the database at C{path}."""
    # SQLite keeps the -wal and -shm beside the file a symlink points to.
    real = os.path.realpath(path)
    try:
        crashed = os.path.getsize(real + "-wal") > 0
    except OSError:
        crashed = False
    if crashed:
        _inspect_read_only(real, shown)
    _create_private(real, shown)  # a dangling symlink's target too
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"Cannot open the chat database {shown}: {e}.") from e
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")  # the lock, kept until the connection closes
        version = _check(conn, shown)
        if version == 0:
            create(conn)
        else:
            for v in range(version, SCHEMA_VERSION):
                _upgrade(conn, v)
            if version < SCHEMA_VERSION:
                _log.info(
                    "Upgraded the chat database {name} from schema {old} to {new}.",
                    name=shown,
                    old=version,
                    new=SCHEMA_VERSION,
                )
        conn.execute("COMMIT")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                f"The chat database {shown} cannot use write-ahead logging"
                f" (journal mode stays {mode!r})."
            )
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException as e:
        conn.close()
        refusal = _refusal(e, shown)
        if refusal is e:
            raise
        raise refusal from e
    return conn


def _create_private(path: str, shown: str) -> None:
    """
    Make a new database file readable and writable by the server's user
    only (0600), whatever the umask: it keeps the lobby's messages, and
    C{twistd -n} keeps the shell's umask (often 022), where a daemon gets
    077.  SQLite gives the C{-wal} and C{-shm} files it makes beside it the
    same mode.  An existing file keeps the mode it has.  C{path} is the
    file itself (a symlink's target): the exclusive create fails on any
    symlink, and SQLite would then make a missing target with the umask's.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    except OSError as e:
        raise StoreError(f"Cannot create the chat database {shown}: {e.strerror}.") from e


def _check(conn: sqlite3.Connection, shown: str) -> int:
    """The schema version of the database, 0 for an empty one to create."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and version == 0 and objects == 0:
        return 0
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"{shown} is not a chat database: it is an SQLite database of another application."
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The chat database {shown} has schema version {version}, from a newer"
            f" twisted-chat; this one knows up to version {SCHEMA_VERSION}."
        )
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreError(f"The chat database {shown} is corrupt: {'; '.join(problems)}.")
    has_table = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
    ).fetchone()[0]
    if version < 1 or not has_table:
        raise StoreError(f"The chat database {shown} has no message table: {_NOT_ITS_TABLES}")
    return int(version)


def create(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(_SCHEMA_V1)
    conn.execute("PRAGMA user_version=1")
    for v in range(1, SCHEMA_VERSION):
        _upgrade(conn, v)


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    for statement in _UPGRADES[version]:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version={version + 1}")
