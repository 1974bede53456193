"""
The operator's accounts tool:

    python -m twisted_chat.accounts add|remove|list|passwd [--db chat.sqlite3] [NICK]
    python -m twisted_chat.accounts add|remove|list|passwd --redis URL [NICK]
    python -m twisted_chat.accounts import --db chat.sqlite3 --redis URL

C{--db} names the server's database, as C{twistd chat --db} does; the
accounts are in the file beside it (C{chat.sqlite3} -> C{chat.accounts.sqlite3}),
which the server opens for each login and never keeps locked, so this works
with the server running or stopped, and a change counts from the next login.
Each change names that file in full.  Only C{add} makes the file, and only
beside the server's database (made at the server's first start) or with
C{--create}: a mistyped or relative C{--db} is refused, not a new file that
no server reads.
C{--redis} names a cluster's Redis, as C{twistd chat --redis} does: the
accounts of every node of that cluster, changed the same way (one atomic
Redis command each, L{twisted_chat.server.cluster.accounts}).  C{import}
copies a single server's accounts into a cluster (moving to cluster mode).
With C{--redis}, C{--redis-password-file FILE} gives Redis's password (the
file's first line) instead of the URL, out of the command line.

A password is never taken from the command line (other users can read it
there, and it lands in shell history): it is asked for twice on a terminal,
or read as the first line of standard input otherwise (for scripts:
C{printf '%s\\n' "$PW" | python -m twisted_chat.accounts add alice}).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_chat import version_line
from twisted_chat.server.accounts.fileaccess import describe_user
from twisted_chat.server.accounts.hashing import hash_password, password_bytes, password_problem
from twisted_chat.server.accounts.records import (
    Account,
    AccountAdmin,
    AccountExists,
    AccountStoreError,
    NoSuchAccount,
)
from twisted_chat.server.accounts.store import AccountStore, SQLiteBook, accounts_path
from twisted_chat.server.config import MEMORY
from twisted_chat.untilstopped import Signals, run_until_done
from twisted_chat.wire import is_valid_nick, password_chars_problem

if TYPE_CHECKING:
    from twisted_chat.server.cluster.accounts import RedisBook

DEFAULT_DB = "chat.sqlite3"


class Failed(Exception):
    """One line for standard error; exit status 1.  (The tool's exit
    statuses, all of them, are in its --help and docs/accounts.md.)"""

    status = 1


class BadPassword(Failed):
    """A password the tool will not take (as chat/1 would not, or the two
    typed differ): one line for standard error; exit status 2."""

    status = 2


_PASSWORD_FILE_HELP = ("with --redis: a file whose first line is Redis's password, "
                       "kept out of the command line (then the URL gives none)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_chat.accounts",
        description=(
            "Manage the accounts (password-protected nicks) of a twisted-chat server, "
            "running or stopped, or of a whole cluster (--redis). Changes count from "
            "the next login."
        ),
        epilog=(
            "Passwords (8 to 256 bytes of UTF-8, not starting with a space or a tab, no "
            "control characters: what a client can send) are asked for on a terminal, or "
            "read as the first line of standard input; never given on the command line. "
            "Exit status: 0 done; 1 it could not be done (one line says why; nothing "
            "changed, except by an import cut short, which keeps what it copied); 2 the "
            "password or the command line was refused, nothing changed; 130 interrupted "
            "(Ctrl-C; with --redis, a change already sent may have been made). The "
            "accounts file is the --db file's name with .accounts before its extension."
        ),
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helptext, takes_nick in (
        ("add", "create an account for NICK (asks for its password)", True),
        ("passwd", "set a new password for NICK's account", True),
        ("remove", "delete NICK's account (the nick is free to anyone again)", True),
        ("list", "list the accounts", False),
    ):
        command = commands.add_parser(name, help=helptext, description=helptext)
        where = command.add_mutually_exclusive_group()
        where.add_argument(
            "--db", default=DEFAULT_DB,
            help=f"the server's database, as given to twistd chat --db (default {DEFAULT_DB})",
        )
        where.add_argument(
            "--redis", metavar="URL",
            help="a cluster's Redis, as given to twistd chat --redis: the accounts of "
            "every node of that cluster",
        )
        command.add_argument("--redis-password-file", metavar="FILE",
                             help=_PASSWORD_FILE_HELP)
        if takes_nick:
            command.add_argument("nick", metavar="NICK")
        if name == "add":
            command.add_argument(
                "--create", action="store_true",
                help="make the accounts file if there is none, even without the server's "
                "database beside it (before the server's first start; make it as the "
                "server's user, which must be able to read and write it)",
            )
    helptext = ("copy the accounts of a single server's --db into a cluster's --redis, "
                "passwords and times as they are (a nick with an account there is left "
                "as it is)")
    copy = commands.add_parser("import", help=helptext, description=helptext)
    copy.add_argument("--db", default=DEFAULT_DB,
                      help=f"the single server's database (default {DEFAULT_DB})")
    copy.add_argument("--redis", metavar="URL", required=True,
                      help="the cluster's Redis, as given to twistd chat --redis")
    copy.add_argument("--redis-password-file", metavar="FILE", help=_PASSWORD_FILE_HELP)
    return parser


def read_password(stdin: TextIO, stderr: TextIO) -> bytes:
    """
    A new password: asked twice on a terminal, else the first line of stdin.
    Held to what a client can send (L{password_problem}'s length,
    L{password_chars_problem}), else L{BadPassword}.
    """
    try:
        if stdin.isatty():
            first = getpass.getpass("New password: ", stream=stderr)
            again = getpass.getpass("Again: ", stream=stderr)
            if first != again:
                raise BadPassword("the two passwords differ; nothing changed")
            password = first
        else:
            password = stdin.readline()
            if password.endswith("\n"):
                password = password[:-1]
            if password.endswith("\r"):
                password = password[:-1]
        # Strict: a terminal or pipe not in UTF-8 gives surrogates (or fails
        # to decode), never a password the server would compare equal.  In
        # its NFC form, as the server sets and checks passwords.
        secret = password_bytes(password)
    except UnicodeError:
        raise BadPassword("the password is not valid UTF-8; nothing changed") from None
    problem = password_problem(secret) or password_chars_problem(password)
    if problem is not None:
        raise BadPassword(f"{problem}; nothing changed")
    return secret


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def _command(
    book: AccountAdmin, command: str, nick: str | None, password: Callable[[], bytes],
    stdout: TextIO, where: str = "",
) -> None:
    """
    One command on C{book}; C{password} reads the new password.  C{where}
    names the accounts file in full (or the cluster's Redis), for the line
    saying what was done.
    """
    into = f" in {where}" if where else ""
    if command == "list":
        for account in await book.list():
            print(f"{account.nick}\tcreated {_when(account.created)}"
                  f"\tchanged {_when(account.changed)}", file=stdout)
        return
    assert nick is not None
    # Before the password is typed; and an account is named as its owner
    # spelled it, whatever case NICK was typed in.
    held = await book.get(nick)
    if command == "add":
        if held is not None:
            raise AccountExists(held.nick)
        await book.add(nick, hash_password(password()))
        print(f"added an account for {nick}{into}", file=stdout)
        return
    if held is None:
        raise NoSuchAccount(nick)
    if command == "remove":
        await book.remove(nick)
        print(f"removed the account of {held.nick}{' from ' + where if where else ''}",
              file=stdout)
        return
    await book.set_hash(nick, hash_password(password()))
    print(f"changed the password of {held.nick}{into}", file=stdout)


async def _import(book: RedisBook, accounts: list[Account], stdout: TextIO) -> None:
    """C{import}: each account, unless its nick has one in the cluster."""
    kept = []
    for account in accounts:
        if not await book.copy(account):
            kept.append(account.nick)
    print(f"imported {len(accounts) - len(kept)} accounts", file=stdout)
    if kept:
        print(f"left {len(kept)} as the cluster has them: {' '.join(kept)}", file=stdout)


def _reactor() -> Any:
    """The global reactor, imported only for --redis."""
    from twisted.internet import reactor

    return reactor


#: Where the tool's stopping signals are taken (a test's fake).
_signals: Signals = signal


def _on_redis(url: str, password_file: str | None,
              work: Callable[[RedisBook], Coroutine[Any, Any, None]]) -> None:
    """
    Run C{work} on the accounts in the Redis at C{url}, under a reactor.

    @raise KeyboardInterrupt: Ctrl-C or SIGTERM came meanwhile (its
        shutdown fails the command waiting for Redis: not Redis's failure).
    """
    from twisted_chat.server.cluster.accounts import open_book

    reactor = _reactor()

    async def main() -> None:
        book, close = await open_book(url, reactor, password_file)
        try:
            await work(book)
        finally:
            close()

    _raise(run_until_done(reactor, main, _signals))


def _raise(result: object) -> None:
    if isinstance(result, Failure):
        result.raiseException()


def _say_made(path: str, stdout: TextIO, stderr: TextIO) -> None:
    """
    The tool made the accounts file: say so, and who owns it.  Made by root,
    a server running as another user cannot open it (mode 0600): a warning
    says what to do (docs/accounts.md).
    """
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return
    print(f"made the accounts file {path} (mode 0600, owned by {describe_user(owner)})",
          file=stdout)
    if owner == 0:
        print(
            f"twisted_chat.accounts: warning: {path} belongs to root: a server running as "
            "another user cannot open it; chown it to that user (or make accounts as "
            "that user)",
            file=stderr,
        )


def run(argv: Sequence[str], stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    args = _parser().parse_args(argv)
    nick: str | None = getattr(args, "nick", None)
    if nick is not None and not is_valid_nick(nick):
        raise Failed(f"{nick!r} is not a valid nick (1-24 letters, digits, _ or -, "
                     "starting with a letter)")
    try:
        if args.redis_password_file is not None and args.redis is None:
            raise Failed("--redis-password-file is for --redis only")
        if args.redis is not None:
            from twisted_chat.server.cluster.redisconn import (
                parse_url,
                redacted,
                with_password_file,
            )

            try:
                target = parse_url(args.redis)
            except ValueError as e:
                raise Failed(f"--redis: {e}") from None
            try:
                with_password_file(target, args.redis_password_file)
            except ValueError as e:
                raise Failed(f"--redis-password-file: {e}") from None
            if args.command == "import":
                path = accounts_path(args.db)
                if args.db == MEMORY or AccountStore(path).missing():
                    raise Failed(f"no accounts file {path!r} to import")
                accounts = AccountStore(path).list()
                _on_redis(args.redis, args.redis_password_file,
                          lambda book: _import(book, accounts, stdout))
                return
            # The password first: a terminal's Ctrl-C must not meet a running reactor.
            secret = (read_password(stdin, stderr)
                      if args.command in ("add", "passwd") else b"")
            # Named as for a file, without Redis's password.
            where = f"the Redis at {redacted(args.redis)}"
            _on_redis(args.redis, args.redis_password_file,
                      lambda book: _command(book, args.command, nick, lambda: secret, stdout,
                                            where))
            return
        if args.db == MEMORY:
            raise Failed(":memory: has no accounts file: accounts made now would be lost")
        # In full: a relative --db is relative to where the tool was run.
        path = os.path.abspath(accounts_path(args.db))
        store = AccountStore(path)
        made = store.missing()
        if made and args.command != "add":
            # Only add makes the file.  Saying "no accounts" (an empty list,
            # "has no account") would hide a mistyped --db; and the file is
            # not made here.
            missing = (f"there is no accounts file {path!r} for --db {args.db!r} "
                       "(is that the server's --db? only add makes the file)")
            raise Failed(f"{nick} has no account: {missing}" if nick else missing)
        db = os.path.abspath(args.db)
        if made and not args.create and not os.path.exists(db):
            # A new file where no server keeps its history is one no server
            # reads (a relative --db, run from elsewhere).
            raise Failed(
                f"there is no accounts file {path!r}, nor a server database {db!r} beside "
                f"it: is --db {args.db!r} the server's? (the server makes both at its "
                "first start; --create makes the accounts file now)"
            )
        # The file, inline: every call has its answer when it returns.
        book = SQLiteBook(store, defer.execute)
        done: list[object] = []
        defer.ensureDeferred(_command(
            book, args.command, nick, lambda: read_password(stdin, stderr), stdout, path,
        )).addBoth(done.append)
        _raise(done[0])
        if made:
            _say_made(path, stdout, stderr)
    except AccountExists as e:
        raise Failed(f"{e} has an account already (passwd changes its password)") from None
    except NoSuchAccount:
        raise Failed(f"{nick} has no account") from None
    except AccountStoreError as e:
        raise Failed(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdin, sys.stdout, sys.stderr)
    except Failed as e:
        print(f"twisted_chat.accounts: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
