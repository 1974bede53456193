"""
The operator's accounts tool:

    python -m twisted_chat.accounts add|remove|list|passwd [--db chat.sqlite3] [NICK]

C{--db} names the server's database, as C{twistd chat --db} does; the
accounts are in the file beside it (C{chat.sqlite3} -> C{chat.accounts.sqlite3}),
which the server opens for each login and never keeps locked, so this works
with the server running or stopped, and a change counts from the next login.

A password is never taken from the command line (other users can read it
there, and it lands in shell history): it is asked for twice on a terminal,
or read as the first line of standard input otherwise (for scripts:
C{printf '%s\\n' "$PW" | python -m twisted_chat.accounts add alice}).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from twisted_chat.server.accounts import (
    MEMORY,
    AccountExists,
    AccountStore,
    AccountStoreError,
    NoSuchAccount,
    accounts_path,
    hash_password,
    password_problem,
)
from twisted_chat.wire import is_valid_nick

DEFAULT_DB = "chat.sqlite3"


class Failed(Exception):
    """One line for standard error; exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_chat.accounts",
        description=(
            "Manage the accounts (password-protected nicks) of a twisted-chat server, "
            "running or stopped. Changes count from the next login."
        ),
        epilog=(
            "Passwords (8 to 256 bytes) are asked for on a terminal, or read as the first "
            "line of standard input; never given on the command line. The accounts file "
            "is the --db file's name with .accounts before its extension."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helptext, takes_nick in (
        ("add", "create an account for NICK (asks for its password)", True),
        ("passwd", "set a new password for NICK's account", True),
        ("remove", "delete NICK's account (the nick is free to anyone again)", True),
        ("list", "list the accounts", False),
    ):
        command = commands.add_parser(name, help=helptext, description=helptext)
        command.add_argument(
            "--db", default=DEFAULT_DB,
            help=f"the server's database, as given to twistd chat --db (default {DEFAULT_DB})",
        )
        if takes_nick:
            command.add_argument("nick", metavar="NICK")
    return parser


def read_password(stdin: TextIO, stderr: TextIO) -> bytes:
    """A new password: asked twice on a terminal, else the first line of stdin."""
    if stdin.isatty():
        first = getpass.getpass("New password: ", stream=stderr)
        again = getpass.getpass("Again: ", stream=stderr)
        if first != again:
            raise Failed("the two passwords differ; nothing changed")
        password = first
    else:
        password = stdin.readline()
        if password.endswith("\n"):
            password = password[:-1]
        if password.endswith("\r"):
            password = password[:-1]
    secret = password.encode("utf-8")
    problem = password_problem(secret)
    if problem is not None:
        raise Failed(f"{problem}; nothing changed")
    return secret


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run(argv: Sequence[str], stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    args = _parser().parse_args(argv)
    if args.db == MEMORY:
        raise Failed(":memory: has no accounts file: accounts made now would be lost")
    store = AccountStore(accounts_path(args.db))
    nick: str | None = getattr(args, "nick", None)
    if nick is not None and not is_valid_nick(nick):
        raise Failed(f"{nick!r} is not a valid nick (1-24 letters, digits, _ or -, "
                     "starting with a letter)")
    try:
        if args.command == "list":
            for account in store.list():
                print(f"{account.nick}\tcreated {_when(account.created)}"
                      f"\tchanged {_when(account.changed)}", file=stdout)
            return
        assert nick is not None
        if args.command == "remove":
            store.remove(nick)
            print(f"removed the account of {nick}", file=stdout)
            return
        if args.command == "add":
            if store.exists(nick):  # before the password is typed
                raise AccountExists(nick)
            store.add(nick, hash_password(read_password(stdin, stderr)))
            print(f"added an account for {nick}", file=stdout)
            return
        if not store.exists(nick):
            raise NoSuchAccount(nick)
        store.set_hash(nick, hash_password(read_password(stdin, stderr)))
        print(f"changed the password of {nick}", file=stdout)
    except AccountExists:
        raise Failed(f"{nick} has an account already (passwd changes its password)") from None
    except NoSuchAccount:
        raise Failed(f"{nick} has no account") from None
    except AccountStoreError as e:
        raise Failed(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdin, sys.stdout, sys.stderr)
    except Failed as e:
        print(f"twisted_chat.accounts: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
