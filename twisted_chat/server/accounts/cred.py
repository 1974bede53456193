"""
The accounts in C{twisted.cred} (docs/accounts.md, "twisted.cred"):
L{AccountChecker} is an C{ICredentialsChecker} for C{IUsernamePassword},
L{AccountRealm} turns the avatar ID (the nick as its account spells it)
into an L{IAccount}, and L{portal} puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from twisted_chat.server.accounts.hashing import dummy_hash, verify_password
from twisted_chat.server.accounts.records import Account, AccountBook

__all__ = ["AccountChecker", "AccountRealm", "IAccount", "TypedPassword", "portal"]


class IAccount(Interface):
    """The avatar of a login: the account the password opened."""

    nick = Attribute("The nick as the account spells it.")
    password_hash = Attribute(
        "The hash the password was checked against: what the login proved "
        "(a PASSWD changes the password only while it is still the account's).")


@implementer(IAccount)
@dataclass(frozen=True, slots=True)
class LoggedIn:
    nick: str
    password_hash: str


class AvatarId(str):
    """
    What L{AccountChecker} fires with: the nick as its account spells it (a
    C{str}, the avatar ID of C{twisted.cred}), carrying the hash the
    password was checked against, for the realm's L{LoggedIn}.
    """

    password_hash: str

    def __new__(cls, nick: str, password_hash: str) -> AvatarId:
        self = super().__new__(cls, nick)
        self.password_hash = password_hash
        return self


class TypedPassword(UsernamePassword):
    """
    A login's nick and password (what is hashed: L{hashing.password_bytes}), with
    the password's bytes as typed, when they differ: an account whose
    password was set before passwords were normalised, in another form
    (NFD, say), is checked against those too (docs/accounts.md, "The
    password's form").
    """

    def __init__(self, username: bytes, password: bytes, typed: bytes) -> None:
        super().__init__(username, password)
        self.typed = typed


@implementer(ICredentialsChecker)
class AccountChecker:
    """
    Checks a nick and password against an L{AccountBook}; the avatar ID is
    the nick as its account spells it.

    The account is read from the book, then the password is checked
    through C{run}, which puts the hash on a thread (the server's password
    pool) and returns a C{Deferred}; tests pass a synchronous one.  A nick
    without an account is checked against a dummy hash, so that "no such
    account" and "wrong password" take the same time and fail the same way.
    A book that cannot be read fails the login with its L{AccountStoreError}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        book: AccountBook,
        run: Callable[..., defer.Deferred[Any]],
    ) -> None:
        self.book = book
        self._run = run

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        username: bytes = credentials.username
        password: bytes = credentials.password
        typed: bytes = getattr(credentials, "typed", password)
        d = self.book.get(username.decode("utf-8"))
        d.addCallback(lambda account: self._run(_check, account, password, typed))
        return d


def _check(account: Account | None, password: bytes, typed: bytes) -> AvatarId:
    """On a password thread: the nick (with the hash checked), or
    L{UnauthorizedLogin}.  A wrong C{password} is checked again as
    C{typed} where that differs (L{TypedPassword}), account or not, so
    that "no such account" still takes as long as a wrong password."""
    encoded = account.password_hash if account is not None else dummy_hash()
    right = verify_password(password, encoded)
    if not right and typed != password:
        right = verify_password(typed, encoded)
    if right and account is not None:
        return AvatarId(account.nick, account.password_hash)
    raise cred_error.UnauthorizedLogin("wrong password or no such account")


@implementer(IRealm)
class AccountRealm:
    """Turns an avatar ID (a nick) into an L{IAccount}."""

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, LoggedIn, Callable[[], None]]:
        """C{avatarId} is L{AccountChecker}'s, the portal's only checker
        (L{portal}): it carries the hash the password was checked against."""
        if IAccount not in interfaces:
            raise NotImplementedError("only IAccount avatars")
        return IAccount, LoggedIn(avatarId, avatarId.password_hash), lambda: None


def portal(checker: AccountChecker) -> Portal:
    return Portal(AccountRealm(), [checker])
