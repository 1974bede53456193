"""
The accounts as C{twistd chat} starts them (docs/accounts.md): none under
C{--accounts off}; else an L{Accounts} over the book of the single server's
file beside C{--db} (L{file_accounts}) or of the cluster's Redis, with its
password threads, and one log line that says which.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

from twisted_chat.server import logs
from twisted_chat.server.accounts.login import Accounts
from twisted_chat.server.accounts.loginlimits import LoginLimits, SharedFailures
from twisted_chat.server.accounts.passwordwork import PasswordWork
from twisted_chat.server.accounts.records import AccountBook, AccountStoreError
from twisted_chat.server.accounts.store import AccountStore, SQLiteBook
from twisted_chat.server.config import MEMORY, Mode, ServerConfig
from twisted_chat.server.limits.addresses import networks

# Start-up's lines, under the namespace they have always had.
_log = logs.logger("twisted_chat.server.service")

#: What each --accounts mode means, for the line the log says it in at start.
_MEANING = {
    Mode.OPEN: "a nick with an account needs its password; anyone may REGISTER "
               "the nick they hold",
    Mode.REQUIRED: "only nicks with an account may log in; the operator makes them",
}


def make_accounts(
    config: ServerConfig, reactor: Any, book: Callable[[PasswordWork], AccountBook],
    shared: Callable[[LoginLimits], SharedFailures] | None = None, *, where: str,
) -> tuple[Accounts | None, PasswordWork | None]:
    """The accounts (in the L{AccountBook} C{book} makes, C{where} says
    where; with the failure counts C{shared} makes, in a cluster) and their
    password threads, or none when they are off.  The log says which, once:
    whether nicks are protected, and by what, is the operator's to see at
    start (the default, open, lets strangers REGISTER)."""
    mode = config.accounts
    if mode is Mode.OFF:
        _log.info("accounts: off (--accounts off): no nick is protected by a password; "
                  "PASS, REGISTER and PASSWD are refused")
        return None, None
    limits = LoginLimits()
    work = PasswordWork(reactor, limits.threads, limits.max_pending)
    accounts = Accounts(mode, book(work), reactor, work, limits,
                        exempt=networks(config.exempt), v6_prefix=config.ipv6_prefix,
                        shared=shared(limits) if shared is not None else None,
                        max_accounts=config.max_accounts)
    _log.info("accounts: {mode} ({meaning}), {where}", mode=mode.value,
              meaning=_MEANING[mode], where=where)
    return accounts, work


def sqlite_book(config: ServerConfig, work: PasswordWork, note: str = "") -> AccountBook:
    """The single server's accounts: the file beside --db, used on the password
    threads (C{note}: what an error adds, L{twisted_chat.server.ports.privileges.Runner.note})."""
    store = AccountStore.for_db(config.db)
    required = config.accounts is Mode.REQUIRED
    try:
        # Creates it; opened again for each check, so no lock is held.  From
        # now on the store knows the file: gone or broken, it is an error.
        made = store.check()
        # Under required, no account means nobody can log in: said below.
        locked_out = required and store.count() == 0
    except AccountStoreError as e:
        raise SystemExit(f"twistd chat: {e}{note}") from None
    if made:
        # A first start; or the file vanished while the server was stopped,
        # which only this line can tell the operator (docs/accounts.md).
        _log.info("no accounts file at {path}: made an empty one{meaning}",
                  path=os.path.abspath(store.path),
                  meaning="" if required else " (no nick is protected yet)")
    if locked_out:
        warn_nobody_can_log_in(f"--db {shlex.quote(os.path.abspath(config.db))}")
    return SQLiteBook(store, work.lookup)


def warn_nobody_can_log_in(where: str) -> None:
    """Under C{--accounts required} there is no account yet: say so, with
    the accounts tool's command that adds one (C{where}: its arguments that
    name the accounts, C{--db ...} or C{--redis ...})."""
    _log.warn("nobody can log in: --accounts required, and there is no account yet; "
              "add one with: python -m twisted_chat.accounts add {where} NICK", where=where)


def file_accounts(config: ServerConfig, reactor: Any,
                  note: str = "") -> tuple[Accounts | None, PasswordWork | None]:
    """The single server's accounts (L{make_accounts}), in the file beside
    C{--db} (L{sqlite_book}; C{note}: what an error adds)."""
    where = ("in memory (lost at exit; python -m twisted_chat.accounts cannot reach "
             "them)" if config.db == MEMORY else
             f"in the file {os.path.abspath(AccountStore.for_db(config.db).path)}")
    return make_accounts(config, reactor, lambda work: sqlite_book(config, work, note),
                         where=where)
