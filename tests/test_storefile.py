"""
Unit tests of L{twisted_chat.server.storefile}'s start-up refusals: what an
SQLite error met while opening the chat database is called.  The files
themselves (corrupt, in use, crashed, on a full disk) are in
tests/test_store.py and tests/test_e2e_history.py.
"""

from __future__ import annotations

import sqlite3

import pytest

from twisted_chat.server.storefile import StoreError, _refusal

SHOWN = "/srv/chat/chat.sqlite3"


def said(code: int, text: str) -> str:
    """The refusal for an SQLite error of result code C{code} and text C{text}."""
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # as SQLite sets it on the errors it raises
    refusal = _refusal(error, SHOWN)
    assert isinstance(refusal, StoreError)
    assert SHOWN in str(refusal)
    return str(refusal)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (sqlite3.SQLITE_FULL, "database or disk is full"),
        # A full disk stops SQLite making the -shm index it maps: what the
        # review's restart on a full disk got, and called corrupt.
        (sqlite3.SQLITE_IOERR_SHMSIZE, "disk I/O error"),
        (sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"),
    ],
    ids=["full", "shm-size", "write"],
)
def test_a_full_disk_or_an_io_error_is_not_called_corrupt(code: int, text: str) -> None:
    """docs/history.md tells a corrupt file's owner to restore a backup,
    which would throw away what the -wal holds."""
    refusal = said(code, text)
    assert "corrupt" not in refusal
    assert "Free space" in refusal or "free space" in refusal
    assert text in refusal


def test_an_io_error_names_a_disk_quota_among_its_causes() -> None:
    """SQLite calls only ENOSPC full: a disk quota exceeded (EDQUOT) is
    "disk I/O error" to it, so the hint names the quota beside the full
    disk."""
    refusal = said(sqlite3.SQLITE_IOERR_WRITE, "disk I/O error")
    assert refusal.endswith(
        " is its disk full, over its quota or failing? Free space, raise the quota"
        " or mend the disk and start again."), refusal


def test_a_full_disk_says_so_and_what_to_do() -> None:
    assert said(sqlite3.SQLITE_FULL, "database or disk is full") == (
        f"The disk of the chat database {SHOWN} is full: free space and start again"
        " (database or disk is full)."
    )


@pytest.mark.parametrize(
    ("code", "text", "meant"),
    [
        (sqlite3.SQLITE_CORRUPT, "database disk image is malformed", "is corrupt"),
        (sqlite3.SQLITE_NOTADB, "file is not a database", "is corrupt"),
        (sqlite3.SQLITE_BUSY, "database is locked", "in use by another process"),
        (sqlite3.SQLITE_BUSY_RECOVERY, "database is locked", "in use by another process"),
        (sqlite3.SQLITE_LOCKED, "database table is locked", "in use by another process"),
        (sqlite3.SQLITE_CANTOPEN, "unable to open database file", "Cannot open"),
        # A file SQLite finds sound whose tables are not what the schema
        # upgrade expects: not a directory or permissions problem.
        (sqlite3.SQLITE_ERROR, "no such column: ts",
         f"A statement failed on the chat database {SHOWN} (no such column: ts): its tables"
         " are not the ones this server expects (changed by hand, or another program's"
         " file); restore a backup of it, or give --db another file."),
    ],
)
def test_each_refusal_is_told_by_its_code(code: int, text: str, meant: str) -> None:
    assert meant in said(code, text)


def test_sqlite_error_is_not_called_damage() -> None:
    """SQLITE_ERROR is SQLite's generic error ("no such table" too): a
    statement failed, which says nothing of the file being damaged."""
    refusal = said(sqlite3.SQLITE_ERROR, "no such table: messages")
    assert "damaged" not in refusal and "corrupt" not in refusal
    assert "(no such table: messages)" in refusal
    assert refusal.endswith("; restore a backup of it, or give --db another file.")


def test_the_code_decides_not_the_english_text() -> None:
    """SQLite's texts are not an interface (and "locked" is in several)."""
    assert "corrupt" in said(sqlite3.SQLITE_CORRUPT, "database table is locked")
    assert "in use" not in said(sqlite3.SQLITE_IOERR, "database is locked")
    assert "corrupt" not in said(sqlite3.SQLITE_FULL, "database disk image is malformed")


def test_an_error_not_from_sqlite_is_left_as_it_is() -> None:
    """Not a database's refusal: a bug, with its traceback."""
    error = sqlite3.ProgrammingError("Cannot operate on a closed database.")
    assert _refusal(error, SHOWN) is error
    other = ValueError("x")
    assert _refusal(other, SHOWN) is other
