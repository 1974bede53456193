"""
The accounts side of a connection: C{NICK} -> C{PASS <nick>} -> C{PASS} ->
C{READY}, and C{REGISTER} / C{PASSWD} once online (docs/protocol.md, "Accounts").

L{Accounts} is the server-wide part: the mode, the C{twisted.cred} portal
(L{twisted_chat.server.accounts.cred}) over the accounts' L{AccountBook}
(the single server's file, or the cluster's Redis:
L{twisted_chat.server.accounts.records}), each address's share of
the password threads (L{twisted_chat.server.accounts.passwordwork}) and of the new
hashes, and the failure limits (L{twisted_chat.server.accounts.loginlimits}; in a
cluster, also counted in Redis: L{SharedFailures}).  L{Login} is one
connection's part; it talks to its connection only through the small
L{Connection} interface, so the connection layer needs a handful of lines
to use it.

The bounds and why: docs/accounts.md, "Never on the reactor thread, and
bounded", and docs/accounts.md, "Failure limits"; the numbers: L{LoginLimits}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.accounts.cred import AccountChecker, IAccount, TypedPassword, portal
from twisted_chat.server.accounts.hashing import hash_password, password_bytes, password_problem
from twisted_chat.server.accounts.loginlimits import (
    FailureLimiter,
    LoginLimits,
    SharedFailures,
    nick_address_key,
)
from twisted_chat.server.accounts.passwordwork import Work, WorkBusy
from twisted_chat.server.accounts.records import (
    Account,
    AccountBook,
    AccountExists,
    AccountsFull,
    AccountStoreError,
    AccountsUnavailable,
    NoSuchAccount,
    PasswordChanged,
)
from twisted_chat.server.config import Mode
from twisted_chat.server.limits.addresses import AddressBook, AddressPolicy, Network
from twisted_chat.wire import ErrorCode, LineError, nick_key

__all__ = ["Accounts", "Connection", "Login"]

_log = logs.logger("twisted_chat.server.accounts.login")

T = TypeVar("T")

# The answer to a failed login: the same text whether the password was
# wrong or (under --accounts required) the nick has no account.
BAD_PASSWORD_TEXT = "wrong password, or no account for that nick; send NICK again"


def unavailable_text(why: str = "") -> str:
    """The text of a C{RETRY unavailable}; C{why}: what happened to the
    cluster's store (C{state.StateUnavailable.why}: too slow, out of reach,
    it refused or lost the registration; "": unavailable).  (This module
    imports no node, hub or state: the accounts tool loads it.)"""
    why = why or "the chat's store is unavailable"
    return f"the chat cannot check that nick now ({why}); send NICK again in a moment"


# The cluster's answer to a NICK or PASS it cannot check now (its Redis is
# out of reach, or not a database it can run on): never a failed attempt,
# and it does not blame the accounts.  Only where the book says so
# (retry_unavailable); also a NICK without accounts (session.py).
UNAVAILABLE_TEXT = unavailable_text()
# One server's answer to a PASS it could not check (its protocol has no
# RETRY unavailable): the contract's RETRY bad-password, with this text.
UNCHECKED_TEXT = "the server could not check the password now; try again later"
# The answer to a PASSWD whose connection proved a password the account no
# longer has (the operator reset it, or removed the account and made it again).
PASSWORD_CHANGED_TEXT = ("the password was changed since you logged in; log in again "
                         "with the new one to change it")
# The answer to a password job over the address's share of the queue
# (LoginLimits.max_pending_per_address), the command's name after it.
ADDRESS_BUSY_TEXT = wire.PASSWORD_WORK + "; send {verb} again in a moment"
# The answer to a password job when the password threads hold all they may,
# the command's name after it.
SERVER_BUSY_TEXT = wire.SERVER_BUSY + "; send {verb} again in a moment"
# The answer to every REGISTER (of a valid password) under --accounts
# required, whether the nick has an account or not: the operator makes them.
OPERATORS_ACCOUNTS_TEXT = "on this server, accounts are made by its operator"
# The log says REGISTER is refused for --max-accounts at most this often.
FULL_LOG_EVERY = 600.0
# The one key all connections without an address (UNIX sockets) share for the
# password work and the new hashes (Accounts.work_key): never an address's.
UNIX_KEY = "unix"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One C{PASS} being checked: the failure counted for it in advance."""

    nick: str  # the nick's key
    address: str | None  # the address's failure key; None: exempt
    work: str | None  # the key of its share of the password work; None: exempt
    shared: bool = False  # counted in the cluster's buckets too


class Accounts:
    """The server-wide part of accounts; one per factory, absent when C{off}."""

    def __init__(
        self,
        mode: Mode,
        book: AccountBook,
        clock: IReactorTime,
        work: Work,
        limits: LoginLimits | None = None,
        exempt: tuple[Network, ...] = (),
        v6_prefix: int = 64,
        shared: SharedFailures | None = None,
        max_accounts: int = 100_000,
    ) -> None:
        """@param shared: the cluster's failure counts, besides this
            server's own (which answer at once, and count the failures
            made here).
        @param max_accounts: C{REGISTER} makes no account beyond this many
            (C{--max-accounts}; the operator's tool is not bound by it)."""
        assert mode is not Mode.OFF
        self.mode = mode
        self.max_accounts = max_accounts
        self._full_log = logs.Throttle(FULL_LOG_EVERY)  # REGISTER refused for it (full)
        self.failed_logins = 0  # wrong passwords so far (chat_failed_logins_total)
        self.book = book
        self.clock = clock
        self.work = work
        self.limits = limits = limits if limits is not None else LoginLimits()
        self.portal = portal(AccountChecker(book, work.run))
        self.by_nick = FailureLimiter(clock, limits.nick_total_burst, limits.nick_total_every)
        self.by_nick_address = FailureLimiter(clock, limits.nick_burst, limits.nick_every)
        self.by_address = FailureLimiter(clock, limits.address_burst, limits.address_every)
        # Not failures: the hashes REGISTER and PASSWD made, per address (the
        # same leaky bucket is a token bucket of hash_burst, one back per
        # hash_every seconds).
        self.hashes = FailureLimiter(clock, limits.hash_burst, limits.hash_every)
        # Lines an address can cause over and over (its "failed login", once
        # a wrong PASS; "too many failed logins", once a connection): at most
        # a few per address.
        self.repeats = logs.Repeats(clock)
        self._working: dict[str, int] = {}  # address -> its password jobs now
        # Only its address keys and --exempt are used (it is the rest of the
        # per-address limits' book, docs/security.md).
        self._addresses = AddressBook(AddressPolicy(exempt=exempt, v6_prefix=v6_prefix), clock)
        self.shared = shared

    def address_key(self, host: str | None) -> str | None:
        """The failure limit's key for C{host}; C{None}: not limited (exempt).
        A connection with no address (a UNIX socket) has no failure bucket
        of an address (docs/security.md): all its users would share one
        (behind a local TLS terminator or a bouncer, one guesser would lock
        out every one of them), and who may connect to the socket is decided
        by its file's permissions.  The per-nick limits still hold."""
        if host is None:
            return None
        if self._addresses.exempt(host):
            return None
        return self._addresses.key(host)

    def log_key(self, host: str | None) -> str:
        """The key C{host}'s failed-login lines are limited under
        (L{repeats}): the one rule of the server's and the web gateway's
        lines, L{AddressBook.log_key} (its address bucket's, exempt or not;
        the UNIX sockets' together)."""
        return self._addresses.log_key(host)

    def work_key(self, host: str | None) -> str | None:
        """The key of C{host}'s share of the password work and of its new
        hashes (L{start_work}, L{hash_wait}); C{None}: not limited (exempt).
        Unlike the failure limit, the connections without an address (UNIX
        sockets) are held to these together, as one address (L{UNIX_KEY}):
        they lock nobody out, and without them the socket's users could fill
        the whole queue and turn every other address's C{PASS} away as busy
        (and make hashes without bound)."""
        if host is None:
            return UNIX_KEY
        return self.address_key(host)

    def reserve(self, nick: str, host: str | None) -> Attempt | None:
        """
        An attempt at C{nick} from C{host}, its failure counted now, before
        the check (so that attempts made meanwhile see it), or C{None} when
        the nick's, the nick's from this address or the address's bucket
        is full.  Each attempt is either
        a failure, or L{give_back} is called for it.
        """
        key = nick_key(nick)
        address = self.address_key(host)
        pair = nick_address_key(key, address)
        if not self.by_nick.allows(key) or not self.by_nick_address.allows(pair) or (
            address is not None and not self.by_address.allows(address)
        ):
            return None
        self.by_nick.failed(key)
        self.by_nick_address.failed(pair)
        if address is not None:
            self.by_address.failed(address)
        return Attempt(key, address, self.work_key(host))

    def give_back(self, attempt: Attempt) -> None:
        """The attempt was not a failure: the password was right, or nothing
        could be checked."""
        self.by_nick.forgive(attempt.nick)
        self.by_nick_address.forgive(nick_address_key(attempt.nick, attempt.address))
        if attempt.address is not None:
            self.by_address.forgive(attempt.address)
        if attempt.shared and self.shared is not None:
            self.shared.give_back(attempt.nick, attempt.address)

    def hash_wait(self, address: str | None) -> float:
        """How many seconds until C{address} (C{None}: exempt, not limited)
        may have one more new hash made (C{REGISTER}, C{PASSWD}); 0: now."""
        if address is None or self.hashes.allows(address):
            return 0.0
        return (self.hashes.level(address) - (self.hashes.burst - 1)) * self.hashes.every

    def spend_hash(self, address: str | None) -> float:
        """L{hash_wait}, and when it is 0, the hash counted now."""
        wait = self.hash_wait(address)
        if not wait and address is not None:
            self.hashes.failed(address)
        return wait

    def unspend_hash(self, address: str | None) -> None:
        """The hash L{spend_hash} counted was not made after all."""
        if address is not None:
            self.hashes.forgive(address)

    def start_work(self, address: str | None) -> bool:
        """
        Whether C{address} (C{None}: exempt) may start one more password job
        (a C{PASS} check, a C{REGISTER} or C{PASSWD} hash): false when it
        has L{LoginLimits.max_pending_per_address} already.  Each true is
        followed by one L{end_work}.
        """
        if address is None:
            return True
        working = self._working.get(address, 0)
        if working >= self.limits.max_pending_per_address:
            return False
        self._working[address] = working + 1
        return True

    def end_work(self, address: str | None) -> None:
        if address is None:
            return
        working = self._working.pop(address) - 1
        if working:
            self._working[address] = working

    def login(self, connection: Connection) -> Login:
        return Login(self, connection)

    def full(self, nick: str) -> None:
        """A C{REGISTER} was refused for C{--max-accounts}: logged at most
        once per L{FULL_LOG_EVERY} seconds (each refusal is a peer's line),
        with how many were refused meanwhile."""
        untold = self._full_log.allow(self.clock.seconds())
        if untold is None:
            return
        _log.warn("account {nick} not made: there are --max-accounts {most} accounts "
                  "(REGISTER refused until some are removed; said once per {every} s){since}",
                  nick=nick, most=self.max_accounts, every=FULL_LOG_EVERY,
                  since=f"; {untold} more refused since the last such line" if untold else "")


class Connection(Protocol):
    """What L{Login} needs from its connection."""

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed."""

    @property
    def host(self) -> str | None: ...

    @property
    def address(self) -> str: ...

    def online_nick(self) -> str | None:
        """The nick the connection holds, or C{None} before C{READY}."""

    def holder(self, nick: str) -> str | None:
        """The nick of the user online as C{nick} (without regard to case),
        as its owner spelled it, or C{None} when nobody is."""

    def admit(self, nick: str) -> defer.Deferred[bool]:
        """
        Bring the connection online as C{nick}: fires true once it is (its
        C{READY} written), or false once C{RETRY taken} is (the nick was
        taken meanwhile).
        """

    def write(self, data: bytes) -> None: ...

    def close(self, reason: str, text: str) -> None:
        """Say C{BYE reason text} and close."""

    def discard_input(self) -> None:
        """Until it closes, drop what the connection sends: nothing more is
        handled, and nothing held."""


# What a Login method returns: None when its answer is written already, else
# a Deferred that fires (never fails) once it is.  The connection handles no
# more of its lines until then, so a connection's lines are answered in order
# (NICK then PING gets PASS or READY before PONG, as without accounts).
Answer = defer.Deferred[Any] | None


def retry_taken(nick: str) -> bytes:
    """C{RETRY taken}: C{nick} is the online user's, as its owner spelled it
    (chat/1: the server always writes a nick so), not as the NICK had it."""
    return wire.line("RETRY", "taken", text=f"{nick} is online already")


def _cancelled(failure: Failure) -> Failure | None:
    """The connection went before its C{BYE flood}: nothing to do."""
    return None if isinstance(failure.value, defer.CancelledError) else failure


class Login:
    """
    One connection's accounts state.  Its methods are called for lines that
    passed the wire checks; a rule broken raises L{LineError} (one C{ERROR}).
    """

    def __init__(self, accounts: Accounts, connection: Connection) -> None:
        self._accounts = accounts
        self._conn = connection
        self._asked: str | None = None  # the nick whose password was asked for
        self._closing: defer.Deferred[None] | None = None  # BYE flood to come
        # The key of the nick this connection proved it may use (by its
        # password, or by registering it), the only one it may PASSWD, and
        # the hash it proved: PASSWD changes the password only while that is
        # still the account's (not once the operator has reset it).
        self._proved: tuple[str, str] | None = None

    @property
    def asked(self) -> str | None:
        """The nick whose password the server asked for (C{PASS <nick>}) and
        waits for; C{None} when no password is asked."""
        return self._asked

    @property
    def idle(self) -> bool:
        """Whether this holds nothing a fresh one would not: no nick asked, no
        pending C{BYE flood}, no password proved."""
        return self._asked is None and self._closing is None and self._proved is None

    def lost(self) -> None:
        """The connection is gone: drop a pending C{BYE flood}."""
        closing, self._closing = self._closing, None
        if closing is not None and not closing.called:
            closing.cancel()

    # -- before READY ---------------------------------------------------------

    def nick(self, nick: str) -> Answer:
        """A well-formed C{NICK} before C{READY}."""
        self._asked = None
        holder = self._conn.holder(nick)
        if holder is not None:
            self._conn.write(retry_taken(holder))
            return None
        if self._accounts.mode is Mode.REQUIRED:
            # Every nick, as typed (the account's spelling would tell that
            # it exists), so that which ones exist is not told.
            self._ask(nick)
            return None
        lookup = self._accounts.book.get(nick)
        lookup.addCallbacks(self._looked_up, self._lookup_failed, callbackArgs=(nick,),
                            errbackArgs=(nick,))
        return lookup

    def _looked_up(self, account: object, nick: str) -> Answer:
        if self._conn.closing:
            return None
        if isinstance(account, Account):
            # As its owner spelled it (chat/1 writes every nick so); under
            # open, that it has an account is no secret.
            self._ask(account.nick)
            return None
        if account is not None:  # could not be looked up: it might have one
            self._ask(nick)
            return None
        return self._conn.admit(nick)

    def _lookup_failed(self, failure: Failure, nick: str) -> Answer:
        # Not READY: without the accounts, the nick might have one.
        _store_failed(failure, "could not look up the account of {nick}", nick)
        if self._accounts.book.retry_unavailable:
            self._unavailable()
            return None
        # One server: fail closed, as if it had one (its check fails too).
        return self._looked_up(True, nick)

    def _unavailable(self) -> None:
        if not self._conn.closing:
            self._conn.write(wire.line("RETRY", "unavailable", text=UNAVAILABLE_TEXT))

    def _ask(self, nick: str) -> None:
        self._asked = nick
        self._conn.write(wire.line("PASS", nick))

    def password(self, password: str) -> Answer:
        """C{PASS}: the rest of the line is the password."""
        nick = self._asked
        if nick is None:
            raise LineError(ErrorCode.NOT_READY, "no password was asked for; send NICK first")
        typed = password.encode("utf-8")
        secret = password_bytes(password)
        # Weak only if no account can have it: set now (its NFC form) or
        # before passwords were normalised (as typed: TypedPassword).
        problem = password_problem(secret) and password_problem(typed)
        if problem:
            raise LineError(ErrorCode.WEAK_PASSWORD, problem)
        credentials = TypedPassword(nick.encode("utf-8"), secret, typed)
        accounts = self._accounts
        attempt = accounts.reserve(nick, self._conn.host)
        if attempt is None:
            return self._flooded(nick)
        if accounts.work.full:
            accounts.give_back(attempt)
            raise LineError(ErrorCode.FLOOD, SERVER_BUSY_TEXT.format(verb="PASS"))
        if not accounts.start_work(attempt.work):
            accounts.give_back(attempt)
            raise LineError(ErrorCode.FLOOD, ADDRESS_BUSY_TEXT.format(verb="PASS"))
        if accounts.shared is None:
            return self._check(attempt, nick, credentials)
        shared = accounts.shared.take(attempt.nick, attempt.address)
        shared.addErrback(self._shared_failed)
        shared.addCallback(self._shared_said, attempt, nick, credentials)
        return shared

    def _shared_failed(self, failure: Failure) -> None:
        # The cluster's counts cannot be used: this server's own still hold,
        # and the check itself will say whether the accounts can be reached.
        _log.debug("could not count in the cluster's failed logins: {e}",
                   e=failure.getErrorMessage())

    def _shared_said(
        self, taken: bool | None, attempt: Attempt, nick: str, credentials: TypedPassword
    ) -> Answer:
        """C{taken}: whether the cluster's buckets had room (and now count
        the attempt); C{None}: they could not be asked."""
        if taken:
            attempt = replace(attempt, shared=True)
        if self._conn.closing or taken is False:
            self._accounts.end_work(attempt.work)
            self._accounts.give_back(attempt)  # not checked
            return None if self._conn.closing else self._flooded(nick)
        return self._check(attempt, nick, credentials)

    def _check(self, attempt: Attempt, nick: str, credentials: TypedPassword) -> Answer:
        d = self._accounts.portal.login(credentials, None, IAccount)
        d.addBoth(_work_ended, self._accounts, attempt.work)
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(attempt,),
                       errbackArgs=(nick, attempt))
        return d

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]], attempt: Attempt) -> Answer:
        self._asked = None
        self._accounts.give_back(attempt)  # the right password: no failure
        nick: str = result[1].nick
        password_hash: str = result[1].password_hash
        if self._conn.closing:
            return None
        return self._conn.admit(nick).addCallback(self._admitted, nick, password_hash)

    def _admitted(self, admitted: bool, nick: str, password_hash: str) -> None:
        if admitted:
            self._proved = (nick_key(nick), password_hash)
            _log.info("{nick} logged in with its password from {address}", nick=nick,
                      address=self._conn.address)

    def _login_failed(self, failure: Failure, nick: str, attempt: Attempt) -> None:
        self._asked = None
        wrong = isinstance(failure.value, UnauthorizedLogin)
        if not wrong:
            self._accounts.give_back(attempt)  # nothing was checked: not a failure
        else:
            self._accounts.failed_logins += 1  # for the metrics
        if self._conn.closing:
            return  # a wrong password counts all the same
        if wrong:
            # One a wrong PASS: at most a few per address, as for _flooded.
            self._accounts.repeats.log(
                _log, LogLevel.info, self._log_key(), "login-failed",
                "failed login as {nick} from {address}", nick=nick, address=self._conn.address)
            self._conn.write(wire.line("RETRY", "bad-password", text=BAD_PASSWORD_TEXT))
        elif isinstance(failure.value, WorkBusy):
            self._asked = nick
            self._conn.write(wire.error(ErrorCode.FLOOD, SERVER_BUSY_TEXT.format(verb="PASS")))
        else:
            # Not a failed attempt: nothing was checked.
            _store_failed(failure, "could not check the password of {nick}", nick)
            if self._accounts.book.retry_unavailable:
                self._unavailable()
            else:
                self._conn.write(wire.line("RETRY", "bad-password", text=UNCHECKED_TEXT))

    def _log_key(self) -> str:
        """The key its connection's log lines are limited under."""
        return self._accounts.log_key(self._conn.host)

    def _flooded(self, nick: str) -> Answer:
        """Over a failure limit: no check; after the delay, C{BYE flood}."""
        # One line a connection: one address reconnecting within its
        # connection rate would write one a second, so a few per address
        # (its failure limit's bucket) in 10 s, then how many were left out.
        self._accounts.repeats.log(
            _log, LogLevel.warn, self._log_key(), "login-flood",
            "too many failed logins as {nick} or from {address}: closing",
            nick=nick, address=self._conn.address)
        self._asked = None
        closing = task.deferLater(
            self._accounts.clock, self._accounts.limits.flood_delay,
            self._conn.close, "flood", "too many failed logins; try again later",
        )
        closing.addErrback(_cancelled)
        self._closing = closing
        # Nothing more is handled meanwhile, and nothing is held for it
        # either: what it sends is read and dropped (InputHold.discard).
        self._conn.discard_input()
        return closing

    # -- after READY --------------------------------------------------------------

    def register(self, password: str) -> Answer:
        """C{REGISTER}: give the nick this connection holds an account."""
        nick = self._online()
        secret = self._secret(password)
        if self._accounts.mode is Mode.REQUIRED:
            raise LineError(ErrorCode.REGISTERED, OPERATORS_ACCOUNTS_TEXT)
        accounts = self._accounts
        address = accounts.work_key(self._conn.host)
        wait = accounts.hash_wait(address)
        if wait:
            raise _too_many_hashes("REGISTER", wait, accounts.limits)
        # Not answered from what this connection proved: the operator may
        # have removed the account since.  Looked up before any hash, so
        # that a REGISTER repeated for a nick with an account costs a read,
        # not a hash (nor one of the address's hashes); the book's add
        # stays the atomic check (AccountExists) for REGISTERs that race.
        lookup = accounts.book.get(nick)
        lookup.addCallbacks(self._register_looked_up, self._not_hashed,
                            callbackArgs=(nick, secret, address), errbackArgs=(nick,))
        return lookup

    def _register_looked_up(
        self, account: Account | None, nick: str, secret: bytes, address: str | None
    ) -> Answer:
        if self._conn.closing:
            return None
        if account is not None:
            self._conn.write(wire.error(ErrorCode.REGISTERED, f"{nick} has an account already"))
            return None
        accounts = self._accounts
        wait = accounts.spend_hash(address)  # again: others of the address may have meanwhile
        if wait:
            error = _too_many_hashes("REGISTER", wait, accounts.limits)
            self._conn.write(wire.error(error.code, error.text))
            return None
        return self._change(partial(accounts.book.add, most=accounts.max_accounts), nick,
                            secret, address, "REGISTER")

    def passwd(self, password: str) -> Answer:
        """C{PASSWD}: change the password of the account of the nick held."""
        nick = self._online()
        secret = self._secret(password)
        if self._proved is None or self._proved[0] != nick_key(nick):
            raise LineError(
                ErrorCode.NOT_REGISTERED,
                f"you did not log in to {nick} with a password: REGISTER it first "
                "(or, if it has an account, log in again with its password)",
            )
        accounts = self._accounts
        address = accounts.work_key(self._conn.host)
        wait = accounts.spend_hash(address)
        if wait:
            raise _too_many_hashes("PASSWD", wait, accounts.limits)
        # Compared with the account's hash in the same atomic step as the change.
        store = partial(accounts.book.set_hash, expected=self._proved[1])
        return self._change(store, nick, secret, address, "PASSWD")

    def _online(self) -> str:
        nick = self._conn.online_nick()
        assert nick is not None  # the connection lets REGISTER/PASSWD through only online
        return nick

    def _secret(self, password: str) -> bytes:
        """What C{password} is hashed as (L{password_bytes}), or the
        C{WEAK_PASSWORD} error if that is out of bounds."""
        secret = password_bytes(password)
        problem = password_problem(secret)
        if problem is not None:
            raise LineError(ErrorCode.WEAK_PASSWORD, problem)
        return secret

    def _change(
        self, store: Callable[[str, str], defer.Deferred[None]], nick: str, secret: bytes,
        address: str | None, verb: str,
    ) -> Answer:
        """Hash C{secret} on the password threads (one job of C{address}),
        then C{store} the hash if the connection is still open (so still
        holds C{nick}).  Its answer is written, never raised: this may run
        once a lookup is over."""
        accounts = self._accounts
        if self._conn.closing:
            accounts.unspend_hash(address)
            return None
        if not accounts.start_work(address):
            accounts.unspend_hash(address)
            self._conn.write(wire.error(ErrorCode.FLOOD, ADDRESS_BUSY_TEXT.format(verb=verb)))
            return None
        try:
            d = accounts.work.run(hash_password, secret)
        except WorkBusy:
            accounts.end_work(address)
            accounts.unspend_hash(address)
            self._conn.write(wire.error(ErrorCode.FLOOD, SERVER_BUSY_TEXT.format(verb=verb)))
            return None
        d.addBoth(_work_ended, accounts, address)
        d.addCallback(self._store, store, nick)
        d.addCallbacks(self._changed, self._change_failed, callbackArgs=(nick,),
                       errbackArgs=(nick,))
        return d

    def _not_hashed(self, failure: Failure, nick: str) -> None:
        """The account could not be looked up: no hash made, and the answer
        is the one a failed store gets."""
        if not self._conn.closing:
            self._change_failed(failure, nick)

    def _store(
        self, password_hash: str, store: Callable[[str, str], defer.Deferred[None]], nick: str
    ) -> defer.Deferred[str]:
        """Store the hash; fires with it once stored."""
        if self._conn.closing:
            # Its nick is free since the connection went (someone else may
            # hold it, without a password), and nobody is told the answer.
            raise _Closed()
        return store(nick, password_hash).addCallback(lambda _: password_hash)

    def _changed(self, password_hash: str, nick: str) -> None:
        self._proved = (nick_key(nick), password_hash)
        _log.info("account {nick}: password set", nick=nick)
        self._conn.write(wire.line("REGISTERED", nick))

    def _change_failed(self, failure: Failure, nick: str) -> None:
        value = failure.value
        if isinstance(value, _Closed):
            _log.info("account {nick}: nothing changed, the connection closed first", nick=nick)
        elif isinstance(value, AccountExists):
            self._conn.write(wire.error(ErrorCode.REGISTERED, f"{nick} has an account already"))
        elif isinstance(value, AccountsFull):
            self._accounts.full(nick)
            self._conn.write(wire.error(
                ErrorCode.SERVER_FULL,
                "this server keeps no more accounts; ask its operator to remove unused ones"))
        elif isinstance(value, NoSuchAccount):
            self._conn.write(wire.error(ErrorCode.NOT_REGISTERED, f"{nick} has no account"))
        elif isinstance(value, PasswordChanged):
            _log.info("account {nick}: PASSWD refused, its password was changed since "
                      "this connection proved it", nick=nick)
            self._conn.write(wire.error(ErrorCode.NOT_REGISTERED, PASSWORD_CHANGED_TEXT))
        elif isinstance(value, AccountsUnavailable):
            # The cluster's answer to a command Redis could not take.
            _store_failed(failure, "account {nick}: could not set the password", nick)
            self._conn.write(wire.error(
                ErrorCode.UNAVAILABLE,
                f"{wire.ACCOUNTS_UNAVAILABLE} now; send it again in a moment"))
        else:
            _store_failed(failure, "account {nick}: could not set the password", nick)
            self._conn.write(wire.error(
                ErrorCode.NOT_REGISTERED,
                "the server could not store the password now; try again later"))


def _too_many_hashes(verb: str, wait: float, limits: LoginLimits) -> LineError:
    """The answer to a C{REGISTER} or C{PASSWD} over the address's new hashes."""
    return LineError(
        ErrorCode.FLOOD,
        f"{wire.ADDRESS_HASHES} (each costs a password hash: {limits.hash_burst} in a "
        f"row, then one per {limits.hash_every:g} s); "
        f"send {verb} again in {math.ceil(round(wait, 6))} s",
    )


def _work_ended(result: T, accounts: Accounts, address: str | None) -> T:
    """A password job of C{address} is over (L{Accounts.start_work})."""
    accounts.end_work(address)
    return result


class _Closed(Exception):
    """A C{REGISTER}'s or C{PASSWD}'s connection closed before its hash was made."""


def _store_failed(failure: Failure, what: str, nick: str) -> None:
    """Log a store that failed: one line for a store that said why (an
    outage is logged by the cluster once: only at debug here), a traceback
    for anything else."""
    value = failure.value
    if isinstance(value, AccountsUnavailable):
        _log.debug(what + ": {error}", nick=nick, error=str(value))
    elif isinstance(value, AccountStoreError):
        _log.error(what + ": {error}", nick=nick, error=str(value))
    else:
        _log.failure(what, failure, nick=nick)
