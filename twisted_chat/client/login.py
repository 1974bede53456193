"""
The login: C{NICK} until the server says C{READY}, with the password when
the nick has an account (docs/client.md, "A session" and "Accounts").

L{Login} answers the server's C{NICK}, C{PASS}, C{RETRY} and a login's
C{ERROR}, sends what the user types at the nickname and password prompts
(or a script's C{--nick} and C{CHAT_PASSWORD}), retries a nick the server
cannot check for a moment, and gives up on a server that does not answer.
It talks to its client only through the small L{Client} interface.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_chat.client import render
from twisted_chat.client.commands import (
    Local,
    NotANick,
    Quit,
    Send,
    nick_prompt_line,
    password_problem,
)
from twisted_chat.client.passwords import Passwords
from twisted_chat.client.session import Ending, State
from twisted_chat.wire import nick_key

# The wait an ERROR flood answering a NICK names: "... try again in 2 s".
_TRY_AGAIN = re.compile(r"\btry again in (\d+(?:\.\d+)?) s\b")


@dataclass
class NickTries:
    """
    The NICKs sent again by themselves since the last C{READY}, by why
    (L{Login}'s bounds count them in a row), and when the last wait the
    server named ends.  A session's connections share one
    (twisted_chat.client.reconnect): the server's nick timeout may end a
    wait, and the next connection goes on counting, and waits out the rest.
    """

    taken: int = 0  # RETRY taken for our own nick on a reconnection
    unavailable: int = 0  # RETRY unavailable
    flood: int = 0  # ERROR flood answering our NICK ("try again in N s")
    flood_ends: float = 0.0  # when that "N s" is over (the clock's seconds)

    def clear(self) -> None:
        self.taken = self.unavailable = self.flood = 0
        self.flood_ends = 0.0


class Client(Protocol):
    """What L{Login} needs from its client."""

    @property
    def option_nick(self) -> str | None:
        """The nickname to ask for first (C{--nick})."""

    @property
    def interactive(self) -> bool: ...

    # The password typed this session, (nick, password), answers PASS for
    # that nick once per connection (twisted_chat.client.reconnect).
    kept_password: tuple[str, str] | None

    @property
    def joined_as(self) -> str | None:
        """The nick an earlier connection got in with (C{None}: none did)."""

    @property
    def nick_tries(self) -> NickTries:
        """The NICKs sent again since the last READY, on any connection."""

    @property
    def server(self) -> str: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def greeting_timeout(self) -> float | None:
        """Seconds the server has to answer a C{NICK} or C{PASS}."""

    @property
    def state(self) -> State: ...

    @property
    def ending(self) -> Ending: ...

    def set_state(self, state: State) -> None: ...

    def send(self, request: Send) -> None: ...

    def notice(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...

    def show_local(self, action: Local) -> None:
        """Show what a local command (C{/help}) says."""

    def drop_typed_ahead(self, when: str, again: str | None = None) -> None:
        """Drop what was typed ahead of a prompt: it may be the password."""

    def pump(self) -> None:
        """Take the typed lines that may go now."""

    def quit(self, text: str = "") -> None: ...

    def close_now(self) -> None:
        """Drop the connection without waiting for the peer."""


class Login:
    """
    One session's login.

    @ivar pass_sent: the last login line sent was C{PASS}, not C{NICK}.
    @ivar password_sent: the last password sent with C{PASS} (for
        L{ChatClient.kept_password} once it got in).
    @ivar password_kept: that password was the one kept from earlier this
        session, sent with no prompt shown: nothing typed meanwhile can be it.
    """

    # RETRY unavailable (the server cannot check nicks or passwords for a
    # moment, e.g. its Redis is out of reach): send the same NICK again this
    # many seconds later, at most this many times in a row; 5 tries 3 s apart
    # fit in the server's default --nick-timeout of 30 s.
    UNAVAILABLE_DELAY = 3.0
    UNAVAILABLE_TRIES = 5
    # RETRY taken for our own nick on a reconnection: the server may still
    # hold the old connection until its ping timeout notices it is gone.
    # Send the same NICK again this many seconds later, at most this many
    # times until one gets in (the web page's numbers, app.js RETRY).
    TAKEN_DELAY = 3.0
    TAKEN_TRIES = 40
    # ERROR flood answering a NICK typed or sent on a terminal (too many nicks
    # registered from this address lately, "try again in N s"): send the same
    # NICK again after the N s it names (this many if it names none), at most
    # FLOOD_WAIT_MAX seconds each time, at most FLOOD_TRIES times in a row.
    FLOOD_DELAY = 3.0
    FLOOD_WAIT_MAX = 30.0
    FLOOD_TRIES = 10

    def __init__(self, client: Client, passwords: Passwords) -> None:
        self._client = client
        self._passwords = passwords
        self.pass_sent = False
        self.password_sent: str | None = None
        self.password_kept = False
        self._kept_tried = False  # the kept password was sent on this connection
        self._tried_option_nick = False
        self._asked_nick: str | None = None
        self._password_for: str | None = None  # the nick in the server's PASS
        self._tries = client.nick_tries
        self._nick_again_timer: IDelayedCall | None = None
        # The nick to be sent again by itself (our own nick taken on a
        # reconnection, the server briefly unavailable, or its "try again in
        # N s"), until the server looked at it: a BYE timeout then is not a
        # prompt left open, and the next connection asks for this nick.
        self.nick_waited: str | None = None
        self._answer_timer: IDelayedCall | None = None  # for a NICK or PASS sent

    def stop(self) -> None:
        """The connection is gone: no more timers."""
        for timer in (self._nick_again_timer, self._answer_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._nick_again_timer = self._answer_timer = None

    def _fail(self, said: str) -> None:
        """A script gives up with C{said} as the reason."""
        self._client.ending.failure = said
        self._client.quit()

    # -- the nickname ------------------------------------------------------------

    def nick_asked(self) -> None:
        """The server's C{NICK}: it wants a nickname."""
        client = self._client
        if client.state not in (State.GREETING, State.ASK_NICK, State.NICK_SENT):
            return
        if client.option_nick is not None and not self._tried_option_nick:
            self._tried_option_nick = True
            left = self._tries.flood_ends - client.clock.seconds()
            if left > 0:
                self._wait_out(client.option_nick, left)
                return
            self._ask_for(client.option_nick)
            return
        client.notice("Choose a nickname (letters, digits, _ and -, starting with a letter):")
        client.set_state(State.ASK_NICK)
        client.pump()

    def typed(self, line: str) -> None:
        """A line typed at the nickname prompt (L{nick_prompt_line})."""
        client = self._client
        typed = nick_prompt_line(line)
        if isinstance(typed, Quit):
            client.quit(typed.text)
            return
        if isinstance(typed, NotANick):
            if typed.invalid:
                self._nick_refused(typed.said[-1].text)
                return
            for said in typed.said:
                client.show_local(said)
            return
        if typed is None:
            return
        self._tries.unavailable = self._tries.flood = 0
        self._ask_for(typed)

    def _ask_for(self, nick: str) -> None:
        self._asked_nick = nick
        self.pass_sent = False
        self._client.send(Send("NICK", (nick,)))
        self._client.set_state(State.NICK_SENT)
        self._await_answer("nickname")

    def _ask_nick_again(self, said: str) -> None:
        """The nickname prompt again (on a terminal): what was typed while
        the last one was checked is not taken as the next nickname."""
        client = self._client
        client.drop_typed_ahead("before the nickname prompt")
        client.notice(said)
        client.set_state(State.ASK_NICK)
        client.pump()

    def retry(self, reason: str, text: str) -> None:
        """The server's C{RETRY}: the nick (or its password) was not taken."""
        client = self._client
        if client.state is not State.NICK_SENT:
            return
        nick = self._asked_nick or ""
        said = render.retry(nick, reason, text)
        self.nick_waited = None
        self._tries.flood = 0  # the nick was looked at
        if reason == "taken" and self._our_old_nick(nick):
            self._taken(nick, said)
            return
        if reason == "unavailable":
            self._unavailable(nick, said)
            return
        self._tries.unavailable = 0
        if reason == "bad-password":
            client.kept_password = None  # not right (any more): the prompt asks
        if not client.interactive:
            # A script gives up: its next input lines are messages, not
            # nicknames, and its CHAT_PASSWORD would only be wrong again (each
            # try counts against the nick, whose owner would be locked out).
            self._fail(render.sentence(said))
            return
        client.error(render.sentence(said))
        if reason == "bad-password":
            self._ask_for(nick)  # the server wants NICK again: ask for the password again
            return
        self._ask_nick_again("Choose another nickname:")

    def _our_old_nick(self, nick: str) -> bool:
        """C{nick} is the one an earlier connection got in with (a
        reconnection asks for it by itself; the server may still hold it)."""
        old = self._client.joined_as
        return old is not None and nick_key(nick) == nick_key(old)

    def _taken(self, nick: str, said: str) -> None:
        """
        RETRY taken for our own nick on a reconnection: most likely our old
        connection, which the server holds until its ping timeout.  Send the
        same NICK again every L{TAKEN_DELAY} seconds, said once, at most
        L{TAKEN_TRIES} times (across connections) before asking for another.
        """
        client = self._client
        self._tries.taken += 1
        if self._tries.taken > self.TAKEN_TRIES:
            self._tries.taken = 0
            client.error(render.sentence(said))
            self._ask_nick_again(
                f"Still taken after {self.TAKEN_TRIES} tries. Choose another nickname:"
            )
            return
        if self._tries.taken == 1:
            client.notice(
                f"{said} It may be your old connection, until the server notices it "
                f"is gone: sending {nick} again every {self.TAKEN_DELAY:g} seconds "
                f"(at most {self.TAKEN_TRIES} times)."
            )
        self._send_again_in(self.TAKEN_DELAY, nick)

    def _unavailable(self, nick: str, said: str) -> None:
        """
        RETRY unavailable: nothing is wrong with the nick (or the password);
        the server cannot check it for a moment.  Send the same NICK again a
        little later (the server asks for the password again if it needs it),
        a bounded number of times; then a script stops and a person is asked
        for a nickname again.
        """
        client = self._client
        self._tries.unavailable += 1
        if self._tries.unavailable > self.UNAVAILABLE_TRIES:
            tries = self.UNAVAILABLE_TRIES + 1
            if not client.interactive:
                self._fail(f"{said} Gave up after {tries} tries.")
                return
            client.error(render.sentence(said))
            self._tries.unavailable = 0
            self._ask_nick_again(
                f"Still unavailable after {tries} tries: type a nickname to try again:"
            )
            return
        delay = self.UNAVAILABLE_DELAY
        client.notice(
            f"{said} Sending the nickname {nick} again in {delay:g} seconds "
            f"(try {self._tries.unavailable} of {self.UNAVAILABLE_TRIES})."
        )
        self._send_again_in(delay, nick)

    def _wait_out(self, nick: str, left: float) -> None:
        """
        A new connection while a wait the server named for our nick has
        C{left} seconds to run (the nick timeout cut it): sent now, the
        nick would only be refused again, a try spent.  Send it once the
        wait is over.
        """
        self._client.set_state(State.NICK_SENT)
        self._client.notice(
            f"Sending the nickname {nick} in {math.ceil(left)} s, once the server's "
            "wait is over."
        )
        self._send_again_in(left, nick)

    def _send_again_in(self, delay: float, nick: str) -> None:
        """
        The step the three waits share (L{_taken}, L{_unavailable},
        L{_flooded}): send C{nick} again by itself C{delay} seconds from now.
        The state stays C{NICK_SENT} (typed lines wait, as for any answer);
        no answer is awaited meanwhile (the next C{NICK} awaits its own); and
        a C{BYE timeout} in the wait is no prompt left open (L{nick_waited}).
        """
        self.answered()
        self.nick_waited = nick
        self._nick_again_timer = self._client.clock.callLater(delay, self._nick_again, nick)

    def _nick_again(self, nick: str) -> None:
        self._nick_again_timer = None
        if self._client.state is State.NICK_SENT:  # not if the user quit meanwhile
            self._ask_for(nick)

    # -- the password ------------------------------------------------------------

    def password_asked(self, nick: str) -> None:
        """
        The server's C{PASS}: C{nick} has an account, or the server asks
        every nick (C{--accounts required}, where a nick with no account is
        asked too): the words claim neither (review rev12 #2).
        """
        client = self._client
        if client.state is not State.NICK_SENT:
            return
        self._password_for = nick
        self.nick_waited = None  # the nick was looked at
        kept = client.kept_password
        if (
            client.interactive
            and kept is not None
            and not self._kept_tried
            and nick_key(kept[0]) == nick_key(nick)
        ):
            # A reconnection: the password typed earlier this session.
            self._kept_tried = True
            client.notice(f"Sending the password you typed for {nick} this session.")
            self._send_password(kept[1], kept=True)
            return
        if client.interactive:
            client.drop_typed_ahead("before the password prompt")
            client.notice(
                f"The server asks for the password of {nick}: type it (it is not "
                "shown), or just Enter to choose another nickname. (It asks when the "
                "nickname has an account, or for every nickname if it admits only "
                "accounts its operator made.)"
            )
            self._ask_password()
            return
        name, password = self._passwords.scripted("PASS")
        if not password:
            self._fail(f"The server asks for the password of {nick}: give it in {name}.")
            return
        problem = password_problem(password, login=True)
        if problem is not None:
            self._fail(f"The password in {name} cannot be used: {problem}")
            return
        self._send_password(password)

    def _send_password(self, password: str, kept: bool = False) -> None:
        self._passwords.send("PASS", password)
        self.pass_sent = True
        self.password_sent = password
        self.password_kept = kept
        self._await_answer("password")

    def _ask_password(self) -> None:
        """The password prompt for the nick asked for (on a terminal)."""
        self._client.set_state(State.ASK_PASSWORD)
        self._passwords.ask("PASS", f"password for {self._password_for}: ")

    def password_typed(self, text: str) -> None:
        """A line typed at the password prompt (Enter alone: another nickname)."""
        client = self._client
        if client.state is not State.ASK_PASSWORD:
            return
        if not text:
            self._ask_nick_again("Choose another nickname:")
            return
        problem = password_problem(text, login=True)
        if problem is not None:
            client.error(f"{problem} Nothing was sent.")
            self._ask_password()
            return
        client.set_state(State.NICK_SENT)
        self._send_password(text)

    # -- the answer --------------------------------------------------------------

    def joined(self) -> bool:
        """
        The server's C{READY}: the login is over.  Whether a password was
        the last thing sent (what was typed while it was checked may be it).
        """
        self._tries.clear()
        self.nick_waited = None
        pass_sent, self.pass_sent = self.pass_sent, False
        return pass_sent

    def refused(self, code: str, text: str, said: str) -> None:
        """
        An C{ERROR} answering our C{NICK} or C{PASS}: the server did not take
        it, and waits for another.  A refused password is asked for again
        (the server still asks for it); a refused nick, a nickname.
        """
        self.nick_waited = None
        if self.pass_sent:
            if code == "flood":
                # Too many passwords being checked: the server asks to send
                # PASS again in a moment.
                said = render.sentence(
                    f"The server did not check that password: {text.rstrip('.') or 'busy'}"
                )
            if not self._client.interactive:
                self._fail(said)
                return
            self._client.error(said)
            self._ask_password()
            return
        if code == "flood":
            # Not looked at: too many nicks from this address lately.
            reason = text.rstrip(".") or "too many attempts"
            said = render.sentence(f"The server did not look at that nickname: {reason}")
            if self._client.interactive and self._asked_nick is not None:
                self._flooded(self._asked_nick, said, text)
                return
        self._nick_refused(said)

    def _flooded(self, nick: str, said: str, text: str) -> None:
        """
        C{ERROR flood} answering our C{NICK} on a terminal: the server did
        not look at the nick (too many registered from this address lately)
        and names the wait.  Send the same C{NICK} again after it, said each
        time, at most L{FLOOD_TRIES} times in a row; then ask for a nickname.
        A reconnection goes on by itself so (users behind one address all
        coming back after a restart), and a person at the first prompt is
        told to wait rather than asked at once, only to be refused again;
        the server's nick timeout in the wait leads to the next connection,
        which goes on counting (L{NickTries}).
        """
        client = self._client
        self._tries.flood += 1
        if self._tries.flood > self.FLOOD_TRIES:
            self._tries.flood = 0
            client.error(said)
            self._ask_nick_again(
                f"Still refused after {self.FLOOD_TRIES} tries. Choose a nickname:"
            )
            return
        named = _TRY_AGAIN.search(text)
        wait = float(named.group(1)) if named else self.FLOOD_DELAY
        wait = min(max(wait, 1.0), self.FLOOD_WAIT_MAX)
        client.notice(
            f"{said} Sending the nickname {nick} again in {wait:g} s "
            f"(try {self._tries.flood} of {self.FLOOD_TRIES})."
        )
        self._tries.flood_ends = client.clock.seconds() + wait
        self._send_again_in(wait, nick)

    def _nick_refused(self, said: str) -> None:
        """The server dropped our NICK or PASS unanswered: a script gives
        up with the reason, a person is asked for a nickname again."""
        if not self._client.interactive:
            self._fail(said)
            return
        self._client.error(said)
        self._ask_nick_again("Choose a nickname:")

    def _await_answer(self, what: str) -> None:
        """
        A C{NICK} or C{PASS} was sent: the server answers it (C{READY}, C{PASS},
        C{RETRY}, C{ERROR} or C{BYE}) within C{greeting_timeout} seconds, or
        the client gives up.  A server that stopped, or never answers, would
        otherwise keep a script waiting for ever.
        """
        self.answered()
        timeout = self._client.greeting_timeout
        if timeout is not None:
            self._answer_timer = self._client.clock.callLater(timeout, self._no_answer, what)

    def answered(self) -> None:
        """The server answered (or the client no longer waits for an answer)."""
        if self._answer_timer is not None and self._answer_timer.active():
            self._answer_timer.cancel()
        self._answer_timer = None

    def _no_answer(self, what: str) -> None:
        self._answer_timer = None
        client = self._client
        if client.ending.failure is None:
            client.ending.failure = (
                f"No answer from {client.server} to the {what} within "
                f"{client.greeting_timeout:g} seconds."
            )
        client.close_now()
