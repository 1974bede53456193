"""
Passwords on the client: the prompt that reads one unseen, the warning when
one would cross a network unencrypted, a script's passwords from its
environment, and C{/register} and C{/passwd} with their answers
(docs/client.md, "Accounts").  The login's own C{PASS} is asked for and
sent here too; what follows it is L{twisted_chat.client.login}'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITransport

from twisted_chat import wire
from twisted_chat.client import render
from twisted_chat.client.commands import Secret, Send, password_problem
from twisted_chat.client.display import Display
from twisted_chat.client.session import State
from twisted_chat.ipaddrs import parse_ip

# The wait a refusal of password work names: "send REGISTER again in 42 s".
_AGAIN_IN = re.compile(r"\bagain (in \d+ s)\b")

# Where a script's passwords come from (no prompt): the variable for each
# verb that sends one.
ENVIRONMENT = {"PASS": "CHAT_PASSWORD", "REGISTER": "CHAT_PASSWORD", "PASSWD": "CHAT_NEW_PASSWORD"}


class Client(Protocol):
    """What L{Passwords} needs from its client."""

    @property
    def display(self) -> Display | None: ...

    @property
    def transport(self) -> ITransport | None: ...

    @property
    def tls(self) -> bool: ...

    @property
    def server(self) -> str: ...

    @property
    def interactive(self) -> bool: ...

    # The password typed this session (twisted_chat.client.reconnect).
    kept_password: tuple[str, str] | None

    @property
    def environ(self) -> Mapping[str, str]: ...

    @property
    def state(self) -> State: ...

    @property
    def nick(self) -> str | None: ...

    @property
    def warn(self) -> Callable[[str], None]:
        """Shows a warning (once: a password sent unencrypted)."""

    def send(self, request: Send) -> None: ...

    def notice(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...

    def drop_typed_ahead(self, when: str, again: str | None = None) -> None:
        """Drop what was typed ahead of a prompt: it may be the password."""


class Passwords:
    """
    One session's passwords.

    @ivar request: the C{REGISTER} or C{PASSWD} sent and not answered yet.
    @ivar account: whether the nick has an account, as this connection saw
        it (a C{PASS} asked for at login, or C{REGISTERED}); C{None} when
        it does not know (after C{ERROR not-registered}, or C{registered}
        unless proved here), and the server is asked.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self.request: str | None = None
        self.account: bool | None = None
        self._accounts_off = False  # the server said it keeps no accounts
        self._request_password = ""  # sent with the request (kept once done)
        # The password being asked for: (verb to send it with, first entry).
        self._asking: tuple[str, str | None] | None = None
        self._warned = False

    def _sends_in_clear(self) -> bool:
        """Whether a password would cross a network unencrypted."""
        transport = self._client.transport
        if self._client.tls or transport is None:
            return False
        peer = transport.getPeer()
        if not isinstance(peer, IPv4Address | IPv6Address):
            return False  # a UNIX socket, or a test's fake: stays on this machine
        # The package's one parser: a mapped ::ffff:127.x.y.z (an IPv4
        # server seen through a dual-stack socket) is loopback too.
        ip = parse_ip(peer.host)
        return ip is None or not ip.is_loopback

    def _warn_plain(self) -> None:
        if self._warned or not self._sends_in_clear():
            return
        self._warned = True
        self._client.warn(
            f"Your password goes to {self._client.server} unencrypted: anyone on the way can "
            "read it. Use --tls if the server offers it."
        )

    def ask(self, verb: str, prompt: str, first: str | None = None) -> None:
        """Read the next line unseen (L{Display.ask_secret}), for C{verb}."""
        self._client.drop_typed_ahead("before the password prompt")
        self._warn_plain()
        self._asking = (verb, first)
        display = self._client.display
        if display is not None:
            display.ask_secret(prompt)

    def cancel(self) -> None:
        """Stop asking (the half-typed line comes back)."""
        if self._asking is not None:
            self._asking = None
            display = self._client.display
            if display is not None:
                display.end_secret()

    @property
    def asking(self) -> bool:
        """Whether a password prompt is open."""
        return self._asking is not None

    def swallow(self, prompt: str) -> None:
        """
        The session is over while the prompt was open: keep reading unseen,
        with C{prompt}, but for nothing (L{take} gives C{None}).  The user
        types blind there; were the client to exit at once, the rest of a
        password would go to the shell, its screen and its history file.
        """
        self._asking = None
        display = self._client.display
        if display is not None:
            display.ask_secret(prompt)

    def take(self) -> tuple[str, str | None] | None:
        """
        A line was typed at the prompt, which ends: what it was asked for
        (the verb and the first entry), or C{None} if nothing was.
        """
        asking = self._asking
        self.cancel()
        return asking

    def send(self, verb: str, password: str) -> None:
        self._warn_plain()
        if verb != "PASS":
            self.request = verb
            self._request_password = password
        self._client.send(Send(verb, text=password))

    def scripted(self, verb: str) -> tuple[str, str]:
        """A script's password for C{verb}: the variable it is read from
        (L{ENVIRONMENT}) and its value, C{""} when it is not set."""
        name = ENVIRONMENT[verb]
        return name, self._client.environ.get(name, "")

    def command(self, action: Secret) -> None:
        """C{/register} or C{/passwd}: asked for twice, or a script's from its
        environment; refused at once when this connection knows it cannot be done."""
        known = self._known_refusal(action.verb)
        if known is not None:
            self._client.error(known)
            return
        if self._client.interactive:
            prompt = "new password: " if action.verb == "PASSWD" else "password: "
            self.ask(action.verb, prompt)
            return
        name, password = self.scripted(action.verb)
        problem = password_problem(password) if password else f"{name} is not set."
        if problem is not None:
            self._client.error(f"{problem} Nothing was sent.")
            return
        self.send(action.verb, password)

    def _known_refusal(self, verb: str) -> str | None:
        """Why C{verb} would be refused, said before any password is typed
        for nothing; C{None} if that is the server's to say (one in flight
        may change the answer)."""
        nick = self._client.nick
        if self.request is not None or nick is None:
            return None
        if self._accounts_off:
            return render.ERRORS["accounts-off"]
        if verb == "REGISTER" and self.account is True:
            return f"{nick} has an account already: /passwd changes its password."
        if verb == "PASSWD" and self.account is False:
            return (f"There is no password to change: {nick} logged in without one "
                    "(it had no account). /register gives it one.")
        return None

    def typed(self, verb: str, first: str | None, text: str) -> None:
        """A password typed for C{/register} or C{/passwd} (L{take})."""
        if self._client.state not in (State.READY, State.PAIRED):
            return
        if not text:
            self._client.notice("Nothing was sent.")
            return
        if first is None:
            # Both entries are read before either is looked at: people type
            # a password twice without looking, and were the prompt to close
            # after a first one refused, the second, typed blind, would go to
            # the lobby as an ordinary line.
            self.ask(verb, "the same password again: ", text)
            return
        problem = password_problem(first)
        if problem is not None:
            self._client.error(problem + " Nothing was sent.")
        elif text != first:
            self._client.error("The two passwords differ. Nothing was sent.")
        else:
            self.send(verb, text)

    def registered(self, nick: str) -> None:
        """C{REGISTERED}: the C{REGISTER} or C{PASSWD} was done."""
        request, self.request = self.request, None
        password, self._request_password = self._request_password, ""
        self.account = True
        if request is not None and password and self._client.interactive:
            self._client.kept_password = (nick, password)  # a reconnection's PASS
        if request == "PASSWD":
            self._client.notice(f"The password for {nick} was changed.")
        else:
            self._client.notice(
                f"{nick} is now registered: from now on this nickname can only be "
                "used with your password."
            )

    def refused(self, code: str, text: str) -> str | None:
        """
        The sentence for an C{ERROR} that answers C{REGISTER} or C{PASSWD},
        or C{None} if it does not.
        """
        accounts_away = code == "unavailable" and text.startswith(wire.ACCOUNTS_UNAVAILABLE)
        if code in render.ACCOUNT_ERRORS or accounts_away:
            self._accounts_off = self._accounts_off or code == "accounts-off"
            if code == "not-registered" or (code == "registered" and not self.account):
                # What this connection knew is stale: the operator removed
                # the account (a REGISTER under open makes a new one), reset
                # its password, or made one this connection did not prove
                # (its PASSWD is refused too).  The server is asked next time.
                self.account = None
            request, self.request = self.request, None
            return render.account_error(code, text, request)
        work_refused = text.startswith(wire.PASSWORD_WORK_REFUSED)
        if code == "flood" and self.request is not None and work_refused:
            return self._not_done(text)
        if code == "server-full" and self._client.state in (State.READY, State.PAIRED):
            # Online, it answers REGISTER: the server keeps no more accounts
            # (--max-accounts), and the connection stays.
            self.request = None
            return render.account_error(code, text, "REGISTER")
        return None

    def _not_done(self, text: str) -> str:
        """
        C{ERROR flood} refusing the password work of C{REGISTER} or
        C{PASSWD} (L{wire.PASSWORD_WORK_REFUSED}: the server is busy hashing,
        this address holds its share of the work, or made its hashes lately):
        it was not done.  Said in the server's words, with its wait if named.
        """
        request, self.request = self.request, None
        why, _, rest = text.partition(";")
        named = _AGAIN_IN.search(rest)
        when = named.group(1) if named else "in a moment"
        why = why.strip()
        why = why[:1].upper() + why[1:]
        if request == "PASSWD":
            return f"{why}: your password was not changed; try /passwd again {when}."
        return f"{why}: {self._client.nick} was not registered; try /register again {when}."
