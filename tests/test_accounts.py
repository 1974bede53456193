"""
The accounts store, the password hash, the twisted.cred checker and portal,
the failure limiter and the password threads (twisted_chat.server.accounts.store,
.hashing, .cred, .login, .loginlimits, .passwordwork).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from twisted_chat.server.accounts import cred, hashing
from twisted_chat.server.accounts.cred import AccountChecker, IAccount, portal
from twisted_chat.server.accounts.hashing import (
    hash_password,
    password_bytes,
    password_problem,
    verify_password,
)
from twisted_chat.server.accounts.login import Accounts
from twisted_chat.server.accounts.loginlimits import FailureLimiter, LoginLimits
from twisted_chat.server.accounts.passwordwork import PasswordWork, WorkBusy
from twisted_chat.server.accounts.records import (
    AccountExists,
    AccountsFull,
    AccountStoreError,
    NoSuchAccount,
    PasswordChanged,
)
from twisted_chat.server.accounts.store import AccountStore, SQLiteBook, accounts_path
from twisted_chat.server.config import Mode
from twisted_chat.server.limits.addresses import networks
from twisted_chat.wire import PASSWORD_MAX_BYTES

# Cheap parameters for tests that hash many times (the format carries them).
FAST = dict(n=2**4, r=1, p=1)


def inline(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.execute(f, *args)


# -- passwords -------------------------------------------------------------


def test_hash_is_salted_scrypt_and_verifies() -> None:
    one = hash_password(b"correct horse")
    two = hash_password(b"correct horse")
    assert one != two  # a fresh salt each time
    scheme, n, r, p, _salt, _key = one.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert b"correct horse" not in one.encode()
    assert verify_password(b"correct horse", one)
    assert verify_password(b"correct horse", two)
    assert not verify_password(b"correct horsE", one)
    assert not verify_password(b"", one)


def test_the_documented_hash_parameters_are_the_ones_stored() -> None:
    """docs/accounts.md states the parameters each hash is stored with, and
    that they are below OWASP's minimum (it once said they were OWASP's)."""
    text = (Path(__file__).parent.parent / "docs" / "accounts.md").read_text()
    n, r, p = hash_password(b"correct horse").split("$")[1:4]
    assert int(n) == hashing.SCRYPT_N
    stated = f"N=2^{int(n).bit_length() - 1}, r={r}, p={p}"
    assert f"16-byte random salt per password, {stated} (16 MiB" in text
    assert f"**The cost is below OWASP's minimum, on purpose.** {stated} are" in text
    assert "OWASP give" not in (hashing.__doc__ or "")


@pytest.mark.parametrize("bad", ["", "scrypt$1$2", "md5$a$b$c$d$e", "scrypt$x$8$1$AA==$AA=="])
def test_malformed_hash_never_matches(bad: str) -> None:
    assert not verify_password(b"whatever1", bad)


def test_password_length_rule_counts_bytes() -> None:
    assert password_problem(b"1234567") is not None
    assert password_problem(b"12345678") is None
    assert password_problem("éééé".encode()) is None  # 4 characters, 8 bytes
    assert password_problem(b"x" * 256) is None
    assert password_problem(b"x" * 257) is not None


# NFC's greatest shrink of UTF-8: 7 bytes that are one 2-byte character.
MOST_SHRUNK = "\u1fbe\u0308\u0301"


def test_a_line_too_long_for_a_password_is_not_normalised() -> None:
    """rr22-c 1: NFC of a whole over-long line (combining marks out of
    order: quadratic) ran on the reactor before the length rule.  Past 4
    times the longest password (NFC shrinks UTF-8 at most 3.5 times) the
    line is taken as typed, and is refused as before."""
    assert unicodedata.normalize("NFC", MOST_SHRUNK) == "\u0390"
    longest = MOST_SHRUNK * (4 * PASSWORD_MAX_BYTES // len(MOST_SHRUNK.encode()))
    assert password_problem(password_bytes(longest)) is not None
    normalised: list[str] = []
    real = unicodedata.normalize

    def normalize(form: Any, text: str) -> str:
        normalised.append(text)
        return real(form, text)

    flood = "\u0345\u0316" * (PASSWORD_MAX_BYTES + 1)  # 4 * 256 + 4 bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unicodedata, "normalize", normalize)
        assert password_bytes(flood) == flood.encode()
        assert normalised == []
        assert password_bytes(longest) == real("NFC", longest).encode()
        assert normalised == [longest]
    assert password_problem(password_bytes(flood)) is not None


# -- the store ---------------------------------------------------------------


def test_accounts_path_is_beside_the_database() -> None:
    assert accounts_path("chat.sqlite3") == "chat.accounts.sqlite3"
    assert accounts_path("/var/lib/chat/chat.sqlite3") == "/var/lib/chat/chat.accounts.sqlite3"
    assert accounts_path("data/chatdb") == "data/chatdb.accounts"
    assert accounts_path(".hidden") == ".hidden.accounts"
    assert accounts_path(":memory:") == ":memory:"


@pytest.fixture(params=["file", "memory"])
def store(request: Any, tmp_path: Path) -> AccountStore:
    if request.param == "memory":
        return AccountStore(":memory:")
    return AccountStore(str(tmp_path / "chat.accounts.sqlite3"))


def test_store_add_get_case_insensitive(store: AccountStore) -> None:
    assert store.get("alice") is None
    store.add("AlIcE", "h1")
    account = store.get("alice")
    assert account is not None
    assert (account.nick, account.password_hash) == ("AlIcE", "h1")
    assert store.exists("ALICE")
    with pytest.raises(AccountExists):
        store.add("alice", "h2")
    assert store.get("alice").password_hash == "h1"  # type: ignore[union-attr]


def test_store_set_remove_list(store: AccountStore) -> None:
    with pytest.raises(NoSuchAccount):
        store.set_hash("bob", "x")
    with pytest.raises(NoSuchAccount):
        store.remove("bob")
    store.add("bob", "h1")
    store.add("Alice", "h2")
    store.set_hash("BOB", "h3")
    assert [(a.nick, a.password_hash) for a in store.list()] == [("Alice", "h2"), ("bob", "h3")]
    store.remove("bob")
    assert [a.nick for a in store.list()] == ["Alice"]
    assert store.get("bob") is None


def test_reads_do_not_create_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = AccountStore(str(path))
    assert store.get("alice") is None
    assert store.list() == []
    with pytest.raises(NoSuchAccount):
        store.remove("alice")
    assert not path.exists()


def test_a_file_name_that_is_not_utf8_is_kept(tmp_path: Path) -> None:
    """rev20-ops F3: the C{file:} URI quoted the name as UTF-8, so a
    Latin-1 byte in it (as C{--db} from argv) was a traceback."""
    path = tmp_path / os.fsdecode(b"caf\xe9.accounts.sqlite3")
    store = AccountStore(str(path))
    store.check()
    store.add("alice", "h")
    assert store.exists("alice")
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9.accounts.sqlite3"]


def test_file_is_private_and_held_by_nobody(tmp_path: Path) -> None:
    """
    The design: the file is opened per operation (nothing holds it), in the
    rollback journal (a read creates no file), readable by its owner only;
    another process's change is seen by the next read.
    """
    path = tmp_path / "chat.accounts.sqlite3"
    server = AccountStore(str(path))
    server.check()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    # "The operator's tool", another store on the same file, adds an account:
    # the very next read sees it.
    AccountStore(str(path)).add("alice", "h")
    assert server.exists("alice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.accounts.sqlite3"]
    # Nothing keeps the file open: an exclusive lock can be taken at once.
    probe = sqlite3.connect(path, timeout=0)
    probe.execute("BEGIN EXCLUSIVE")
    probe.rollback()
    probe.close()


_READ_WITH_NO_ROOM = """
import os, resource, signal, sys
from twisted_chat.server.accounts.store import AccountStore
store = AccountStore(sys.argv[1])
# No file may grow past the accounts file's size: as on a full disk, no
# -wal, -shm or -journal can be made.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = os.path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
account = store.get("alice")
print(account.nick if account else None, store.get("carol"))
"""


def _read_with_no_room(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-c", _READ_WITH_NO_ROOM, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_lookups_need_no_room_on_the_disk(tmp_path: Path) -> None:
    """
    On a full disk every login failed, even of nicks with no account: in WAL
    mode, the first connection after the last one closed must create the
    -wal and -shm files (32 KiB), and nothing was left open.  In the
    rollback journal a read creates nothing.  The full disk is a limit on
    the size of any file the reading process writes (RLIMIT_FSIZE).
    """
    path = tmp_path / "chat.accounts.sqlite3"
    store = AccountStore(str(path))
    store.check()
    store.add("Alice", "h")
    done = _read_with_no_room(path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "Alice None\n", "")


_WRITE_WITH_NO_ROOM = """
import resource, signal, sys
from twisted_chat.server.accounts.store import AccountStore
store = AccountStore(sys.argv[1])
# No file may be written at all: a full disk for the rollback journal, so
# SQLite fails the statement and rolls the transaction back by itself.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
new = AccountStore(sys.argv[2])  # an empty file, to be given the schema
for change in (lambda: store.add("Bob", "h"), lambda: store.set_hash("Alice", "k"), new.check):
    try:
        change()
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_a_change_on_a_full_disk_fails_with_the_disks_error(tmp_path: Path) -> None:
    """
    rev22-attack 2: SQLite had already rolled back the failed statement,
    and the store's own ROLLBACK then raised "cannot rollback - no
    transaction is active", which replaced the store's error: the server
    logged that at critical with a traceback, and never the disk's error.
    """
    path = tmp_path / "chat.accounts.sqlite3"
    store = AccountStore(str(path))
    store.check()
    store.add("Alice", "h")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    empty = tmp_path / "new.accounts.sqlite3"
    empty.write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", _WRITE_WITH_NO_ROOM, str(path), str(empty)],
                          env=env, capture_output=True, text=True, timeout=60)
    said = f"AccountStoreError cannot write accounts file {str(path)!r}: disk I/O error\n"
    made = f"AccountStoreError cannot use accounts file {str(empty)!r}: disk I/O error\n"
    assert (done.stdout, done.stderr) == (said * 2 + made, "")
    alice = store.get("alice")  # nothing changed
    assert alice is not None and (alice.nick, alice.password_hash) == ("Alice", "h")
    assert store.get("bob") is None


def test_a_file_made_in_wal_mode_leaves_it(tmp_path: Path) -> None:
    """Files made before were in WAL mode: the next use takes them out of it,
    after which lookups need no room either."""
    path = tmp_path / "chat.accounts.sqlite3"
    AccountStore(str(path)).add("Alice", "h")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    assert "disk I/O error" in _read_with_no_room(path).stderr  # what the review saw
    assert AccountStore(str(path)).exists("alice")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert _read_with_no_room(path).stdout == "Alice None\n"


def test_a_file_never_seen_may_be_missing_or_empty_no_accounts_yet(tmp_path: Path) -> None:
    """Before the first account (the tool's first add; a server's first
    start, whose check makes the file), there are no accounts."""
    path = tmp_path / "chat.accounts.sqlite3"
    assert AccountStore(str(path)).get("alice") is None
    assert not path.exists()
    path.write_bytes(b"")
    assert AccountStore(str(path)).get("alice") is None
    assert AccountStore(str(path)).list() == []
    assert path.read_bytes() == b""  # a read makes no schema
    store = AccountStore(str(path))
    store.add("alice", "h")  # made now
    assert store.exists("alice") and store.known
    # A server's start says whether it made the file (the log says so).
    path.unlink()
    assert AccountStore(str(path)).check() is True
    path.write_bytes(b"")
    assert AccountStore(str(path)).check() is True
    assert AccountStore(str(path)).check() is False
    assert AccountStore(":memory:").check() is False


def _gone(path: Path) -> None:
    path.rename(path.with_name("moved-away"))


def _emptied(path: Path) -> None:
    path.write_bytes(b"")


def _replaced(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")


def _folder_replaced_by_a_file(path: Path) -> None:
    """A stat error other than 'no such file' (ENOTDIR): os.path.exists said
    false for these too."""
    path.parent.rename(path.parent.with_name("moved-away"))
    path.parent.write_bytes(b"")


@pytest.mark.parametrize(("change", "error"), [
    (_gone, "it is gone"),
    (_emptied, "it has no accounts table"),
    (_replaced, "not a twisted-chat accounts file"),
    (_folder_replaced_by_a_file, "cannot reach accounts file"),
])
def test_a_file_once_seen_never_reads_as_no_accounts(
    tmp_path: Path, change: Any, error: str
) -> None:
    """
    A server's store, once it has seen its accounts file, fails every
    operation when the file goes, is emptied or replaced, or cannot be
    looked at: before, it read "no accounts" (every protected nick free
    to anyone), and a REGISTER made a new file.
    """
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "chat.accounts.sqlite3"
    AccountStore(str(path)).add("alice", "h")
    server = AccountStore(str(path))
    server.check()
    assert server.known and server.exists("alice")
    change(path)
    after = sorted(p.name for p in tmp_path.rglob("*"))
    for operation in (lambda: server.get("alice"), lambda: server.add("mallory", "h2"),
                      lambda: server.set_hash("alice", "h2"), server.list, server.count,
                      server.check):
        with pytest.raises(AccountStoreError, match=error):
            operation()
    assert sorted(p.name for p in tmp_path.rglob("*")) == after  # nothing made


def test_a_file_denied_to_the_server_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES on its folder (a wrong chmod; root is never denied, so the
    denial is put in os.stat): an error, not a missing file."""
    path = tmp_path / "chat.accounts.sqlite3"
    server = AccountStore(str(path))
    server.check()
    real = os.stat

    def denied(name: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denied)
    with pytest.raises(AccountStoreError, match=r"cannot reach accounts file .*Permission denied"):
        server.get("alice")
    with pytest.raises(AccountStoreError, match="Permission denied"):
        AccountStore(str(path)).get("alice")  # never seen: still not "missing"


def test_set_hash_expected_is_compared_in_the_change(store: AccountStore) -> None:
    """A PASSWD changes the password only while it is the one its connection
    proved: not once the operator reset it, or removed and re-made the account."""
    store.add("alice", "h1")
    store.set_hash("alice", "h2", expected="h1")
    with pytest.raises(PasswordChanged):
        store.set_hash("ALICE", "h3", expected="h1")
    assert store.get("alice").password_hash == "h2"  # type: ignore[union-attr]
    store.set_hash("alice", "operator", expected=None)  # the tool: whatever it is
    store.remove("alice")
    with pytest.raises(NoSuchAccount):
        store.set_hash("alice", "h4", expected="operator")
    store.add("alice", "new-owner")
    with pytest.raises(PasswordChanged):
        store.set_hash("alice", "h4", expected="operator")
    assert store.get("alice").password_hash == "new-owner"  # type: ignore[union-attr]


def test_not_an_accounts_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(AccountStoreError, match="not a twisted-chat accounts file"):
        AccountStore(str(other)).check()
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AccountStoreError, match="junk"):
        AccountStore(str(junk)).get("alice")


def test_unwritable_place_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AccountStoreError, match="cannot create accounts file"):
        AccountStore(str(tmp_path / "no" / "such" / "dir.sqlite3")).check()


# -- twisted.cred ---------------------------------------------------------------


@pytest.fixture
def cred_store(tmp_path: Path) -> AccountStore:
    store = AccountStore(str(tmp_path / "chat.accounts.sqlite3"))
    store.add("Alice", hash_password(b"sekrit-pw", **FAST))
    return store


def _login(store: AccountStore, nick: str, password: bytes) -> Any:
    p = portal(AccountChecker(SQLiteBook(store, inline), inline))
    d = p.login(UsernamePassword(nick.encode(), password), None, IAccount)
    results: list[Any] = []
    d.addBoth(results.append)
    return results[0]


def test_portal_logs_in_with_right_password(cred_store: AccountStore) -> None:
    interface, avatar, logout = _login(cred_store, "alice", b"sekrit-pw")
    assert interface is IAccount
    assert IAccount.providedBy(avatar)
    assert avatar.nick == "Alice"  # as the account spells it
    # The hash the password was checked against: what the login proved (for PASSWD).
    assert avatar.password_hash == cred_store.get("alice").password_hash  # type: ignore[union-attr]
    logout()


def test_wrong_password_and_no_account_fail_alike(
    cred_store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both check one scrypt hash (a dummy one for no account) and fail the same way."""
    checked: list[str] = []
    real = cred.verify_password

    def spy(password: bytes, encoded: str) -> bool:
        checked.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(cred, "verify_password", spy)
    wrong = _login(cred_store, "alice", b"not-the-pw")
    missing = _login(cred_store, "nobody", b"not-the-pw")
    assert wrong.check(UnauthorizedLogin) and missing.check(UnauthorizedLogin)
    assert str(wrong.value) == str(missing.value)
    assert len(checked) == 2
    assert all(encoded.startswith("scrypt$") for encoded in checked)
    assert checked[1] != cred_store.get("alice").password_hash  # type: ignore[union-attr]
    # The dummy hash has the default (slow) parameters, as real accounts do.
    assert checked[1].split("$")[1:4] == [str(2**14), "8", "1"]


def test_checker_runs_through_the_runner(cred_store: AccountStore) -> None:
    """The file read and the hash run where the runner says, nowhere else."""
    jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def held(f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        jobs.append((f, args, d))
        return d

    checker = AccountChecker(SQLiteBook(cred_store, held), held)
    result: list[Any] = []
    checker.requestAvatarId(UsernamePassword(b"alice", b"sekrit-pw")).addBoth(result.append)
    for _ in ("the file read", "the hash"):
        assert not result and len(jobs) == 1
        f, args, job = jobs.pop()
        job.callback(f(*args))
    assert result == ["Alice"]


# -- the failure limiter -----------------------------------------------------------


def test_limiter_burst_then_one_per_period() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, burst=3, every=60.0)
    for _ in range(3):
        assert limiter.allows("alice")
        limiter.failed("alice")
    assert not limiter.allows("alice")
    assert limiter.allows("bob")
    clock.advance(59.9)
    assert not limiter.allows("alice")
    clock.advance(0.1)
    assert limiter.allows("alice")
    limiter.failed("alice")
    assert not limiter.allows("alice")
    clock.advance(180)
    assert limiter.level("alice") == 0.0


def test_limiter_a_clock_that_went_back_adds_no_failures() -> None:
    """The wall clock stepped back a minute after two failures: the key has
    two failures still, not three (a third would lock it out)."""
    clock = Clock()
    clock.advance(100)
    limiter = FailureLimiter(clock, burst=3, every=60.0)
    limiter.failed("alice")
    limiter.failed("alice")
    clock.advance(-60)
    assert limiter.level("alice") == 2.0
    assert limiter.allows("alice")


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, burst=3, every=1.0, max_keys=100)
    for i in range(1000):
        limiter.failed(f"n{i}")
        clock.advance(0.01)
    assert len(limiter) <= 100
    assert limiter.level("n999") > 0  # the newest are kept


def test_failures_count_per_address_ipv6_by_prefix_exempt_not_at_all() -> None:
    clock = Clock()
    store = AccountStore(":memory:")
    work = PasswordWork(clock)  # never started: nothing runs here
    accounts = Accounts(Mode.REQUIRED, SQLiteBook(store, work.lookup), clock, work,
                        exempt=networks(["192.0.2.0/24"]), v6_prefix=64)
    key = accounts.address_key
    assert key("198.51.100.7") == "198.51.100.7"
    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:ffff::9")
    assert key("2001:db8:1:2::1") != key("2001:db8:1:3::1")
    assert key(None) is None  # a UNIX socket: no address limits (docs/security.md)
    assert key("192.0.2.55") is None  # exempt (a NAT gateway, a bouncer)
    assert accounts.work_key("192.0.2.55") is None  # nor a share of the work
    for i in range(10):
        assert accounts.reserve(f"n{i}", "192.0.2.55") is not None
        assert accounts.reserve(f"n{i}", "198.51.100.7") is not None
    assert accounts.reserve("other", "192.0.2.55") is not None
    assert accounts.reserve("other2", "198.51.100.7") is None
    for _ in range(4):
        assert accounts.reserve("n1", "192.0.2.55") is not None
    # The nick limit still holds: the exempt count as one address for it.
    assert accounts.reserve("n1", "192.0.2.55") is None


def test_unix_socket_users_share_no_address_bucket() -> None:
    """Every UNIX-socket connection was one address ("-", in a cluster one
    Redis key for all nodes): ten wrong guesses by anyone on the socket
    locked every socket user out, the right password too, and nothing
    could exempt it.  Only the per-nick failure limit applies there."""
    clock = Clock()
    work = PasswordWork(clock)
    accounts = Accounts(Mode.OPEN, SQLiteBook(AccountStore(":memory:"), work.lookup),
                        clock, work)
    for i in range(LoginLimits().address_burst * 3):  # a guesser, one guess per nick
        assert accounts.reserve(f"x{i}", None) is not None
    attempt = accounts.reserve("alice", None)
    assert attempt is not None and attempt.address is None
    assert len(accounts.by_address) == 0
    for _ in range(LoginLimits().nick_burst - 1):
        assert accounts.reserve("alice", None) is not None
    assert accounts.reserve("alice", None) is None  # the nick's own limit
    # But the socket's users together have one address's share of the
    # password work and of the new hashes (they lock nobody out).
    assert attempt.work == accounts.work_key(None) == "unix"
    assert accounts.work_key("10.0.0.1") == "10.0.0.1"


def test_a_reserved_failure_given_back_leaves_the_buckets_as_they_were() -> None:
    clock = Clock()
    store = AccountStore(":memory:")
    work = PasswordWork(clock)
    accounts = Accounts(Mode.REQUIRED, SQLiteBook(store, work.lookup), clock, work)
    attempts = [accounts.reserve("alice", "198.51.100.7") for _ in range(5)]
    assert None not in attempts
    assert accounts.reserve("alice", "198.51.100.7") is None  # 5 counted already
    for attempt in attempts:
        assert attempt is not None
        accounts.give_back(attempt)
    assert len(accounts.by_nick) == len(accounts.by_nick_address) == 0
    assert len(accounts.by_address) == 0
    assert accounts.reserve("alice", "198.51.100.7") is not None


# -- the password threads -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_password_work_runs_off_the_reactor_thread_and_is_bounded() -> Any:
    from twisted.internet import reactor

    work = PasswordWork(reactor, threads=2, limit=2)
    work.start()
    try:
        gate = threading.Event()
        first = work.run(gate.wait, 5)
        second = work.run(threading.get_ident)
        assert work.full
        with pytest.raises(WorkBusy):
            work.run(threading.get_ident)
        ident = yield second
        assert ident != threading.get_ident()
        looked_up = yield work.lookup(threading.get_ident)  # never refused
        assert looked_up != threading.get_ident()
        gate.set()
        yield first
        assert work.pending == 0 and not work.full
    finally:
        work.stop()


@pytest_twisted.inlineCallbacks
def test_file_jobs_never_wait_behind_the_hashes() -> Any:
    """A NICK's lookup (and a PASS's read) ran on the hashing threads: with
    both busy and hashes queued behind them, every newcomer waited for the
    queue (1.3 s measured). The file has threads of its own."""
    from twisted.internet import reactor

    work = PasswordWork(reactor, threads=2, limit=8)
    work.start()
    gate = threading.Event()
    try:
        busy = [work.run(gate.wait, 10) for _ in range(4)]  # two running, two queued
        looked_up = work.lookup(threading.get_ident)
        looked_up.addTimeout(5, reactor)
        ident = yield looked_up  # while every hash waits
        assert ident != threading.get_ident()
        assert not any(d.called for d in busy)
        gate.set()
        yield defer.gatherResults(busy)
        assert work.pending == 0
    finally:
        gate.set()
        work.stop()


class InlinePool:
    """A ThreadPool that runs each job at once (on this thread), recording it."""

    def __init__(self) -> None:
        self.started = False
        self.ran: list[Any] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        assert self.started
        self.ran.append(f)
        on_result(True, f(*args))


class InlineReactor:
    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_the_dummy_hash_is_made_at_start_on_the_password_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under required, the first check of a nick with no account took twice
    as long (the dummy hash was made then): it told that the nick has none."""
    monkeypatch.setattr(hashing, "_dummy_hash", None)
    hashes: list[bytes] = []
    real = hashing.hash_password

    def counted(password: bytes) -> str:
        hashes.append(password)
        return real(password, **FAST)

    monkeypatch.setattr(hashing, "hash_password", counted)
    pool = InlinePool()
    work = PasswordWork(InlineReactor(), pool=pool)  # type: ignore[arg-type]
    assert hashing._dummy_hash is None  # not before the threads start
    work.start()
    assert hashing._dummy_hash is not None and len(hashes) == 1
    assert pool.ran == [hashing.make_dummy_hash]  # on the password threads
    checker = AccountChecker(SQLiteBook(AccountStore(":memory:"), work.lookup), work.run)
    failed: list[Any] = []
    checker.requestAvatarId(UsernamePassword(b"ghost", b"any-password")).addErrback(
        failed.append)
    assert failed[0].check(UnauthorizedLogin)
    assert len(hashes) == 1  # the first check made no hash: only checked one


def test_the_password_threads_never_keep_the_process_alive() -> None:
    """From its start the pool has a thread (the dummy hash): were it not a
    daemon, a process that started the service and never stopped it (the
    option tests) would wait for it at exit, for ever."""
    work = PasswordWork(InlineReactor())
    try:
        work.start()
        threads = work._pool.threads
        assert threads and all(t.daemon for t in threads)
    finally:
        work.stop()


def test_no_password_in_store_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.accounts.sqlite3"
    store = AccountStore(str(path))
    store.add("alice", hash_password(b"plain-text-pw", **FAST))
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"plain-text-pw" not in data
    assert os.path.exists(path)


# -- the bound on accounts -------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", "file"])
def test_add_bounded_by_most(tmp_path: Path, path: str) -> None:
    store = AccountStore(path if path == ":memory:" else str(tmp_path / "a.sqlite3"))
    password_hash = hash_password(b"plain-text-pw", **FAST)
    store.add("alice", password_hash, most=2)
    store.add("bob", password_hash, most=2)
    with pytest.raises(AccountsFull):
        store.add("carol", password_hash, most=2)
    with pytest.raises(AccountExists):  # a nick that has one is told so, full or not
        store.add("BOB", password_hash, most=2)
    assert store.count() == 2 and not store.exists("carol")
    store.add("carol", password_hash)  # no bound: the operator's tool
    assert store.count() == 3
    store.remove("alice")
    with pytest.raises(AccountsFull):
        store.add("dave", password_hash, most=2)
    store.add("dave", password_hash, most=3)


@pytest.mark.parametrize("denied", ["file", "folder"])
def test_a_file_the_server_cannot_open_says_whose_it_is_and_whose_the_server_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, denied: str
) -> None:
    """Review rev12 #4: root's tool made the accounts file (0600) before the
    first start of a server that runs as another user, which exited with
    SQLite's "unable to open database file" alone.  Now the reason names the
    owner, the mode and the server's user.  (SQLite's refusal is the seam's:
    these tests may run as root, whom the modes do not stop.)"""
    import pwd

    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "chat.accounts.sqlite3"
    AccountStore(str(path)).check()  # 0600, this process's
    folder.chmod(0o700 if denied == "folder" else 0o777)
    owner = os.stat(path).st_uid
    server = 65534 if owner != 65534 else 65533
    monkeypatch.setattr(os, "geteuid", lambda: server)
    monkeypatch.setattr(os, "getegid", lambda: server)
    monkeypatch.setattr(os, "getgroups", lambda: [])

    def refused(self: AccountStore) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(AccountStore, "_connect", refused)
    with pytest.raises(AccountStoreError) as e:
        AccountStore(str(path)).check()

    def user(uid: int) -> str:
        try:
            return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            return f"uid {uid}"

    target, mode = (folder, "0700") if denied == "folder" else (path, "0600")
    assert str(e.value) == (
        f"cannot open accounts file {str(path)!r}: unable to open database file "
        f"(permission denied: the {denied} {target} is owned by {user(owner)}, mode {mode}, "
        f"and this process runs as {user(server)}; the server's user must be able to read "
        "and write both the file and its folder (chown them to it))")


def test_a_refusal_the_modes_do_not_explain_is_said_as_sqlite_says_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is this process's, and so is its folder: no guess added."""
    path = tmp_path / "chat.accounts.sqlite3"
    AccountStore(str(path)).check()
    # Not root (whom the check lets through at once): nobody, when root.
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    os.chown(tmp_path, uid, -1)
    os.chown(path, uid, -1)
    monkeypatch.setattr(os, "geteuid", lambda: uid)

    def refused(self: AccountStore) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(AccountStore, "_connect", refused)
    with pytest.raises(AccountStoreError) as e:
        AccountStore(str(path)).check()
    assert str(e.value) == (
        f"cannot open accounts file {str(path)!r}: unable to open database file")
