"""
Reconnection on a terminal (docs/client.md, "When the connection ends").

A L{ChatClient} is one connection.  On a terminal, once a session has joined
the chat, L{Reconnecting} starts a new one when the server restarts
(C{BYE shutdown}) or the connection is lost; and, joined or not, when the
server's nick timeout cuts a wait for our nick (C{Login.nick_waited}), so
that someone held back at the start is not let go (the connection after
that cut is a reconnection: refused, lost or full, it is tried again); and
when that timeout ends a nickname prompt left open, with the nick typed
there, however late (no timer: as the web page waits for its Join): with
the web page's backoff (L{backoff_delay}: 1, 2, 4, 8, 16, then every 30
seconds, each +-25 %; back to 1 s once a connection reached C{READY}),
the same nickname (or one typed at a prompt whose wait such a cut ended;
sent again every 3 s while the server says the old one is taken:
our old connection, most likely; C{Login.TAKEN_TRIES}; after the wait the
server names when too
many nicks came from our address lately, C{Login.FLOOD_TRIES}), and the
password typed this session (kept in memory only).  An open invitation, as
a private conversation, ends with the connection, and the user is told.
It decides by L{should_reconnect}.  The lobby messages shown are remembered across
connections (L{ShownLobby}): a new connection's history shows only the ones
not on the screen yet.  The first failure of a reconnection is said in full;
the same failure again is one short line, with no "Reconnecting..." before it
(a long outage is one line per attempt, every 30 seconds), and so is
"Connected to ..." at each attempt the server greets and then refuses
(C{BYE full}): said at the first, and again only if the greeting changed.  Between
connections the screen stays; a line typed then is not sent (it would be
read by a session the user has not seen start), and the user is told so
(the lines typed ahead of a login that did not get in, in its wait for our
nick, are another matter: they wait for the next connection, L{HandedOver});
C{/reconnect} tries at once, C{/quit}, Ctrl-C and Ctrl-D leave, there or
before a reconnection got in, with the end of the connection the client
reconnects after, the last that got in (or the first), not a failed
reconnection's (L{Reconnecting._leave_reconnection}).

The keyboard's callbacks go to this object, which passes them to the
connection of the moment.  A script (stdin not a terminal) or
C{--no-reconnect} ends with the first connection, as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol, TypeGuard

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_chat.client import render
from twisted_chat.client.commands import NotANick, Quit, nick_prompt_line, parse_input
from twisted_chat.client.display import Display
from twisted_chat.client.input import set_aside
from twisted_chat.client.lobbyview import ShownLobby
from twisted_chat.client.login import NickTries
from twisted_chat.client.outbox import HandedOver, not_sent
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.session import Outcome, State, interrupted_before_joining

# The web page's backoff (twisted_chat/web/static/app.js, scheduleReconnect).
BACKOFF_MAX = 30.0
JITTER = 0.25

RECONNECT_COMMAND = "/reconnect"
_TYPE_A_NICK = "Type a nickname to connect again, or /quit to leave."

# BYE reasons after which nothing reconnects: the user's own goodbye.
_USER_LEFT = "quit"
# Before a nickname was accepted on a new connection, these mean "stop":
# a prompt left open past the server's --nick-timeout (the web page does
# not reconnect on a timer then either; at the nickname prompt the nick
# typed later connects again: Reconnecting._await_nick), or too many
# failed logins.
_STOP_BEFORE_JOINING = ("timeout", "flood")


def _why_ended(bye_reason: str | None) -> str:
    """Why a pair or an invitation ended with the connection, agreeing with
    the line just said of its end (the server's C{BYE}, or none)."""
    if bye_reason == "shutdown":
        return "the server shut down"
    if bye_reason is not None:
        return "the server closed the connection"
    return "the connection to the server was lost"


class MakeClient(Protocol):
    """Makes the L{ChatClient} of one connection."""

    def __call__(
        self,
        nick: str | None,
        *,
        joined_as: str | None,
        password: tuple[str, str] | None,
        lobby_shown: ShownLobby,
        nick_tries: NickTries,
    ) -> ChatClient:
        """
        @param nick: the nickname to ask for.
        @param joined_as: the nick an earlier connection got in with (it is
            a reconnection), C{None} if none did.
        @param password: the password kept for a nick, C{(nick, password)}.
        @param lobby_shown: the lobby messages on the screen.
        @param nick_tries: the C{NICK}s sent again by themselves since the
            last C{READY}, on any connection (L{NickTries}).
        """


def backoff_delay(attempt: int, draw: float) -> float:
    """
    Seconds to wait before reconnection attempt C{attempt} (0 first):
    1, 2, 4, 8, 16, then 30, each times 0.75 to 1.25 by C{draw} (0 <= draw < 1).
    """
    base = min(BACKOFF_MAX, 2.0 ** min(attempt, 16))
    return base * (1 - JITTER + 2 * JITTER * draw)


def should_reconnect(
    *,
    joined: bool,
    rejoining: bool,
    user_left: bool,
    bye_reason: str | None,
    waiting_for_nick: bool = False,
) -> bool:
    """
    Whether a connection's end is followed by another connection.

    @param joined: this connection reached C{READY}.
    @param rejoining: it was itself a reconnection (made after an earlier
        connection ended: one that had joined, or a cut wait for our nick).
    @param user_left: the user quit (C{/quit}, Ctrl-C, Ctrl-D).
    @param bye_reason: the server's C{BYE} reason, C{None} without one.
    @param waiting_for_nick: it ended while our own nick was to be sent
        again by itself (taken by our old connection, most likely, the
        server briefly unavailable, or not looked at for a wait the server
        named): a C{BYE timeout} then is not a prompt left open.
    """
    if user_left or bye_reason == _USER_LEFT:
        return False
    if joined:
        # shutdown, a lost connection, the server's ping timeout, flood (the
        # web page comes back after each of them too).
        return True
    if waiting_for_nick and bye_reason == "timeout":
        # The server's nick timeout cut a wait for our nick: on the first
        # connection too (a person held back at the start is not let go).
        return True
    if not rejoining:
        return False  # the first connection's failures end the client, as always
    # A reconnection that did not get in: the server is not back yet (refused,
    # lost, full), or it asks us to stop.
    return bye_reason not in _STOP_BEFORE_JOINING


class Reconnecting:
    """
    The connections of one interactive session, one after the other.

    @param make_client: a new L{ChatClient} (L{MakeClient}).
    @param connect: starts connecting a client (its C{finished} fires at the end).
    @param attach: called with each new client before it connects (the
        screen's flow control).
    @param display: the screen (may be set later, before L{start}).
    @param enabled: reconnect at all (a terminal without C{--no-reconnect}).
    @ivar finished: fires with the last connection's L{Outcome} when the
        session is over.
    """

    def __init__(
        self,
        clock: IReactorTime,
        display: Display | None,
        make_client: MakeClient,
        connect: Callable[[ChatClient], object],
        *,
        nick: str | None,
        enabled: bool,
        attach: Callable[[ChatClient], object] = lambda client: None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.display = display
        self._make_client = make_client
        self._connect = connect
        self._attach = attach
        self._draw = draw
        self.enabled = enabled
        self.nick = nick
        self.password: tuple[str, str] | None = None
        self.attempt = 0
        # The NICKs sent again by themselves since the last READY (Login's bounds).
        self.nick_tries = NickTries()
        # The nick the last connection that got in had: the next ones rejoin.
        self.joined_as: str | None = None
        self.reconnecting = False  # a connection after the first is made, or waited for
        self.user_left = False
        # Ctrl-C (or SIGINT) ended the session between connections, or before
        # a reconnection got in, and no connection had got in when it came
        # (a READY crossing its goodbye does not change that).
        self._interrupted_before_joining = False
        # The user left a reconnection before it got in: the session ends as
        # the connection it reconnects after did (L{_leave_reconnection}).
        self._left_reconnection = False
        self.client: ChatClient | None = None
        self.finished: Deferred[Outcome] = Deferred()
        self._timer: IDelayedCall | None = None
        # How the connection whose end began the reconnecting ended (one
        # that had got in, or the first): leaving before one gets back in
        # ends so, not as a failed reconnection (its sentence was shown).
        self._last: Outcome = Outcome(0)
        # The lobby messages on the screen, across connections.
        self.lobby_shown = ShownLobby()
        # The lines typed ahead of a login that did not get in, for the next.
        self._typed_ahead = HandedOver()
        # What the last failed reconnection said (None: since one got in, or
        # after a /reconnect): the same again is said in one short line.
        self._failure: str | None = None
        # The "Connected to ..." line said since one got in (or since a
        # /reconnect): the same again is not said.
        self._greeting: str | None = None
        # The server's nick timeout ended the nickname prompt: the next
        # line typed is the nick to connect again with (L{_await_nick}).
        self._nick_wanted = False

    def _show(self, line: render.Line) -> None:
        if self.display is not None:
            self.display.show(line)

    def _prompt(self, prompt: str) -> None:
        if self.display is not None:
            self.display.set_prompt(prompt)

    # -- the connections -------------------------------------------------------

    def start(self) -> ChatClient:
        """Make the first connection."""
        return self._begin()

    def _begin(self) -> ChatClient:
        client = self._make_client(
            self.nick,
            joined_as=self.joined_as,
            password=self.password,
            lobby_shown=self.lobby_shown,
            nick_tries=self.nick_tries,
        )
        self.client = client
        client.greeted_before = self._greeted_before
        client.followed = lambda: self._goes_on(client)
        client.outbox.take_over(self._typed_ahead)
        self._typed_ahead = HandedOver()
        self._attach(client)
        client.finished.addCallback(self._ended, client)
        self._connect(client)
        return client

    def _greeted_before(self, said: str) -> bool:
        if said == self._greeting:
            return True
        self._greeting = said
        return False

    def _may_follow(self, client: ChatClient) -> bool:
        """Whether anything may follow C{client}'s end: reconnecting is on
        and the user did not leave (C{/quit}, Ctrl-C, Ctrl-D)."""
        ending = client.ending
        return self.enabled and not (self.user_left or ending.said_bye or ending.interrupted)

    def _goes_on(self, client: ChatClient) -> bool:
        """Whether C{client}'s end (now) is followed by another connection."""
        return self._may_follow(client) and should_reconnect(
            joined=client.nick is not None,
            rejoining=self.reconnecting,
            user_left=False,  # _may_follow checked it
            bye_reason=client.ending.bye_reason,
            waiting_for_nick=client.login.nick_waited is not None,
        )

    def _ended(self, outcome: Outcome, client: ChatClient) -> None:
        self.client = None
        joined = client.nick is not None
        waited = client.login.nick_waited
        goes_on = self._goes_on(client)
        if joined:
            self.nick = self.joined_as = client.nick
            self.attempt = 0  # it got in: the next loss starts the backoff again
            self._failure = None
            self._greeting = None
        # The client started with ours: it has the one that got in (or was
        # registered) instead, or none once the server refused it.
        self.password = client.kept_password
        if self._nick_prompt_timed_out(client):
            self._await_nick(client, outcome)
            return
        if not goes_on:
            self._finish(self._last if self._left_reconnection else outcome)
            return
        if joined or not self.reconnecting:
            # (A reconnection that did not get in leaves the outage's end as it was.)
            self._last = outcome
        if not joined:
            # Once in, they were dropped and counted (ChatClient.connectionLost).
            self._typed_ahead = client.outbox.hand_over()
        if not joined and waited is not None:
            # The next connection asks for the nick the server's nick
            # timeout cut the wait for: --nick, the old connection's, or
            # one typed at a prompt (which is no old connection's).
            self.nick = waited
        self.reconnecting = True
        partner = client.pairing.partner if joined else None
        said = outcome.message or f"The connection to {client.server} was lost."
        # A cut wait for our nick is no failure to connect: its own "try N of
        # M" lines said the progress, and the cut is said in full.
        failed = not joined and waited is None
        again = failed and said == self._failure
        self._failure = said if failed else None
        if again:
            self._schedule(tries=self.attempt)
            return
        self._show(render.error(said))
        typed = len(self._typed_ahead.lines)
        if typed:
            lines, them = ("1 line", "it is") if typed == 1 else (f"{typed} lines", "they are")
            self._show(render.notice(
                f"{lines} typed ahead {'waits' if typed == 1 else 'wait'} for the next "
                f"connection: {them} sent once you are in."
            ))
        why = _why_ended(client.ending.bye_reason)
        if partner is not None:
            self._show(render.notice(f"Your private conversation with {partner} ended: {why}."))
            if self.display is not None:
                set_aside(
                    self.display,
                    lambda text: self._show(render.notice(text)),
                    partner,
                    "the private conversation ended",
                )
        if joined:
            self._invitations_ended(client, why)
        self._schedule()

    def _nick_prompt_timed_out(self, client: ChatClient) -> bool:
        """The server's nick timeout ended C{client} at its nickname
        prompt (no wait of ours for the nick, no goodbye of the user's)."""
        ending = client.ending
        return (
            self._may_follow(client)
            and client.login.nick_waited is None
            and ending.bye_reason == "timeout"
            and ending.bye_at_nick_prompt
        )

    def _await_nick(self, client: ChatClient, outcome: Outcome) -> None:
        """
        The prompt stays: the nickname typed at it, whenever that is, goes
        to a new connection (as the web page waits for its Join), with no
        timer; C{/quit}, Ctrl-C and Ctrl-D leave as C{client} ended.
        """
        if not self.reconnecting:
            self._last = outcome
        self.reconnecting = True
        self._typed_ahead = client.outbox.hand_over()
        self._nick_wanted = True
        self._show(render.error(outcome.message or "The server stopped waiting for the nickname."))
        self._show(render.notice(_TYPE_A_NICK))
        self._prompt("nickname: ")

    def _nick_typed(self, line: str) -> None:
        """A line at the prompt L{_await_nick} left: the nick to connect
        again with, read as the login reads its prompt's."""
        nick = nick_prompt_line(line)
        if isinstance(nick, NotANick):
            for said in nick.said:
                for shown in render.local(said):
                    self._show(shown)
            return
        if not isinstance(nick, str):
            return  # a blank line (user_line takes /quit first)
        self.nick = nick
        self._nick_wanted = False
        self._show(render.notice(f"Connecting again as {nick}..."))
        self._begin()

    def _invitations_ended(self, client: ChatClient, why: str) -> None:
        """
        Say each open invitation, the user's own and those to the user, that
        ended with C{client}'s connection: the server that would say so
        (C{DECLINED}, C{CANCELLED}) forgot them, and the next connection
        starts with none.
        """
        invitee = client.pairing.invited
        if invitee is not None:
            self._show(render.notice(
                f"Your invitation to {invitee} ended: {why}. "
                f"Once you are back, /pair {invitee} invites them again."
            ))
        for inviter in client.pairing.invites:
            self._show(render.notice(
                f"{inviter}'s invitation ended: {why}. "
                f"/accept {inviter} will not find it; ask them to invite you again."
            ))

    def _schedule(self, tries: int = 0) -> None:
        """
        The next connection after a delay, said in full, or, after C{tries}
        reconnections that failed the same way, in one short line.
        """
        delay = backoff_delay(self.attempt, self._draw())
        self.attempt += 1
        self._timer = self.clock.callLater(delay, self._retry)
        self._prompt("(not connected) > ")
        seconds = max(1, round(delay))
        if tries:
            self._show(render.notice(
                f"Still not connected after {tries} tries (the same error); "
                f"next try in {seconds} s."
            ))
            return
        self._show(render.notice(
            f"Reconnecting in {seconds} s; {RECONNECT_COMMAND} tries now, /quit leaves."
        ))

    def _retry(self, asked: bool = False) -> None:
        self._timer = None
        if asked:
            # The user asked: what it meets is said in full.
            self._failure = self._greeting = None
        if self._failure is None:
            self._show(render.notice("Reconnecting..."))
        self._nick_wanted = False
        self._begin()

    def _finish(self, outcome: Outcome) -> None:
        if self._interrupted_before_joining:
            # As on a connection that had not got in (docs/client.md, exit status).
            outcome = interrupted_before_joining(outcome)
        typed = len(self._typed_ahead.lines)
        if typed:
            # Left between connections: the lines typed ahead that waited
            # for the next one are counted, as at one connection's end.
            said = not_sent(typed)
            message = said if outcome.message is None else f"{outcome.message} {said}"
            outcome = Outcome(outcome.code, message)
            self._typed_ahead = HandedOver()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.finished.called:
            self.finished.callback(outcome)

    def _not_connected(self) -> None:
        if self._timer is not None:
            left = max(1, round(self._timer.getTime() - self.clock.seconds()))
            when = f"Reconnecting in {left} s; {RECONNECT_COMMAND} tries now, /quit leaves."
        else:
            when = "Reconnecting: wait until you are back in the lobby."
        self._show(render.error(
            f"Not connected: that line was not sent (Up brings it back). {when}"
        ))

    # -- the keyboard ------------------------------------------------------------

    def _connecting_again(self, client: ChatClient) -> bool:
        """A reconnection that has not reached a prompt the user answers."""
        return self.reconnecting and client.state in (
            State.CONNECTING, State.GREETING, State.NICK_SENT
        )

    def user_line(self, line: str) -> None:
        command = line.strip().lower()
        action = parse_input(line)
        client = self.client
        if client is None:
            if self._nick_wanted and command != RECONNECT_COMMAND and not isinstance(action, Quit):
                self._nick_typed(line)
            elif command == RECONNECT_COMMAND:
                if self._timer is not None and self._timer.active():
                    self._timer.cancel()
                self._retry(asked=True)
            elif isinstance(action, Quit):
                self.user_left = True
                self._finish(self._last)
            elif action is not None:
                self._not_connected()
            return
        if command == RECONNECT_COMMAND and self.reconnecting and client.nick is None:
            self._show(render.notice("Reconnecting already."))
            return
        if isinstance(action, Quit):
            self.user_left = True
            if self._not_in_yet(client):
                self._leave_reconnection(client)
                client.quit(action.text)  # at once: not queued until it got in
                return
        elif action is not None and self._connecting_again(client):
            self._not_connected()
            return
        client.user_line(line)

    def _leave(self, then: Callable[[ChatClient], object]) -> None:
        """The user leaves: between connections at once, else through C{then}."""
        self.user_left = True
        if self.client is None:
            self._finish(self._last)
        else:
            then(self.client)

    def _between(self) -> bool:
        """
        Between connections: none is open, or the last one has ended (its
        end held for the Enter after an open password prompt,
        L{UserInput.swallowed}) and another would follow.
        """
        client = self.client
        return client is None or (client.state is State.CLOSED and self._goes_on(client))

    def _not_in_yet(self, client: ChatClient | None) -> TypeGuard[ChatClient]:
        """
        C{client} is a reconnection, open, that has not got in: connecting,
        greeted, logging in, or at its nickname or password prompt.
        """
        return (
            client is not None
            and self.reconnecting
            and client.nick is None
            and client.state is not State.CLOSED
        )

    def _leave_reconnection(self, client: ChatClient) -> None:
        """
        The user leaves C{client}, a reconnection not in yet: the session
        ends as the connection it reconnects after did, as between
        connections (its status and sentence: 1 once the chat was joined),
        and the lines typed ahead that it holds are counted at the end.
        """
        if self._left_reconnection:
            return  # a second Ctrl-C, or one after /quit: taken already
        self._left_reconnection = True
        self._typed_ahead = client.outbox.hand_over()

    def interrupt(self) -> None:
        """
        Ctrl-C (or SIGINT): leave.  Between connections, or before a
        reconnection got in, it ends as the connection the client
        reconnects after did (status 1 once the chat was joined), and as an
        interrupt before joining the chat (status 130) until one got in:
        one had not when the key came (a C{READY} crossing the goodbye
        comes too late to change that).
        """
        client = self.client
        if self._not_in_yet(client) or self._between():
            in_now = client is not None and client.nick is not None
            self._interrupted_before_joining = self.joined_as is None and not in_now
            if client is not None and self.reconnecting and client.nick is None:
                # Open, or its end held for the Enter after a password prompt.
                self._leave_reconnection(client)
        self._leave(ChatClient.interrupt)

    def end_of_typing(self) -> None:
        """
        Ctrl-D on an empty line: leave (once what waits has gone).  Between
        connections, or before a reconnection got in, nothing can go: it is
        Ctrl-C, as on a connection that has not got in.
        """
        if self._between() or self._not_in_yet(self.client):
            self.interrupt()
            return
        self._leave(ChatClient.end_of_typing)

    def end_of_input(self) -> None:
        """A script's input ended (it never reconnects)."""
        self._leave(ChatClient.input_ended)

    def secret_line(self, text: str) -> None:
        if self.client is not None:
            self.client.secret_line(text)

    def online_nicks(self) -> list[str]:
        return self.client.online_nicks() if self.client is not None else []

    def paste_time(self, count: int) -> float:
        return self.client.paste_time(count) if self.client is not None else 0.0
