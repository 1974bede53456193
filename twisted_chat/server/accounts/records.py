"""
What every account store shares (docs/accounts.md, "Where accounts live"):
the L{Account} record, the errors, and L{AccountBook}, the server's view
of a store.  The file's store is L{twisted_chat.server.accounts.store}, the
cluster's is L{twisted_chat.server.cluster.accounts}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer

__all__ = [
    "Account",
    "AccountAdmin",
    "AccountBook",
    "AccountExists",
    "AccountStoreError",
    "AccountsFull",
    "AccountsUnavailable",
    "NoSuchAccount",
    "PasswordChanged",
]


class AccountStoreError(Exception):
    """The accounts file cannot be used; C{str()} is one sentence naming it."""


class AccountsUnavailable(AccountStoreError):
    """The accounts cannot be reached now (the cluster's Redis is out of reach)."""


class AccountExists(Exception):
    """The nick has an account already."""


class NoSuchAccount(Exception):
    """The nick has no account."""


class PasswordChanged(Exception):
    """The account's password is not the one the caller proved any more: the
    operator changed it, or removed the account and made it again."""


class AccountsFull(Exception):
    """There are C{--max-accounts} accounts already: C{REGISTER} makes no more."""


@dataclass(frozen=True, slots=True)
class Account:
    nick: str  # as its owner spelled it
    password_hash: str
    created: float
    changed: float


class AccountBook(Protocol):
    """
    Where the server's accounts live, as the server uses them: three calls
    that return at once, with a C{Deferred}, and never block the reactor.
    L{twisted_chat.server.accounts.store.SQLiteBook} is the single server's
    file (read and written on the password threads); the cluster's is in
    Redis (L{twisted_chat.server.cluster.accounts.RedisBook}).  Hashing is
    not the book's job: the caller hashes (on the password threads) and
    hands it the hash.

    A store that cannot be reached fails with L{AccountStoreError}
    (L{AccountsUnavailable} when it is out of reach for now).
    """

    #: How a C{NICK} or C{PASS} the book could not answer is answered.
    #: C{True}: C{RETRY unavailable}, the cluster's addition to the protocol
    #: (docs/protocol.md).  C{False}: as the protocol has it for one server,
    #: failing closed with the contract's own answers: the password is asked
    #: (C{NICK}), C{RETRY bad-password} (C{PASS}).  Never C{READY}.
    retry_unavailable: bool

    def get(self, nick: str) -> defer.Deferred[Account | None]:
        """The account of C{nick} (in any case), or C{None}."""

    def add(
        self, nick: str, password_hash: str, most: int | None = None
    ) -> defer.Deferred[None]:
        """Create the account, atomically: fails with L{AccountExists} if the
        nick (in any case) has one, however many try at once; with
        L{AccountsFull} if there are C{most} accounts already (C{None}: no
        bound), counted atomically with the creation."""

    def set_hash(
        self, nick: str, password_hash: str, expected: str | None = None
    ) -> defer.Deferred[None]:
        """Replace the hash of the nick's account, atomically: fails with
        L{NoSuchAccount} if it has none (never re-creates a removed one);
        given C{expected}, with L{PasswordChanged} if the account's hash is
        not that one any more (compared in the same atomic step: a session
        cannot change a password the operator has reset since it proved
        the old one)."""


class AccountAdmin(AccountBook, Protocol):
    """What the operator's tool needs besides (C{python -m twisted_chat.accounts})."""

    def remove(self, nick: str) -> defer.Deferred[None]:
        """Delete the account; fails with L{NoSuchAccount} if there is none."""

    def list(self) -> defer.Deferred[list[Account]]:
        """Every account, sorted by nick without regard to case."""
