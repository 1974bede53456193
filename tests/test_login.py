"""
The accounts handshake and verbs over StringTransport (docs/protocol.md,
"Accounts"), time from a task.Clock, the password threads replaced by a
runner that runs jobs inline or holds them until told.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from tests.harness import Conn, Harness
from tests.test_address_limits import break_next_arrival
from twisted_chat.server.accounts import cred, hashing
from twisted_chat.server.accounts.hashing import hash_password
from twisted_chat.server.accounts.login import (
    BAD_PASSWORD_TEXT,
    FULL_LOG_EVERY,
    OPERATORS_ACCOUNTS_TEXT,
    PASSWORD_CHANGED_TEXT,
    UNAVAILABLE_TEXT,
    UNCHECKED_TEXT,
    Accounts,
)
from twisted_chat.server.accounts.loginlimits import LoginLimits
from twisted_chat.server.accounts.passwordwork import WorkBusy
from twisted_chat.server.accounts.records import AccountsUnavailable
from twisted_chat.server.accounts.store import AccountStore, SQLiteBook
from twisted_chat.server.cluster.accounts import RedisBook
from twisted_chat.server.config import Mode
from twisted_chat.wire import format_ts

PW = "sekrit-pw"
# Cheap scrypt parameters: the format carries them, verify reads them back.
FAST = dict(n=2**4, r=1, p=1)


class InlineWork:
    """Runs each job at once, counting them (and the hashes among them)."""

    def __init__(self) -> None:
        self.jobs = 0
        self.hashes = 0
        self.full = False

    def run(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.hashes += 1
        return self.lookup(f, *args)

    def lookup(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.jobs += 1
        return defer.execute(f, *args)


class HeldWork:
    """Holds each job until L{release}; full at C{limit} held jobs."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.held: list[tuple[bool, Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    @property
    def full(self) -> bool:
        return sum(counted for counted, *_ in self.held) >= self.limit

    def run(self, f: Any, *args: Any, counted: bool = True) -> defer.Deferred[Any]:
        if counted and self.full:
            raise WorkBusy()  # as PasswordWork does
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((counted, f, args, d))
        return d

    def lookup(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        return self.run(f, *args, counted=False)

    def release(self) -> None:
        held, self.held = self.held, []
        for _, f, args, d in held:
            try:
                d.callback(f(*args))
            except Exception as e:
                d.errback(e)


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """REGISTER/PASSWD hash with cheap parameters in these tests."""
    real = hashing.hash_password
    monkeypatch.setattr(
        "twisted_chat.server.accounts.login.hash_password", lambda pw: real(pw, **FAST)
    )
    monkeypatch.setattr(hashing, "_dummy_hash", real(b"dummy", **FAST))


def harness(
    mode: Mode = Mode.OPEN,
    work: Any = None,
    limits: LoginLimits | None = None,
    store: AccountStore | None = None,
    max_accounts: int = 100_000,
    **config: Any,
) -> Harness:
    h = Harness(**config)
    h.store = store if store is not None else AccountStore(":memory:")  # type: ignore[attr-defined]
    h.work = work if work is not None else InlineWork()  # type: ignore[attr-defined]
    book = SQLiteBook(h.store, h.work.lookup)  # type: ignore[attr-defined]
    h.factory.accounts = Accounts(mode, book, h.clock, h.work, limits,  # type: ignore[attr-defined]
                                  max_accounts=max_accounts)
    return h


def add(h: Harness, nick: str, password: str = PW) -> None:
    h.store.add(nick, hash_password(password.encode(), **FAST))  # type: ignore[attr-defined]


def fresh(h: Harness, host: str = "127.0.0.1") -> Conn:
    conn = h.connect(host)
    conn.take()
    return conn


def login(h: Harness, nick: str, password: str = PW) -> Conn:
    conn = fresh(h)
    conn.send(f"NICK {nick}")
    assert conn.take() == [f"PASS {nick}"]
    conn.send(f"PASS {password}")
    assert conn.take()[0] == f"READY {nick}"
    return conn


def asked(h: Harness, nick: str, host: str | None = "127.0.0.1") -> Conn:
    """A connection from C{host} whose C{NICK} of C{nick}'s account (made
    here) was looked up by a L{HeldWork}: asked for its password."""
    add(h, nick)
    conn = fresh(h, host)  # type: ignore[arg-type]  # None: a UNIX socket
    conn.send(f"NICK {nick}")
    h.work.release()  # type: ignore[attr-defined]  # the lookup
    assert conn.take() == [f"PASS {nick}"]
    return conn


# -- the handshake ---------------------------------------------------------------


def test_open_nick_without_account_needs_no_password() -> None:
    h = harness()
    conn = fresh(h)
    conn.send("NICK alice")
    assert conn.take() == ["READY alice", "USER alice lobby", "USERS 1"]


def test_register_then_reconnect_needs_the_password() -> None:
    h = harness()
    alice = fresh(h)
    alice.send("NICK alice")
    alice.take()
    alice.send(f"REGISTER {PW}")
    assert alice.take() == ["REGISTERED alice"]
    alice.send("BYE")
    alice.drop()
    again = fresh(h)
    again.send("NICK ALICE")
    assert again.take() == ["PASS alice"]
    assert again.user is None
    again.send("PASS wrong-password")
    assert again.take() == [f"RETRY bad-password {BAD_PASSWORD_TEXT}"]
    assert again.user is None
    again.send("PASS " + PW)  # the password was not asked again: NICK first
    assert again.take_one().startswith("ERROR not-ready ")
    again.send("NICK Alice")
    assert again.take() == ["PASS alice"]
    again.send(f"PASS {PW}")
    assert again.take() == ["READY alice", "USER alice lobby", "USERS 1"]  # as registered


def test_taken_comes_before_any_password() -> None:
    h = harness()
    add(h, "alice")
    login(h, "alice")
    jobs = h.work.jobs  # type: ignore[attr-defined]
    other = fresh(h)
    other.send("NICK alice")
    line = other.take_one()
    assert line.startswith("RETRY taken ")
    assert h.work.jobs == jobs  # type: ignore[attr-defined]  # no lookup, no check


@pytest.mark.parametrize("mode", [Mode.OPEN, Mode.REQUIRED])
def test_taken_names_the_nick_as_its_owner_spelled_it(mode: Mode) -> None:
    h = harness(mode)
    add(h, "Alice")
    login(h, "Alice")
    other = fresh(h)
    other.send("NICK ALICE")
    assert other.take() == ["RETRY taken Alice is online already"]


@pytest.mark.parametrize(("mode", "asked"), [(Mode.OPEN, "PASS Alice"),
                                             (Mode.REQUIRED, "PASS aLICE")])
def test_pass_names_the_nick_as_its_owner_spelled_it_under_open_only(
        mode: Mode, asked: str) -> None:
    """Under open, as chat/1 writes every nick (that it has an account is
    no secret there); under required, as typed: the account's spelling
    would tell that it exists."""
    h = harness(mode)
    add(h, "Alice")
    conn = fresh(h)
    conn.send("NICK aLICE")
    assert conn.take() == [asked]
    conn.send(f"PASS {PW}")
    assert conn.take()[0] == "READY Alice"


def checking(h: Harness) -> Conn:
    """A connection whose right password for alice is being checked (with
    L{HeldWork}: nothing of the check has run yet)."""
    add(h, "alice")
    one = fresh(h)
    one.send("NICK alice")
    h.work.release()  # type: ignore[attr-defined]  # the lookup
    assert one.take() == ["PASS alice"]
    one.send(f"PASS {PW}")
    return one


def test_taken_after_a_lookup_names_the_winner_as_spelled() -> None:
    """A nick taken while a NICK's lookup ran: the RETRY taken names the
    user who got it, as spelled, not the NICK's words."""
    h = harness(work=HeldWork())
    one = checking(h)
    h.work.release()  # type: ignore[attr-defined]  # the account's read; the hash waits
    h.store.remove("alice")  # type: ignore[attr-defined]
    two = fresh(h)
    two.send("NICK ALICE")  # nobody online yet: its lookup waits behind one's hash
    h.work.release()  # type: ignore[attr-defined]  # one's hash, then two's lookup
    assert one.take()[0] == "READY alice"
    assert two.take() == ["RETRY taken alice is online already"]


def test_nicks_of_one_address_looked_up_at_once_spend_its_registrations_once_each() -> None:
    """The address may register one nick (two clients behind it coming
    back after a restart): two NICKs whose account lookups ran at once were
    both judged within the limit before either was registered, and both got
    in.  The first NICK reserves the registration as it is judged: the
    second is refused."""
    h = harness(work=HeldWork(), ip_register_rate=0.05, ip_register_burst=1)
    alice, bob = fresh(h), fresh(h)
    alice.send("NICK alice")
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]  # both lookups: no account
    assert alice.take()[0] == "READY alice"
    assert bob.take() == [
        "ERROR flood too many nicks registered from 127.0.0.1 lately; try again in 20 s"]
    assert bob.user is None
    h.clock.advance(20.0)
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]
    assert bob.take()[0] == "READY bob"


FLOODED_20 = "ERROR flood too many nicks registered from 127.0.0.1 lately; try again in 20 s"


def test_password_logins_of_one_address_at_once_spend_its_registrations_once_each() -> None:
    """The address may register one nick: two connections asked for their
    accounts' passwords had each been judged within the limit at NICK
    (nothing was spent until one was registered), and both logged in (so
    accounts made slowly could all be logged in at once).  A NICK reserves
    its registration: the second is answered ERROR flood."""
    h = harness(work=HeldWork(), ip_register_rate=0.05, ip_register_burst=1)
    add(h, "alice")
    add(h, "bob")
    alice, bob = fresh(h), fresh(h)
    alice.send("NICK alice")
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]  # the lookups
    assert alice.take() == ["PASS alice"]
    assert bob.take() == [FLOODED_20]
    alice.send(f"PASS {PW}")
    bob.send(f"PASS {PW}")
    h.work.release()  # type: ignore[attr-defined]  # the accounts' reads
    h.work.release()  # type: ignore[attr-defined]  # the hashes
    assert alice.take()[0] == "READY alice"
    assert bob.user is None
    assert h.hub.online.keys() == {"alice"}


def _given_back(h: Harness, how: str) -> None:
    """One connection's NICK of alice's account (PASS asked) ends without
    a registration, C{how}."""
    add(h, "alice")
    conn = fresh(h)
    conn.send("NICK alice")
    assert conn.take() == ["PASS alice"]
    if how == "wrong password":
        conn.send("PASS not-the-password")
        assert conn.take()[0].startswith("RETRY bad-password")
    elif how == "gone":
        conn.drop()
    elif how == "timeout":
        h.clock.advance(30.0)
        assert conn.take()[-1].startswith("BYE timeout")
    else:  # taken meanwhile: answered at the next NICK, before any lookup
        h.user("bob", host="192.0.2.1")
        conn.send("NICK bob")
        assert conn.take() == ["RETRY taken bob is online already"]


@pytest.mark.parametrize("how", ["wrong password", "gone", "timeout", "taken"])
def test_a_nick_not_registered_gives_its_registration_back(how: str) -> None:
    """The address may register one nick, and a NICK holds it from its
    judgement until it is registered or its attempt ends: once that ends
    otherwise, another connection of the address may register."""
    h = harness(ip_register_rate=0.01, ip_register_burst=1, nick_timeout=30.0)
    _given_back(h, how)
    other = fresh(h)
    other.send("NICK carol")
    assert other.take()[0] == "READY carol"


@pytest.mark.parametrize("account", [False, True], ids=["no-account", "password"])
def test_a_registration_that_raises_gives_its_registration_back(account: bool) -> None:
    """hub.register raised at once as the login admitted the nick (a
    listener's bug; the hub undid the user): the registration the NICK
    reserved stayed spent, so the address's next NICK was refused.  It is
    given back; the connection is told ERROR internal and may NICK again."""
    h = harness(ip_register_rate=0.01, ip_register_burst=1)
    conn = fresh(h)
    if account:
        add(h, "alice")
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
    break_next_arrival(h)
    conn.send(f"PASS {PW}" if account else "NICK alice")
    assert conn.take()[-1].startswith("ERROR internal")
    assert conn.user is None
    other = fresh(h)
    other.send("NICK carol")
    assert other.take()[0] == "READY carol"


INTERNAL = "ERROR internal the server hit a fault handling that command (it is logged)"


@pytest.mark.parametrize("mode", ["plain", "no-account", "password"])
def test_an_arrival_that_raises_is_never_told_ready(mode: str) -> None:
    """A listener's JOINED raised after its READY went out: the client, not
    online (the hub undid it), had READY, the history and the user list,
    then ERROR internal with accounts on; on a plain server the error went
    up to Twisted, which dropped the connection.  Every mode now answers
    ERROR internal alone, the others hear nothing, and the connection,
    still without a nick, may NICK again."""
    h = Harness() if mode == "plain" else harness()
    watcher = h.user("bob")
    watcher.send("MSG hello")
    h.clear_all()
    conn = fresh(h)
    if mode == "password":
        add(h, "alice")
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
    break_next_arrival(h)
    conn.send(f"PASS {PW}" if mode == "password" else "NICK alice")
    h.clock.advance(1)
    assert conn.take() == [INTERNAL]
    assert conn.user is None and not conn.transport.disconnecting
    assert watcher.take() == []
    conn.send("NICK carol")
    assert conn.take()[0] == "READY carol"


def test_a_new_nick_while_a_password_is_asked_takes_its_registration() -> None:
    """The NICK asked for a password holds the address's one registration:
    the connection's next NICK takes it over rather than being refused."""
    h = harness(ip_register_rate=0.05, ip_register_burst=1)
    add(h, "alice")
    conn = fresh(h)
    conn.send("NICK alice")
    assert conn.take() == ["PASS alice"]
    other = fresh(h)
    other.send("NICK dave")
    assert other.take() == [FLOODED_20]
    conn.send("NICK carol")
    assert conn.take()[0] == "READY carol"
    other.send("NICK dave")
    assert other.take()[0].startswith("ERROR flood")


def test_taken_while_the_password_was_checked() -> None:
    h = harness(work=HeldWork())
    one = checking(h)
    assert one.take() == []  # the check is running
    h.store.remove("alice")  # type: ignore[attr-defined]
    two = fresh(h)
    two.send("NICK alice")
    h.work.release()  # type: ignore[attr-defined]  # one's read (no account now), two's lookup
    assert two.take()[0] == "READY alice"
    h.work.release()  # type: ignore[attr-defined]  # one's hash, against the dummy: fails
    assert one.take()[0].startswith("RETRY bad-password ")


def test_required_asks_every_nick_and_answers_alike() -> None:
    h = harness(Mode.REQUIRED)
    add(h, "alice")
    real, ghost = fresh(h), fresh(h)
    real.send("NICK alice")
    ghost.send("NICK ghost")
    assert real.take() == ["PASS alice"]
    assert ghost.take() == ["PASS ghost"]
    real.send("PASS wrong-password")
    ghost.send("PASS wrong-password")
    assert real.take() == ghost.take() == [f"RETRY bad-password {BAD_PASSWORD_TEXT}"]
    assert h.work.hashes == 2  # type: ignore[attr-defined]  # both went through a check
    real.send("NICK alice")
    real.send(f"PASS {PW}")
    assert real.take()[1] == "READY alice"


def test_required_needs_no_lookup_before_asking() -> None:
    """Under required, NICK is answered without touching the file: no timing to tell."""
    h = harness(Mode.REQUIRED, work=HeldWork())
    conn = fresh(h)
    conn.send("NICK ghost")
    assert conn.take() == ["PASS ghost"]
    assert h.work.held == []  # type: ignore[attr-defined]


def test_a_new_nick_abandons_the_asked_one() -> None:
    h = harness()
    add(h, "alice")
    conn = fresh(h)
    conn.send("NICK alice")
    assert conn.take() == ["PASS alice"]
    conn.send("NICK bob")
    assert conn.take()[0] == "READY bob"


def test_pass_states() -> None:
    h = harness()
    conn = fresh(h)
    conn.send(f"PASS {PW}")
    assert conn.take_one().startswith("ERROR not-ready ")
    conn.send(f"REGISTER {PW}", f"PASSWD {PW}")
    assert [line.split()[1] for line in conn.take()] == ["not-ready", "not-ready"]
    conn.send("NICK bob")
    conn.take()
    # chat/1: "PASS when no password was asked is ERROR not-ready", online too.
    conn.send(f"PASS {PW}")
    assert conn.take_one().startswith("ERROR not-ready ")
    conn.send("PASS")  # the state is checked before the arguments
    assert conn.take_one().startswith("ERROR not-ready ")


def test_a_pass_when_none_was_asked_is_not_ready_before_its_length_is_weak() -> None:
    """The state (check 5) comes before the verb's own rules (7): a bare or
    short PASS before NICK, or after RETRY bad-password, is not-ready, not
    weak-password."""
    h = harness()
    add(h, "alice")
    conn = fresh(h)
    conn.send("PASS", "PASS short")
    assert [line.split()[1] for line in conn.take()] == ["not-ready", "not-ready"]
    conn.send("NICK alice")
    assert conn.take() == ["PASS alice"]
    conn.send("PASS wrong-password")
    assert conn.take() == [f"RETRY bad-password {BAD_PASSWORD_TEXT}"]
    conn.send("PASS", "PASS short")
    assert [line.split()[1] for line in conn.take()] == ["not-ready", "not-ready"]


NO_NICK = "ERROR not-ready choose a nickname first: NICK <nick>"


def waiting_for(nick: str) -> str:
    return (f"ERROR not-ready the server is waiting for the password of {nick}: "
            "send PASS <password>, or NICK <nick> to choose another nick")


@pytest.mark.parametrize(("mode", "typed", "asked"),
                         [(Mode.OPEN, "ALICE", "Alice"), (Mode.REQUIRED, "ghost", "ghost")])
def test_not_ready_while_a_password_is_asked_says_to_send_pass(
        mode: Mode, typed: str, asked: str) -> None:
    """rev13-proto LOW-1: a line other than PASS while the server waits for
    a password was told "choose a nickname first: NICK <nick>", and a new
    NICK abandons the nick asked.  Its text now says PASS (or another
    nick), naming the nick as PASS <nick> did; the password is still asked
    after it.  Before NICK and after RETRY bad-password, NICK it is."""
    h = harness(mode)
    add(h, "Alice")
    conn = fresh(h)
    conn.send("USERS")
    assert conn.take() == [NO_NICK]
    conn.send(f"NICK {typed}")
    assert conn.take() == [f"PASS {asked}"]
    conn.send("USERS", "MSG hi", f"REGISTER {PW}", f"PASSWD {PW}")
    assert conn.take() == [waiting_for(asked)] * 4
    conn.send("PASS wrong-password")
    assert conn.take() == [f"RETRY bad-password {BAD_PASSWORD_TEXT}"]
    conn.send("USERS")
    assert conn.take() == [NO_NICK]
    if mode is Mode.OPEN:
        conn.send(f"NICK {typed}", "USERS", f"PASS {PW}")
        assert conn.take()[:3] == [f"PASS {asked}", waiting_for(asked), f"READY {asked}"]


@pytest.mark.parametrize("mode", [Mode.OPEN, Mode.REQUIRED])
def test_pass_after_a_password_login_is_not_ready(mode: Mode) -> None:
    """Online after a password was asked and given: none is asked now,
    in the lobby or paired."""
    h = harness(mode)
    add(h, "alice")
    add(h, "bob")
    alice = login(h, "alice")
    alice.send(f"PASS {PW}")
    assert alice.take_one() == "ERROR not-ready no password was asked for: you are already alice"
    bob = login(h, "bob")
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    alice.take()
    bob.take()
    assert h.factory.state.hub.online["alice"].partner is not None
    alice.send(f"PASS {PW}")  # paired
    assert alice.take_one().startswith("ERROR not-ready ")


def test_lines_wait_in_order_while_a_check_runs() -> None:
    """A connection's lines are handled in order: later ones wait for the answer."""
    h = harness(work=HeldWork())
    add(h, "alice")
    conn = fresh(h)
    conn.send("NICK alice", "PING one")
    assert conn.take() == []
    h.work.release()  # type: ignore[attr-defined]
    assert conn.take() == ["PASS alice", "PONG one"]
    conn.send(f"PASS {PW}", "PING two", "USERS")
    for _ in ("the read of the file", "the hash"):
        assert conn.take() == []
        assert len(h.work.held) == 1  # type: ignore[attr-defined]
        h.work.release()  # type: ignore[attr-defined]
    assert conn.take() == ["READY alice", "USER alice lobby", "USERS 1", "PONG two",
                           "USER alice lobby", "USERS 1"]


def test_lines_that_arrive_during_a_check_are_handled_after_it() -> None:
    h = harness(work=HeldWork())
    conn = fresh(h)
    conn.arrive("NICK bob")
    conn.arrive("PING late")
    assert conn.take() == []
    h.work.release()  # type: ignore[attr-defined]
    assert conn.take() == ["READY bob", "USER bob lobby", "USERS 1", "PONG late"]


def test_lobby_lines_said_before_ready_are_history_and_after_it_live() -> None:
    """rev22-docs F1: docs/protocol.md said a lobby line handled after the
    newcomer's NICK is sent live.  While its nick is looked up and its
    password asked and checked, the newcomer is not in the lobby: such a
    line is in its history (never also live); one said after READY is live."""
    h = harness(work=HeldWork())
    xavier = fresh(h)
    xavier.send("NICK xavier")
    h.work.release()  # type: ignore[attr-defined]  # its lookup: no account
    assert xavier.take()[0] == "READY xavier"
    add(h, "alice")
    alice = fresh(h)
    alice.send("NICK alice")
    xavier.send("MSG while the nick is looked up")
    h.work.release()  # type: ignore[attr-defined]  # the lookup
    assert alice.take() == ["PASS alice"]
    xavier.send("MSG while the password is asked")
    alice.send(f"PASS {PW}")
    xavier.send("MSG while the password is checked")
    for _ in ("the read of the file", "the hash"):
        h.work.release()  # type: ignore[attr-defined]
    xavier.send("MSG after READY")
    t = format_ts(h.clock.seconds())
    assert alice.take() == [
        "READY alice",
        *(f"HISTORY {t} xavier while the {what}" for what in
          ("nick is looked up", "password is asked", "password is checked")),
        "USER alice lobby", "USER xavier lobby", "USERS 2",
        f"MSG {t} xavier * after READY",
    ]


def test_a_command_is_decided_before_the_lines_held_behind_it_are_handled() -> None:
    """The NICK's decision lets go of its handshake (nothing proved) before
    the lines held behind it are handled: the REGISTER among them starts a
    fresh one, which keeps what it proved for the PASSWD after it.  Let go
    after them, the REGISTER's own handshake went while it waited, and the
    PASSWD was refused as not logged in with a password."""
    h = harness(work=HeldWork())
    conn = fresh(h)
    conn.send("NICK bob", f"REGISTER {PW}", "PASSWD new-password")
    assert conn.take() == []
    while h.work.held:  # type: ignore[attr-defined]
        h.work.release()  # type: ignore[attr-defined]
    assert conn.take() == ["READY bob", "USER bob lobby", "USERS 1",
                           "REGISTERED bob", "REGISTERED bob"]


def test_a_full_password_queue_discards_the_line_with_flood() -> None:
    h = harness(work=HeldWork(limit=1))
    add(h, "alice")
    add(h, "bob")
    conns = {}
    for nick in ("alice", "bob"):
        conns[nick] = fresh(h)
        conns[nick].send(f"NICK {nick}")
        h.work.release()  # type: ignore[attr-defined]  # the lookup, not counted
        assert conns[nick].take() == [f"PASS {nick}"]
    conns["alice"].send(f"PASS {PW}")  # its hash fills the queue
    h.work.release()  # type: ignore[attr-defined]  # alice's read
    conns["bob"].send(f"PASS {PW}")
    assert conns["bob"].take_one().startswith("ERROR flood ")
    assert len(h.work.held) == 1  # type: ignore[attr-defined]  # nothing queued for bob
    # Full only once the reads are done: the hash is refused then, the same way.
    conns["carol"] = fresh(h)
    add(h, "carol")
    conns["carol"].send("NICK carol")
    h.work.release()  # type: ignore[attr-defined]  # the lookup, alice's hash
    conns["carol"].take()
    assert conns["alice"].take()[0] == "READY alice"
    conns["carol"].send(f"PASS {PW}")
    conns["bob"].send(f"PASS {PW}")  # still asked: send it again
    h.work.release()  # type: ignore[attr-defined]  # both reads: carol's hash fills it
    assert conns["bob"].take_one().startswith("ERROR flood ")
    # Neither of bob's was checked: no failure counted for them.
    assert h.factory.accounts.by_nick.level("bob") == 0
    newcomer = fresh(h)
    newcomer.send("NICK dave")  # a lookup is never refused
    h.work.release()  # type: ignore[attr-defined]
    assert newcomer.take()[0] == "READY dave"
    assert conns["carol"].take()[0] == "READY carol"
    conns["bob"].send(f"PASS {PW}")
    h.work.release()  # type: ignore[attr-defined]  # the read
    h.work.release()  # type: ignore[attr-defined]  # the hash
    assert conns["bob"].take()[0] == "READY bob"


def test_a_full_password_queue_names_the_register_or_passwd_it_discards() -> None:
    """A REGISTER or PASSWD the full queue turns away is told to send that
    command again, as a PASS is: it was told to send "it" again, which a
    client with several lines out could not place."""
    h = harness(work=HeldWork())
    add(h, "alice")
    alice, bob = fresh(h), fresh(h)
    alice.send("NICK alice", f"PASS {PW}")
    bob.send("NICK bob")
    while h.work.held:  # type: ignore[attr-defined]
        h.work.release()  # type: ignore[attr-defined]
    assert alice.take()[:2] == ["PASS alice", "READY alice"]
    assert bob.take()[0] == "READY bob"
    h.work.limit = 0  # type: ignore[attr-defined]  # every password thread taken
    bob.send(f"REGISTER {PW}")
    alice.send("PASSWD new-password")
    while h.work.held:  # type: ignore[attr-defined]
        h.work.release()  # type: ignore[attr-defined]
    busy = "ERROR flood the server is busy; send {} again in a moment"
    assert [line for line in bob.take() if line.startswith("ERROR")] == [
        busy.format("REGISTER")]
    assert [line for line in alice.take() if line.startswith("ERROR")] == [
        busy.format("PASSWD")]


def test_one_address_cannot_fill_the_password_pool() -> None:
    """An address has at most max_pending_per_address (8) password jobs
    queued or running, whatever its connections send: 20 PASS lines and a
    REGISTER from one address filled the whole queue, and another address's
    PASS was turned away as busy."""
    limits = replace(LoginLimits(), address_burst=100)  # the failure limit out of the way
    h = harness(work=HeldWork(limit=20), limits=limits, max_per_ip=50)
    share = limits.max_pending_per_address
    victim = asked(h, "victim", "10.0.0.2")
    crowd = [asked(h, f"nick{i}", "10.0.0.1") for i in range(20)]
    online = fresh(h, "10.0.0.1")
    online.send("NICK someone")
    h.work.release()  # type: ignore[attr-defined]
    assert online.take()[0] == "READY someone"
    for conn in crowd:
        conn.send("PASS wrong-password")
    busy = ("ERROR flood too much password work from your address at once; "
            "send PASS again in a moment")
    assert [conn.take() for conn in crowd] == [[]] * share + [[busy]] * (20 - share)
    online.send(f"REGISTER {PW}")
    h.work.release()  # type: ignore[attr-defined]  # the reads, the lookup: 8 hashes queued
    assert online.take() == [busy.replace("PASS", "REGISTER")]
    assert len(h.work.held) == share  # type: ignore[attr-defined]
    victim.send(f"PASS {PW}")  # another address: queued, not busy
    assert victim.take() == []
    h.work.release()  # type: ignore[attr-defined]  # the 8 hashes, the victim's read
    h.work.release()  # type: ignore[attr-defined]  # the victim's hash
    assert victim.take()[0] == "READY victim"
    for conn in crowd[-share:]:  # the whole share is free again: none busy
        conn.send("PASS wrong-password")
    assert [conn.take() for conn in crowd[-share:]] == [[]] * share
    h.work.release()  # type: ignore[attr-defined]
    h.work.release()  # type: ignore[attr-defined]
    assert all(conn.take()[-1].startswith("RETRY bad-password ") for conn in crowd[-share:])


def test_an_address_whose_password_jobs_are_done_is_forgotten() -> None:
    """The per-address count of password jobs holds only the addresses with
    a job now: else every address that ever sent PASS (or REGISTER, PASSWD)
    stayed in memory for the server's life."""
    h = harness()
    add(h, "alice")
    for i in range(20):
        conn = fresh(h, f"10.0.0.{i}")
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
        conn.send(f"PASS {PW}")
        assert conn.take()[0] == "READY alice"
        conn.send("BYE")
        conn.drop()
    # No public view of the table: its size is the point.
    assert h.factory.accounts._working == {}


def test_nick_timeout_covers_the_whole_handshake() -> None:
    h = harness(work=HeldWork(), nick_timeout=30.0)
    add(h, "alice")
    slow = fresh(h)
    slow.send("NICK alice")
    h.work.release()  # type: ignore[attr-defined]
    assert slow.take() == ["PASS alice"]
    checking = fresh(h)
    checking.send("NICK alice")
    h.work.release()  # type: ignore[attr-defined]
    checking.take()
    h.clock.advance(29)
    checking.send(f"PASS {PW}")  # the check is still running when time is up
    h.clock.advance(1)
    for conn in (slow, checking):
        lines = conn.take()
        assert lines[-1].startswith("BYE timeout "), lines
        assert conn.transport.disconnecting
    h.work.release()  # type: ignore[attr-defined]  # the check ends after the close
    assert checking.take() == [] and checking.user is None
    assert "alice" not in h.hub.online


def test_nick_timer_stops_once_ready() -> None:
    h = harness(nick_timeout=30.0)
    add(h, "alice")
    conn = login(h, "alice")
    h.clock.advance(60)
    assert not any(line.startswith("BYE") for line in conn.take())


# -- REGISTER and PASSWD ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["PASS", "REGISTER", "PASSWD"])
@pytest.mark.parametrize("password", ["", "1234567", "x" * 257, "ééé"])
def test_weak_passwords(verb: str, password: str) -> None:
    h = harness()
    add(h, "alice")
    conn = fresh(h)
    if verb == "PASS":
        conn.send("NICK alice")
    else:
        conn.send("NICK bob")
    conn.take()
    conn.send(f"{verb} {password}".rstrip())
    assert conn.take_one().startswith("ERROR weak-password ")
    assert h.work.jobs == 1  # type: ignore[attr-defined]  # the NICK lookup only


def test_password_bounds_count_bytes_and_keep_inner_spaces() -> None:
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob")
    bob.take()
    bob.send("REGISTER éééé")  # 8 bytes
    assert bob.take() == ["REGISTERED bob"]
    bob.send("PASSWD " + "x" * 256)
    assert bob.take() == ["REGISTERED bob"]
    bob.send("PASSWD  two words  ")  # leading spaces separate, the rest is it
    assert bob.take() == ["REGISTERED bob"]
    bob.drop()
    conn = fresh(h)
    conn.send("NICK bob", "PASS two words")
    assert conn.take()[-1].startswith("RETRY bad-password ")
    conn.send("NICK bob", "PASS two words  ")
    assert conn.take()[1] == "READY bob"


def test_register_rules() -> None:
    h = harness()
    add(h, "alice")
    alice = login(h, "alice")
    alice.take()
    alice.send(f"REGISTER {PW}")
    assert alice.take_one().startswith("ERROR registered ")
    bob = fresh(h)
    bob.send("NICK bob")
    bob.take()
    add(h, "BOB")  # the operator made one meanwhile
    bob.send(f"REGISTER {PW}")
    assert bob.take_one().startswith("ERROR registered ")


def test_register_beyond_max_accounts_is_server_full_and_the_connection_stays() -> None:
    h = harness(max_accounts=2)
    add(h, "alice")  # the operator's
    bob = fresh(h)
    bob.send("NICK bob", f"REGISTER {PW}")
    assert bob.take()[-1] == "REGISTERED bob"
    carol = fresh(h)
    carol.send("NICK carol", f"REGISTER {PW}", "PING still-here")
    lines = carol.take()
    assert lines[-2:] == [
        "ERROR server-full this server keeps no more accounts; "
        "ask its operator to remove unused ones",
        "PONG still-here"]
    assert not h.store.exists("carol") and h.store.count() == 2  # type: ignore[attr-defined]
    bob.take()  # JOINED carol
    bob.send(f"REGISTER {PW}")  # a nick with one is told so, full or not
    assert bob.take_one().startswith("ERROR registered ")
    h.store.remove("alice")  # type: ignore[attr-defined]
    carol.send(f"REGISTER {PW}")
    assert carol.take() == ["REGISTERED carol"]


# "café-secret" as most keyboards type it (NFC), and as a macOS file name or
# some password managers paste it (NFD): the same visible password.
NFC_PW = unicodedata.normalize("NFC", "café-secret")
NFD_PW = unicodedata.normalize("NFD", "café-secret")


def test_a_password_is_one_password_in_any_unicode_form() -> None:
    """rev22-attack 3: registered as NFD, the password typed as NFC was a
    wrong password (and counted as a failed login)."""
    assert NFC_PW != NFD_PW
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob", f"REGISTER {NFD_PW}")
    assert bob.take()[-1] == "REGISTERED bob"
    bob.drop()
    login(h, "bob", NFC_PW).drop()
    again = login(h, "bob", NFD_PW)
    again.send(f"PASSWD {NFC_PW}")
    assert again.take() == ["REGISTERED bob"]
    again.drop()
    login(h, "bob", NFD_PW)
    assert h.factory.accounts.failed_logins == 0  # type: ignore[attr-defined]


def test_an_account_set_before_in_another_form_opens_as_it_was_typed() -> None:
    """docs/accounts.md, "The password's form": a hash made before, of the
    NFD bytes, still opens with those bytes, and a wrong password (or a nick
    with no account) costs the same two checks, so neither tells the other."""
    h = harness(Mode.REQUIRED)  # a nick with no account is asked a password too
    h.store.add("old", hash_password(NFD_PW.encode(), **FAST))  # type: ignore[attr-defined]
    login(h, "old", NFD_PW).drop()
    hashes = h.work.hashes  # type: ignore[attr-defined]
    checked: list[bytes] = []
    real = hashing.verify_password

    def verify(password: bytes, encoded: str) -> bool:
        checked.append(password)
        return real(password, encoded)

    wrong = unicodedata.normalize("NFD", "wrong-pässword")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cred, "verify_password", verify)
        for nick in ("old", "nobody"):
            conn = fresh(h)
            conn.send(f"NICK {nick}", f"PASS {wrong}")
            assert conn.take()[-1].startswith("RETRY bad-password ")
        conn = fresh(h)
        conn.send("NICK old", f"PASS {NFC_PW}")  # not the form it was set in
        assert conn.take()[-1].startswith("RETRY bad-password ")
    nfc_wrong = unicodedata.normalize("NFC", wrong).encode()
    assert checked == [nfc_wrong, wrong.encode(), nfc_wrong, wrong.encode(), NFC_PW.encode()]
    assert h.work.hashes == hashes + 3  # type: ignore[attr-defined]


def test_the_length_rule_counts_the_form_that_is_hashed() -> None:
    """8 to 256 bytes, of the NFC form a new password is set in; a PASS
    is refused unchecked only if no account, set now or before, can have it."""
    short = unicodedata.normalize("NFD", "ééé")  # 9 bytes; NFC, 6
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob", f"REGISTER {short}")
    assert bob.take()[-1].startswith("ERROR weak-password ")
    bob.send(f"REGISTER {unicodedata.normalize('NFD', 'é' * 86)}")  # 258 bytes; NFC, 172
    assert bob.take() == ["REGISTERED bob"]
    add(h, "carol")
    conn = fresh(h)
    conn.send("NICK carol", f"PASS {unicodedata.normalize('NFC', short)}")
    assert conn.take()[-1].startswith("ERROR weak-password ")
    conn.send(f"PASS {short}")  # 9 bytes as typed: an older account's, maybe
    assert conn.take()[-1].startswith("RETRY bad-password ")


class NoRoom(AccountStore):
    """An accounts file with no room to grow: SQLite's own SQLITE_FULL (no
    page past those it has), after which it has rolled back by itself."""

    def _connect(self) -> Any:
        conn = super()._connect()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        return conn


def test_a_register_on_a_full_disk_logs_the_disks_error_once(tmp_path: Path) -> None:
    """
    rev22-attack 2: the store's ROLLBACK after SQLite's own raised "cannot
    rollback - no transaction is active", which hid the store's error: the
    log had that at critical, with a traceback, and not "disk is full".
    """
    path = tmp_path / "a.sqlite3"
    AccountStore(str(path)).add("filler", "h" * 4000)  # its pages are full
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = harness(store=NoRoom(str(path)))
        bob = fresh(h)
        bob.send("NICK bob", f"REGISTER {PW}")
        lines = bob.take()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert lines[-1] == ("ERROR not-registered the server could not store the password now;"
                         " try again later")
    said = [e for e in events if e.get("log_namespace", "").endswith("accounts.login")
            and e["log_level"].name in ("error", "critical")]
    assert [formatEvent(e) for e in said] == [
        f"account bob: could not set the password: cannot write accounts file {str(path)!r}:"
        " database or disk is full"]
    assert "log_failure" not in said[0]


def test_max_accounts_is_logged_once_per_ten_minutes() -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = harness(max_accounts=1)
        add(h, "alice")
        bob = fresh(h)
        bob.send("NICK bob")
        bob.take()
        for _ in range(3):
            bob.send(f"REGISTER {PW}")
            assert bob.take_one().startswith("ERROR server-full ")
        h.clock.advance(FULL_LOG_EVERY)
        bob.send(f"REGISTER {PW}")
        bob.take()
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e for e in events if "--max-accounts" in formatEvent(e)]
    assert len(said) == 2
    assert formatEvent(said[0]).startswith("account bob not made: there are --max-accounts 1 ")
    assert "more refused" not in formatEvent(said[0])
    assert formatEvent(said[1]).endswith("; 2 more refused since the last such line")


def test_max_accounts_option() -> None:
    from twisted.python import usage

    from twisted_chat.server.service import Options

    options = Options()
    options.parseOptions([])
    assert options.config().max_accounts == 100_000
    options = Options()
    options.parseOptions(["--max-accounts", "7"])
    assert options.config().max_accounts == 7
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--max-accounts", "0"])


def test_register_for_a_nick_with_an_account_costs_no_hash() -> None:
    """REGISTER repeated by a nick with an account (or one the operator
    made) is answered from a lookup: each one cost a scrypt hash before."""
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob", f"REGISTER {PW}")
    assert bob.take()[-1] == "REGISTERED bob"
    assert h.work.hashes == 1  # type: ignore[attr-defined]
    for _ in range(5):
        bob.send(f"REGISTER {PW}")
        assert bob.take() == ["ERROR registered bob has an account already"]
    carol = fresh(h, "10.0.0.3")
    carol.send("NICK carol")
    carol.take()
    add(h, "Carol")  # the operator made one meanwhile
    carol.send(f"REGISTER {PW}")
    assert carol.take() == ["ERROR registered carol has an account already"]
    assert h.work.hashes == 1  # type: ignore[attr-defined]
    # Nor do they spend the address's hashes (REGISTER and PASSWD, 3 in a row).
    bob.take()  # JOINED carol
    bob.send("PASSWD new-password-1", "PASSWD new-password-2")
    assert bob.take() == ["REGISTERED bob"] * 2


def test_register_and_passwd_are_rate_limited_per_address() -> None:
    """Each REGISTER or PASSWD costs a hash: 3 in a row per address, then one
    per 10 s, over all the address's connections; another address is not
    held back."""
    h = harness()
    limits = h.factory.accounts.limits
    assert (limits.hash_burst, limits.hash_every) == (3, 10.0)
    alice, bob = fresh(h, "10.0.0.1"), fresh(h, "10.0.0.1")
    alice.send("NICK alice", f"REGISTER {PW}", "PASSWD new-password")
    assert alice.take()[-2:] == ["REGISTERED alice"] * 2
    bob.send("NICK bob", f"REGISTER {PW}")
    assert bob.take()[-1] == "REGISTERED bob"
    bob.send("PASSWD new-password", "PING still-here")
    assert bob.take() == [
        "ERROR flood too many REGISTER and PASSWD from your address lately (each costs a "
        "password hash: 3 in a row, then one per 10 s); send PASSWD again in 10 s",
        "PONG still-here"]
    alice.take()  # JOINED bob
    h.clock.advance(4)
    alice.send(f"REGISTER {PW}")  # counted before the lookup
    assert alice.take_one().endswith("send REGISTER again in 6 s")
    assert h.work.hashes == 3  # type: ignore[attr-defined]
    carol = fresh(h, "10.0.0.2")
    carol.send("NICK carol", f"REGISTER {PW}")
    assert carol.take()[-1] == "REGISTERED carol"
    h.clock.advance(6)
    bob.take()  # JOINED carol
    bob.send("PASSWD new-password")
    assert bob.take() == ["REGISTERED bob"]
    bob.send("PASSWD newer-password")
    assert bob.take_one().startswith("ERROR flood ")
    assert h.work.hashes == 5  # type: ignore[attr-defined]


def test_register_under_required_is_the_operators() -> None:
    h = harness(Mode.REQUIRED)
    add(h, "alice")
    alice = login(h, "alice")
    alice.take()
    alice.send("REGISTER other-password")
    assert alice.take() == [f"ERROR registered {OPERATORS_ACCOUNTS_TEXT}"]
    # The password's length is checked first (docs/protocol.md, "Accounts").
    alice.send("REGISTER short")
    assert alice.take_one().startswith("ERROR weak-password ")
    # With the account removed by the operator, the same answer: only the
    # operator makes it again (rev20-docs F3: the docs said REGISTER would).
    h.store.remove("alice")  # type: ignore[attr-defined]
    alice.send("REGISTER other-password")
    assert alice.take() == [f"ERROR registered {OPERATORS_ACCOUNTS_TEXT}"]
    assert not h.store.exists("alice")  # type: ignore[attr-defined]


def test_passwd_changes_the_password() -> None:
    h = harness()
    add(h, "alice")
    alice = login(h, "alice")
    alice.take()
    alice.send("PASSWD new-password")
    assert alice.take() == ["REGISTERED alice"]
    alice.drop()
    old = fresh(h)
    old.send("NICK alice", f"PASS {PW}")
    assert old.take()[-1].startswith("RETRY bad-password ")
    login(h, "alice", "new-password")


def test_passwd_needs_an_account_proved_on_this_connection() -> None:
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob")
    bob.take()
    bob.send("PASSWD new-password")
    assert bob.take_one().startswith("ERROR not-registered ")
    add(h, "bob")  # the operator protects bob; this connection never proved it
    bob.send("PASSWD new-password")
    assert bob.take_one().startswith("ERROR not-registered ")
    bob.send(f"REGISTER {PW}")
    assert bob.take_one().startswith("ERROR registered ")


def test_the_accounts_state_is_let_go_once_online_with_nothing_to_keep() -> None:
    """Memory per idle connection (docs/fanout.md): no Login per idle user,
    but one kept where a password was proved, and one made again for
    REGISTER, after which PASSWD works on that connection."""
    h = harness()
    add(h, "alice")
    bob = fresh(h)
    bob.send("NICK bob")
    assert bob.take()[0] == "READY bob"
    assert bob.protocol.handshake is None  # so no Login either
    alice = login(h, "alice")
    handshake = alice.protocol.handshake
    assert handshake is not None and handshake.login is not None, "alice proved her password"
    bob.take()  # JOINED alice
    bob.send(f"REGISTER {PW}")
    assert bob.take() == ["REGISTERED bob"]
    assert bob.protocol.handshake is not None and bob.protocol.handshake.login is not None
    bob.send("PASSWD new-password")
    assert bob.take() == ["REGISTERED bob"]


def test_passwd_after_the_operator_reset_the_password_is_refused() -> None:
    """
    The operator resets a stolen password with the tool: the thief's session,
    still online, could PASSWD and take the account back.  PASSWD changes
    the password only while it is the one the session proved (compared in
    the same write), and a PASSWD of its own moves what it proved along.
    """
    h = harness()
    add(h, "alice")
    thief = login(h, "alice")
    thief.take()
    thief.send("PASSWD thiefs-password")  # its own change: it proves the new one
    assert thief.take() == ["REGISTERED alice"]
    thief.send("PASSWD thiefs-password-2")
    assert thief.take() == ["REGISTERED alice"]
    h.store.set_hash("alice", hash_password(b"operators-pw", **FAST))  # type: ignore[attr-defined]
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        thief.send("PASSWD thiefs-password-3", "PING after")
        assert thief.take() == [f"ERROR not-registered {PASSWORD_CHANGED_TEXT}", "PONG after"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("PASSWD refused" in formatEvent(e) for e in events)
    assert thief.user is not None  # the session stays, as documented
    thief.drop()
    login(h, "alice", "operators-pw").drop()
    # Removed and made again (the nick handed to someone else): the same.
    thief = login(h, "alice", "operators-pw")
    thief.take()
    h.store.remove("alice")  # type: ignore[attr-defined]
    add(h, "alice", "new-owners-pw")
    h.clock.advance(LoginLimits().hash_every)  # the address's hashes, used up above
    thief.send("PASSWD thiefs-password-4")
    assert thief.take() == [f"ERROR not-registered {PASSWORD_CHANGED_TEXT}"]
    thief.drop()
    login(h, "alice", "new-owners-pw")


def test_passwd_after_register_is_checked_against_the_registered_password() -> None:
    h = harness()
    bob = fresh(h)
    bob.send("NICK bob", f"REGISTER {PW}")
    assert bob.take()[-1] == "REGISTERED bob"
    h.store.set_hash("bob", hash_password(b"operators-pw", **FAST))  # type: ignore[attr-defined]
    bob.send("PASSWD new-password")
    assert bob.take() == [f"ERROR not-registered {PASSWORD_CHANGED_TEXT}"]


def test_passwd_and_register_after_the_operator_removed_the_account() -> None:
    """The nick has no account now: PASSWD says so, and REGISTER makes one,
    whatever this connection proved before (it said 'registered' while
    PASSWD said 'not-registered')."""
    h = harness()
    add(h, "Alice")
    alice = login(h, "Alice")
    alice.take()
    h.store.remove("alice")  # type: ignore[attr-defined]
    alice.send("PASSWD new-password")
    assert alice.take_one().startswith("ERROR not-registered ")
    alice.send("REGISTER new-password")
    assert alice.take() == ["REGISTERED Alice"]
    alice.send("PASSWD newer-password")
    assert alice.take() == ["REGISTERED Alice"]
    alice.drop()
    login(h, "Alice", "newer-password")


def test_register_runs_on_the_password_threads() -> None:
    h = harness(work=HeldWork())
    bob = fresh(h)
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]
    bob.take()
    bob.send(f"REGISTER {PW}", "PASSWD new-password")
    assert bob.take() == [] and not h.store.exists("bob")  # type: ignore[attr-defined]
    assert len(h.work.held) == 1  # type: ignore[attr-defined]  # one change at a time
    h.work.release()  # type: ignore[attr-defined]  # the lookup: no account yet
    assert bob.take() == [] and len(h.work.held) == 1  # type: ignore[attr-defined]
    h.work.release()  # type: ignore[attr-defined]  # the hash
    assert bob.take() == [] and len(h.work.held) == 1  # type: ignore[attr-defined]
    h.work.release()  # type: ignore[attr-defined]  # the write to the file
    assert bob.take() == ["REGISTERED bob"]  # and PASSWD is now running
    assert h.store.exists("bob")  # type: ignore[attr-defined]
    h.work.release()  # type: ignore[attr-defined]
    h.work.release()  # type: ignore[attr-defined]
    assert bob.take() == ["REGISTERED bob"]


def test_register_whose_connection_went_before_its_hash_stores_nothing() -> None:
    """The nick was free once the connection went, and someone else took it
    without a password: the late REGISTER must not give it an account."""
    h = harness(work=HeldWork())
    bob = fresh(h)
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]  # the lookup
    bob.take()
    bob.send(f"REGISTER {PW}")
    h.work.release()  # type: ignore[attr-defined]  # its lookup; its hash is held
    bob.drop()  # reset: the connection is gone at once, the nick free
    other = fresh(h)
    other.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]  # bob's hash, other's lookup
    assert other.take()[0] == "READY bob"
    h.work.release()  # type: ignore[attr-defined]  # anything left
    assert h.work.held == [] and not h.store.exists("bob")  # type: ignore[attr-defined]
    other.send("REGISTER other-password")
    h.work.release()  # type: ignore[attr-defined]  # the lookup
    h.work.release()  # type: ignore[attr-defined]  # the hash
    h.work.release()  # type: ignore[attr-defined]  # the write
    assert other.take() == ["REGISTERED bob"]


@pytest.mark.parametrize("line", [f"PASS {PW}", f"REGISTER {PW}", f"PASSWD {PW}"])
def test_accounts_off(line: str) -> None:
    h = Harness()  # no Accounts: off
    conn = h.connect()
    conn.take()
    conn.send(line)
    assert conn.take_one().startswith("ERROR accounts-off ")
    conn.send("NICK alice")
    assert conn.take()[0] == "READY alice"
    conn.send(line)
    assert conn.take_one().startswith("ERROR accounts-off ")


OPEN_HELP = {
    "PASS": "HELP PASS <password> - give your nick's password when the server asks for it "
            "(PASS <nick>)",
    "REGISTER": "HELP REGISTER <password> - protect the nick you hold with a password "
                "(8-256 bytes)",
    "PASSWD": "HELP PASSWD <new password> - change the password of the nick you hold",
}
ACCOUNTS_HELP = {
    Mode.OPEN: OPEN_HELP,
    Mode.REQUIRED: {
        **OPEN_HELP,
        "PASS": "HELP PASS <password> - give your nick's password when the server asks for "
                "it (PASS <nick>); here every nick needs an account and its password",
        "REGISTER": "HELP REGISTER <password> - not on this server: its accounts are made "
                    "by its operator",
    },
    Mode.OFF: {
        "PASS": "HELP PASS <password> - not on this server: it has no accounts",
        "REGISTER": "HELP REGISTER <password> - not on this server: it has no accounts",
        "PASSWD": "HELP PASSWD <new password> - not on this server: it has no accounts",
    },
}


@pytest.mark.parametrize("mode", list(Mode))
def test_help_says_what_the_account_verbs_do_under_the_servers_mode(mode: Mode) -> None:
    """rev13-proto LOW-3: HELP offered PASS, REGISTER and PASSWD as under
    open whatever --accounts was: under off each is ERROR accounts-off, and
    under required REGISTER is ERROR registered.  Still one line per
    command, in every state; HELP <verb> gives that verb's line."""
    h = Harness() if mode is Mode.OFF else harness(mode)  # off: no Accounts
    conn = fresh(h)
    conn.send("HELP")
    lines = conn.take()
    assert lines[-1] == "HELP"
    verbs = [line.split()[1] for line in lines[:-1]]
    assert verbs == ["NICK", "MSG", "DM", "USERS", "PAIR", "ACCEPT", "REJECT", "UNPAIR",
                     "PING", "PONG", "HELP", "BYE", "PASS", "REGISTER", "PASSWD"]
    assert lines[-4:-1] == list(ACCOUNTS_HELP[mode].values())
    for verb, line in ACCOUNTS_HELP[mode].items():
        conn.send(f"HELP {verb.lower()}")
        assert conn.take() == [line, "HELP"]
    if mode is Mode.REQUIRED:
        add(h, "bob")
        conn.send("NICK bob", f"PASS {PW}")
    else:
        conn.send("NICK bob")
    assert "READY bob" in conn.take()
    conn.send("HELP")  # online, the same
    assert conn.take() == lines


# -- failed attempts ---------------------------------------------------------------


LIMITS = LoginLimits(nick_burst=3, nick_every=60.0, nick_total_burst=3, nick_total_every=60.0,
                     address_burst=5, address_every=30.0, flood_delay=3.0)


def fail(h: Harness, nick: str, host: str = "127.0.0.1") -> Conn:
    conn = fresh(h, host)
    conn.send(f"NICK {nick}", "PASS wrong-password")
    return conn


def test_nick_limit_delays_then_bye_flood() -> None:
    h = harness(limits=LIMITS)
    add(h, "alice")
    for i in range(3):
        conn = fail(h, "alice", f"10.0.0.{i}")
        assert conn.take()[-1] == f"RETRY bad-password {BAD_PASSWORD_TEXT}"
    jobs = h.work.jobs  # type: ignore[attr-defined]
    conn = fresh(h, "10.0.0.9")
    conn.send("NICK alice", f"PASS {PW}")  # even the right password: not checked now
    assert conn.take() == ["PASS alice"]
    assert h.work.jobs == jobs + 1  # type: ignore[attr-defined]  # the lookup, no check
    conn.send("NICK alice")  # nothing more is handled while it waits
    assert conn.take() == []
    h.clock.advance(2.9)
    assert conn.take() == [] and not conn.transport.disconnecting
    h.clock.advance(0.1)
    assert conn.take() == ["BYE flood too many failed logins; try again later"]
    assert conn.transport.disconnecting
    # Another nick from the same addresses is not affected; alice after a minute is.
    fresh(h, "10.0.0.1").send("NICK bob")
    h.clock.advance(60)
    login(h, "alice")


def login_from(h: Harness, nick: str, host: str) -> list[str]:
    """What C{nick}'s owner, with the right password from C{host}, gets."""
    conn = fresh(h, host)
    conn.send(f"NICK {nick}", f"PASS {PW}")
    h.clock.advance(h.factory.accounts.limits.flood_delay)
    got = conn.take()
    conn.drop()
    assert got[0] == f"PASS {nick}"
    return got[1:]


def wrong(h: Harness, host: str, nick: str = "alice") -> str:
    """A wrong password for C{nick} from C{host} on a connection that then
    goes (one left open would count against the address's handshakes):
    the last line it got."""
    conn = fail(h, nick, host)
    got = conn.take()
    if not got[-1].startswith("RETRY"):  # over a limit: BYE flood after the delay
        h.clock.advance(h.factory.accounts.limits.flood_delay)
        got = conn.take()
    conn.drop()
    return got[-1]


def test_one_address_cannot_keep_a_nick_locked_for_its_owner() -> None:
    """rev13-attack 6: five wrong PASS from anywhere locked the owner out,
    and one address failing twice a minute (its own budget) kept the nick
    locked for good.  Now its failures lock that address (5, then one a
    minute); the owner from elsewhere gets in, for an hour of it; the
    nick-wide lock takes 50 failures from several addresses."""
    h = harness()
    add(h, "alice")
    limits = h.factory.accounts.limits
    for i in range(limits.nick_burst):
        assert wrong(h, f"10.0.0.{i}").startswith("RETRY bad-password")
    assert login_from(h, "alice", "10.9.9.9")[0] == "READY alice"  # the reviewer's case
    for _ in range(limits.nick_burst):
        assert wrong(h, "10.1.1.1").startswith("RETRY bad-password")
    assert wrong(h, "10.1.1.1").startswith("BYE flood")  # that address is locked
    for minute in range(60):  # as fast as its buckets let it
        h.clock.advance(limits.nick_every)
        assert wrong(h, "10.1.1.1").startswith("RETRY bad-password")
        if minute % 10 == 0:
            assert login_from(h, "alice", "10.9.9.9")[0] == "READY alice"
    assert login_from(h, "alice", "10.9.9.9")[0] == "READY alice"


def test_a_guesser_spread_over_addresses_still_meets_the_nick_limit() -> None:
    h = harness()
    add(h, "alice")
    limits = h.factory.accounts.limits
    hosts = [f"10.0.{i // limits.nick_burst}.{i % limits.nick_burst}" for i in range(
        limits.nick_total_burst)]
    for host in hosts:  # five failures from each of ten addresses
        assert wrong(h, host).startswith("RETRY bad-password")
    assert login_from(h, "alice", "10.9.9.9")[-1].startswith("BYE flood")  # the 51st
    h.clock.advance(limits.nick_total_every)
    assert login_from(h, "alice", "10.9.9.9")[0] == "READY alice"


def without_ports(logged: list[str], containing: str) -> list[str]:
    """The lines C{logged} that contain C{containing}, the ports left out."""
    return [re.sub(r":\d+\b", "", line) for line in logged if containing in line]


def test_too_many_failed_logins_is_logged_a_few_times_per_address(logged: list[str]) -> None:
    """rev11: the warn line, once a connection, was not limited: an address
    reconnecting within its connection rate wrote one a second.  At most 3
    per address in 10 s; the next says how many were left out."""
    h = harness(Mode.REQUIRED, limits=LIMITS)
    for i in range(5):
        fail(h, f"nick{i}", "10.0.0.1")
        fail(h, f"mick{i}", "10.0.0.2")
    over = [fail(h, "other", "10.0.0.1") for _ in range(10)]
    fail(h, "other", "10.0.0.2")  # another address: its own line
    h.clock.advance(3)
    assert all(conn.take()[-1].startswith("BYE flood ") for conn in over)
    h.clock.advance(10)
    fail(h, "other", "10.0.0.1")
    said = without_ports(logged, "too many failed logins")
    assert said == 3 * ["too many failed logins as other or from 10.0.0.1: closing"] + [
        "too many failed logins as other or from 10.0.0.2: closing",
        "too many failed logins as other or from 10.0.0.1: closing"
        " (7 similar lines from this address left out)",
    ]


def test_failed_logins_are_logged_a_few_times_per_address(logged: list[str]) -> None:
    """The info line of a wrong PASS, once a connection, was not limited
    (within the address's failure limit, 10 in a row; more from an exempt
    address or UNIX sockets): at most 3 per address in 10 s, as for "too
    many failed logins"; another address has its own."""
    h = harness(Mode.REQUIRED)
    for i in range(8):
        assert fail(h, f"nick{i}", "10.0.0.1").take()[-1].startswith("RETRY bad-password")
    fail(h, "other", "10.0.0.2")
    h.clock.advance(10)
    fail(h, "again", "10.0.0.1")
    said = without_ports(logged, "failed login as")
    assert said == [f"failed login as nick{i} from 10.0.0.1" for i in range(3)] + [
        "failed login as other from 10.0.0.2",
        "failed login as again from 10.0.0.1 (5 similar lines from this address left out)",
    ]


def test_failed_logins_are_logged_under_the_address_bucket_exempt_or_not(
        logged: list[str]) -> None:
    """An --exempt address is exempt from the limits, not from the log's:
    its lines are limited under its address bucket, as the factory's and
    the web gateway's lines are (AddressBook.log_key), so the IPv6 hosts of
    one --ipv6-prefix share a few lines, where each of them had its own."""
    from ipaddress import ip_network

    h = harness(Mode.REQUIRED)
    h.factory.accounts = Accounts(  # type: ignore[attr-defined]
        Mode.REQUIRED, h.factory.accounts.book, h.clock, h.work,  # type: ignore[attr-defined]
        exempt=(ip_network("2001:db8::/32"),), v6_prefix=48)
    for i in range(6):
        assert fail(h, f"nick{i}", f"2001:db8:1::{i + 1}").take()[-1].startswith(
            "RETRY bad-password")
    said = [line for line in logged if "failed login as" in line]
    assert len(said) == 3, said


def test_address_limit_covers_every_nick() -> None:
    h = harness(Mode.REQUIRED, limits=LIMITS)
    for i in range(5):
        assert fail(h, f"nick{i}", "10.0.0.1").take()[-1].startswith("RETRY bad-password ")
    over = fail(h, "other", "10.0.0.1")
    h.clock.advance(3)
    assert over.take()[-1].startswith("BYE flood ")
    assert fail(h, "other", "10.0.0.2").take()[-1].startswith("RETRY bad-password ")
    h.clock.advance(30)
    assert fail(h, "another", "10.0.0.1").take()[-1].startswith("RETRY bad-password ")


def checked_at_once(h: Harness, nicks: list[str], hosts: list[str]) -> list[str]:
    """Each nick from its host on a connection of its own, all asked; then
    every one's PASS (a wrong password) sent before any check has
    answered: what each got, once the checks and the flood delay are over,
    and how many were checked."""
    conns = []
    for nick, host in zip(nicks, hosts, strict=True):
        conn = fresh(h, host)
        conn.send(f"NICK {nick}")
        h.work.release()  # type: ignore[attr-defined]  # the lookup (under open)
        assert conn.take() == [f"PASS {nick}"]
        conns.append(conn)
    for conn in conns:
        conn.send("PASS wrong-password")
    checked = len(h.work.held)  # type: ignore[attr-defined]  # each check's read
    h.work.release()  # type: ignore[attr-defined]  # the reads
    h.work.release()  # type: ignore[attr-defined]  # the hashes
    h.clock.advance(h.factory.accounts.limits.flood_delay)
    answers = [" ".join(conn.take()[-1].split()[:2]) for conn in conns]
    assert answers.count("RETRY bad-password") == checked
    return answers


def test_parallel_attempts_on_one_nick_check_at_most_its_limit() -> None:
    """PASS lines for one nick on many connections (and addresses) at the
    same moment: the failure is counted when the check starts, so only the
    documented 5 from one address, 50 from all, are checked, not every one
    (64 were, before)."""
    h = harness(work=HeldWork())
    add(h, "alice")
    n = LoginLimits().nick_burst + 3
    answers = checked_at_once(h, ["alice"] * n, ["10.0.0.1"] * n)
    assert answers == ["RETRY bad-password"] * (n - 3) + ["BYE flood"] * 3
    h = harness(work=HeldWork())
    add(h, "alice")
    n = LoginLimits().nick_total_burst + 3
    answers = checked_at_once(h, ["alice"] * n, [f"10.0.{i // 250}.{i % 250}" for i in range(n)])
    assert answers == ["RETRY bad-password"] * (n - 3) + ["BYE flood"] * 3


def test_parallel_attempts_from_one_address_check_at_most_its_limit() -> None:
    # The address's share of the password queue (8) is below its failure
    # limit (10): lifted here, so that only the failures are counted.
    limits = replace(LoginLimits(), max_pending_per_address=100)
    h = harness(Mode.REQUIRED, work=HeldWork(), limits=limits)
    n = LoginLimits().address_burst + 3
    answers = checked_at_once(h, [f"nick{i}" for i in range(n)], ["10.0.0.1"] * n)
    assert answers == ["RETRY bad-password"] * (n - 3) + ["BYE flood"] * 3


def test_right_passwords_are_never_failures() -> None:
    """The failure counted when a check starts is given back when the
    password was right: an owner may log in any number of times."""
    h = harness(limits=LIMITS)
    add(h, "alice")
    for _ in range(LIMITS.nick_burst + 2):
        login(h, "alice").drop()
    accounts = h.factory.accounts
    assert accounts.by_nick.level("alice") == 0 and len(accounts.by_address) == 0


def test_over_limit_connection_that_leaves_is_forgotten() -> None:
    h = harness(limits=LIMITS)
    add(h, "alice")
    for _ in range(3):
        fail(h, "alice", "10.0.0.1")
    conn = fail(h, "alice", "10.0.0.2")
    conn.drop()
    assert h.clock.getDelayedCalls() == [] or all(
        not c.active() for c in h.clock.getDelayedCalls()
    )


def test_unix_socket_users_do_not_lock_each_other_out() -> None:
    """Ten wrong guesses from the socket (one bucket, "-", for all of its
    users) locked every socket user out, her right password too."""
    h = harness(limits=LIMITS)
    add(h, "alice")
    for i in range(LIMITS.address_burst * 2):
        add(h, f"x{i}")
        conn = fail(h, f"x{i}", None)  # type: ignore[arg-type]
        assert conn.take()[-1] == f"RETRY bad-password {BAD_PASSWORD_TEXT}"
    alice = fresh(h, None)  # type: ignore[arg-type]
    alice.send("NICK alice")
    assert alice.take() == ["PASS alice"]
    alice.send(f"PASS {PW}")
    assert alice.take()[0] == "READY alice"


def test_unix_socket_users_together_have_one_address_share_of_the_password_work() -> None:
    """No failure bucket for the socket, but one share of the password work:
    with none, 70 socket users' PASS lines (held in the queue) filled all 64
    jobs and a TCP user's right password got "the server is busy"."""
    limits = LoginLimits()
    h = harness(work=HeldWork(limit=limits.max_pending), limits=limits)
    share = limits.max_pending_per_address
    victim = asked(h, "victim", "10.0.0.2")
    crowd = [asked(h, f"nick{i}", None) for i in range(70)]  # on the socket
    for conn in crowd:
        conn.send(f"PASS {PW}")
    busy = ("ERROR flood too much password work from your address at once; "
            "send PASS again in a moment")
    assert [conn.take() for conn in crowd] == [[]] * share + [[busy]] * (70 - share)
    victim.send(f"PASS {PW}")  # another address: queued, not busy
    assert victim.take() == []
    h.work.release()  # type: ignore[attr-defined]  # the reads
    h.work.release()  # type: ignore[attr-defined]  # the hashes
    assert victim.take()[0] == "READY victim"
    assert [conn.take()[0] for conn in crowd[:share]] == [
        f"READY nick{i}" for i in range(share)]
    late = [asked(h, f"late{i}", None) for i in range(share)]
    for conn in late:  # the socket's whole share is free again: none busy
        conn.send(f"PASS {PW}")
    assert [conn.take() for conn in late] == [[]] * share
    h.work.release()  # type: ignore[attr-defined]  # the reads
    h.work.release()  # type: ignore[attr-defined]  # the hashes
    assert [conn.take()[0] for conn in late] == [f"READY late{i}" for i in range(share)]
    assert len(h.factory.accounts.by_address) == 0  # type: ignore[attr-defined]


def test_unix_socket_users_together_have_one_address_budget_of_new_hashes() -> None:
    """REGISTER and PASSWD from the socket: 3 hashes in a row for all its
    users together, then one per 10 s, as from one address (with none, the
    socket made hashes without bound); a TCP address keeps its own."""
    h = harness()
    users = [fresh(h, None) for _ in range(4)]  # type: ignore[arg-type]
    answers = []
    for i, conn in enumerate(users):
        conn.send(f"NICK u{i}", f"REGISTER {PW}")
        answers.append(conn.take()[-1])
    assert answers == ["REGISTERED u0", "REGISTERED u1", "REGISTERED u2",
        "ERROR flood too many REGISTER and PASSWD from your address lately (each costs a "
        "password hash: 3 in a row, then one per 10 s); send REGISTER again in 10 s"]
    for conn in users:
        conn.take()  # the JOINED lines of those after it
    users[0].send("PASSWD new-password")
    assert users[0].take_one().startswith("ERROR flood too many REGISTER and PASSWD ")
    assert h.work.hashes == 3  # type: ignore[attr-defined]
    carol = fresh(h, "10.0.0.2")
    carol.send("NICK carol", f"REGISTER {PW}")
    assert carol.take()[-1] == "REGISTERED carol"
    h.clock.advance(10)
    users[3].send(f"REGISTER {PW}")
    assert users[3].take()[-1] == "REGISTERED u3"


def test_default_limits_are_the_documented_ones() -> None:
    limits = LoginLimits()
    assert (limits.nick_burst, limits.nick_every) == (5, 60.0)
    assert (limits.address_burst, limits.address_every) == (10, 30.0)
    assert limits.flood_delay == 3.0
    assert (limits.max_pending, limits.threads) == (64, 2)
    assert limits.max_pending_per_address == 8
    assert (limits.hash_burst, limits.hash_every) == (3, 10.0)


# -- passwords are never logged or echoed ----------------------------------------------


def test_no_password_in_any_line_or_log_event(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = harness(limits=LIMITS, store=AccountStore(str(tmp_path / "a.sqlite3")))
        secrets_ = ["first-secret", "second-secret", "wrong-secret", "short", "x" * 300]
        bob = fresh(h)
        bob.send("NICK bob", f"REGISTER {secrets_[0]}", f"PASSWD {secrets_[1]}",
                 f"REGISTER {secrets_[0]}", "PASSWD short", f"PASSWD {secrets_[4]}")
        bob.drop()
        for _ in range(4):
            conn = fresh(h)
            conn.send("NICK bob", f"PASS {secrets_[2]}", "PASS short", "pass " + secrets_[2])
        h.clock.advance(5)
        conn = fresh(h)
        conn.send("NICK bob", "PASS second-secret")
        h.clock.advance(100)
        good = fresh(h)
        good.send("NICK bob", "PASS second-secret", "PASS second-secret")
        assert "READY bob" in good.take()
        sent = b"".join(c.transport.value() for c in h.conns).decode()
        logged = "\n".join(formatEvent(e) + repr(e) for e in events)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert "REGISTERED bob" in sent and "RETRY bad-password" in sent
    assert "failed login as bob" in logged
    for secret in secrets_:
        assert secret not in sent
        assert secret not in logged


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accounts", "required", "--db", ":memory:"], "needs a --db file"),
        (["--accounts", "sometimes"], "must be open, required or off"),
    ],
)
def test_accounts_options_refused(args: list[str], message: str) -> None:
    from twisted.python import usage

    from twisted_chat.server.service import Options

    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(args)


@pytest.mark.parametrize("mode", ["open", "required"])
def test_cluster_mode_keeps_the_accounts_in_redis(mode: str) -> None:
    """With --redis, accounts are on (no --db file needed) and in the
    cluster's Redis; the password threads start and stop with the node."""
    from twisted.internet.testing import MemoryReactorClock

    from twisted_chat.server.cluster.accounts import RedisBook
    from twisted_chat.server.cluster.service import ClusterService
    from twisted_chat.server.service import Options, makeService

    options = Options()
    options.parseOptions(["--accounts", mode, "--db", ":memory:",
                          "--redis", "redis://127.0.0.1:1/0", "--port", "tcp:0"])
    top = makeService(options, MemoryReactorClock())
    [node] = [s for s in top if isinstance(s, ClusterService)]
    accounts = node.factory.accounts
    assert accounts is not None and accounts.mode.value == mode
    assert isinstance(accounts.book, RedisBook)
    assert node.work is accounts.work


def test_cluster_mode_accounts_off() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from twisted_chat.server.cluster.service import ClusterService
    from twisted_chat.server.service import Options, makeService

    options = Options()
    options.parseOptions(["--accounts", "off", "--redis", "redis://127.0.0.1:1/0"])
    top = makeService(options, MemoryReactorClock())
    [node] = [s for s in top if isinstance(s, ClusterService)]
    assert node.factory.accounts is None and node.work is None


def test_accounts_option_default_is_open() -> None:
    from twisted_chat.server.service import Options

    options = Options()
    options.parseOptions([])
    assert options.config().accounts == "open"


def test_help_text_names_the_option_and_tls() -> None:
    from twisted_chat.server.service import Options

    text = " ".join(str(Options()).split())
    assert "--accounts=" in text
    assert "open" in text and "required" in text and "TLS" in text
    assert "python -m twisted_chat.accounts add" in text


# -- accounts out of reach (the cluster's Redis down, a file that cannot be read) ----------


class DownBook:
    """An AccountBook whose store cannot be reached: the cluster's."""

    retry_unavailable = True

    def __init__(self) -> None:
        self.calls = 0

    def _down(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.calls += 1
        return defer.fail(AccountsUnavailable("the cluster's Redis is out of reach"))

    get = add = set_hash = _down


def down_harness(mode: Mode) -> Harness:
    h = harness(mode)
    h.book = DownBook()
    h.factory.accounts = Accounts(mode, h.book, h.clock, h.work)
    return h


def test_open_nick_when_accounts_are_out_of_reach_is_retry_unavailable() -> None:
    h = down_harness(Mode.OPEN)
    conn = fresh(h)
    conn.send("NICK alice", "PING after")
    # Not READY: the nick might have an account; the lines after it wait, in order.
    assert conn.take() == [f"RETRY unavailable {UNAVAILABLE_TEXT}", "PONG after"]
    assert conn.user is None and "alice" not in h.factory.state.hub.online
    conn.send("PASS " + PW)  # nothing was asked
    assert conn.take_one().startswith("ERROR not-ready ")


def test_pass_when_accounts_are_out_of_reach_is_retry_unavailable_not_a_failure() -> None:
    h = down_harness(Mode.REQUIRED)
    unchecked_passwords_are_not_failures(h, f"RETRY unavailable {UNAVAILABLE_TEXT}")
    assert h.book.calls == LoginLimits().nick_burst + 2


def unchecked_passwords_are_not_failures(h: Harness, answer: str) -> None:
    """More PASS attempts than the failure limit allows, none of them
    checked: each is answered C{answer}, and none counts as a failure."""
    accounts = h.factory.accounts
    for _ in range(LoginLimits().nick_burst + 2):
        conn = fresh(h)
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
        conn.send(f"PASS {PW}")
        assert conn.take() == [answer]
        assert conn.user is None
        conn.send("PASS " + PW)  # the attempt is over: NICK again
        assert conn.take_one().startswith("ERROR not-ready ")
    assert accounts.by_nick.level("alice") == 0 and len(accounts.by_address) == 0


def test_register_and_passwd_when_accounts_are_out_of_reach_are_unavailable() -> None:
    h = harness()
    add(h, "alice")
    alice = login(h, "alice")
    alice.take()
    bob = fresh(h)
    bob.send("NICK bob")
    bob.take()
    h.factory.accounts.book = DownBook()
    alice.take()  # JOINED bob
    for conn, verb in ((alice, "PASSWD"), (bob, "REGISTER")):
        conn.send(f"{verb} new-password")
        line = conn.take_one()
        assert line.startswith("ERROR unavailable the accounts cannot be reached now")
    assert h.factory.accounts.book.calls == 2


def unreadable_harness(mode: Mode, tmp_path: Path) -> Harness:
    """One server whose accounts file cannot be read."""
    path = tmp_path / "accounts.sqlite3"
    path.write_bytes(b"this is not an SQLite file, let alone an accounts file" * 100)
    return harness(mode, store=AccountStore(str(path)))


def test_one_server_fails_closed_on_an_unreadable_file_open_nick_asks_the_password(
        tmp_path: Path) -> None:
    """The contract has no RETRY unavailable: without the file, the nick
    might have an account, so its password is asked, and the check fails."""
    h = unreadable_harness(Mode.OPEN, tmp_path)
    accounts = h.factory.accounts
    conn = fresh(h)
    conn.send("NICK alice", "PING after")
    assert conn.take() == ["PASS alice", "PONG after"]
    assert conn.user is None and "alice" not in h.factory.state.hub.online
    conn.send(f"PASS {PW}")
    assert conn.take() == [f"RETRY bad-password {UNCHECKED_TEXT}"]
    assert conn.user is None
    # Not a failed attempt: nothing was checked.
    assert accounts.by_nick.level("alice") == 0 and len(accounts.by_address) == 0


def test_one_server_fails_closed_on_an_unreadable_file_pass_is_bad_password(
        tmp_path: Path) -> None:
    h = unreadable_harness(Mode.REQUIRED, tmp_path)
    unchecked_passwords_are_not_failures(h, f"RETRY bad-password {UNCHECKED_TEXT}")


def gone_harness(mode: Mode, tmp_path: Path) -> tuple[Harness, Path]:
    """One server whose accounts file (with alice's account) was there at
    start-up (its check), and has gone since."""
    path = tmp_path / "chat.accounts.sqlite3"
    store = AccountStore(str(path))
    store.check()
    h = harness(mode, store=store)
    add(h, "alice")
    path.rename(tmp_path / "moved-away")
    return h, path


@pytest.mark.parametrize("mode", [Mode.OPEN, Mode.REQUIRED])
def test_one_server_fails_closed_when_its_file_has_gone(mode: Mode, tmp_path: Path) -> None:
    """
    The file moved away (a backup script), emptied, or out of the server's
    reach: it read as "no accounts", so alice's nick was anyone's, with
    nothing in the log, and a REGISTER made a new file with the taker's
    account.  Now it is the unreadable file's answer, logged as an error.
    """
    h, path = gone_harness(mode, tmp_path)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        conn = fresh(h)
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
        conn.send(f"PASS {PW}")
        assert conn.take() == [f"RETRY bad-password {UNCHECKED_TEXT}"]
        assert conn.user is None and "alice" not in h.factory.state.hub.online
        if mode is Mode.OPEN:
            bob = fresh(h)
            bob.send("NICK bob")
            assert bob.take() == ["PASS bob"]  # bob might have an account too
    finally:
        globalLogPublisher.removeObserver(events.append)
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert errors and all("it is gone" in text for text in errors), errors
    assert not path.exists()


def test_one_server_register_when_its_file_has_gone_makes_no_new_file(
        tmp_path: Path) -> None:
    h, path = gone_harness(Mode.OPEN, tmp_path)
    # Online as carol while the file was there (no account: READY at once).
    (tmp_path / "moved-away").rename(path)
    carol = fresh(h)
    carol.send("NICK carol")
    assert carol.take()[0] == "READY carol"
    path.rename(tmp_path / "moved-away")
    carol.send(f"REGISTER {PW}")
    assert carol.take() == [
        "ERROR not-registered the server could not store the password now; try again later"]
    assert not path.exists()


def test_the_books_say_which_answer_they_want() -> None:
    assert SQLiteBook.retry_unavailable is False
    assert RedisBook.retry_unavailable is True


# -- failure limits shared by a cluster's nodes ---------------------------------------


class Shared:
    """SharedFailures in a dict: what the other nodes counted too."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str | None], int] = {}
        self.full: set[str] = set()
        self.answers: list[defer.Deferred[bool]] = []
        self.down = False

    def take(self, nick: str, address: str | None) -> defer.Deferred[bool]:
        if self.down:
            return defer.fail(AccountsUnavailable("the cluster's Redis is out of reach"))
        if nick in self.full or address in self.full:
            return defer.succeed(False)
        self.counts[nick, address] = self.counts.get((nick, address), 0) + 1
        return defer.succeed(True)

    def give_back(self, nick: str, address: str | None) -> None:
        self.counts[nick, address] -= 1
        if not self.counts[nick, address]:
            del self.counts[nick, address]


def shared_harness() -> Harness:
    h = harness(limits=LIMITS)
    h.shared = Shared()  # type: ignore[attr-defined]
    h.factory.accounts = Accounts(  # type: ignore[attr-defined]
        Mode.OPEN, SQLiteBook(h.store, h.work.lookup), h.clock, h.work,  # type: ignore[attr-defined]
        LIMITS, shared=h.shared)  # type: ignore[attr-defined]
    return h


def test_failures_elsewhere_in_the_cluster_count_here() -> None:
    h = shared_harness()
    add(h, "alice")
    h.shared.full.add("alice")  # type: ignore[attr-defined]  # other nodes saw the failures
    conn = fresh(h, "10.0.0.9")
    conn.send("NICK alice", f"PASS {PW}")  # even the right password: not checked now
    assert conn.take() == ["PASS alice"]
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take() == ["BYE flood too many failed logins; try again later"]
    assert h.work.hashes == 0  # type: ignore[attr-defined]
    add(h, "carol")
    h.shared.full.add("10.0.0.8")  # type: ignore[attr-defined]  # and by address
    conn = fresh(h, "10.0.0.8")
    conn.send("NICK carol", f"PASS {PW}")
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take()[-1].startswith("BYE flood ")
    login(h, "carol")  # from another address
    # Refused by the cluster: not checked, so nothing stays counted here.
    accounts = h.factory.accounts
    assert accounts.by_nick.level("alice") == accounts.by_nick.level("carol") == 0
    assert len(accounts.by_address) == 0


def test_failures_here_are_counted_for_the_cluster() -> None:
    h = shared_harness()
    add(h, "alice")
    fail(h, "ALICE", "10.0.0.1")
    fail(h, "alice", "127.0.0.1")
    assert h.shared.counts == {  # type: ignore[attr-defined]
        ("alice", "10.0.0.1"): 1, ("alice", "127.0.0.1"): 1}
    login(h, "alice")  # a right password is not a failure
    assert sum(h.shared.counts.values()) == 2  # type: ignore[attr-defined]


def test_shared_counts_out_of_reach_leave_this_servers_own() -> None:
    h = shared_harness()
    add(h, "alice")
    add(h, "bob")
    h.shared.down = True  # type: ignore[attr-defined]
    login(h, "alice")
    for _ in range(LIMITS.nick_burst):
        assert fail(h, "bob").take()[-1].startswith("RETRY bad-password ")
    conn = fail(h, "bob")
    assert conn.take() == ["PASS bob"]
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take()[-1].startswith("BYE flood ")
