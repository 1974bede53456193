"""
What the server says, one line at a time: L{Replies.handle} runs the
C{on_VERB} method of each known verb (docs/protocol.md lists them).

The handlers change the connection's plain state (who is online, the pair,
the login, the outbox's counts of what was answered) and show what happened.
A lobby replay (the recent messages after C{READY}, or what was missed while
paired, after C{UNPAIRED}) and the lobby's joins and leaves held while paired
are kept here.  L{Replies} sees its connection through a small L{Client}
interface, and the user's side through L{UserInput}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime, ITransport

from twisted_chat.client import render
from twisted_chat.client.commands import Send
from twisted_chat.client.display import Display
from twisted_chat.client.events import ServerLine
from twisted_chat.client.input import UserInput
from twisted_chat.client.lobbyview import HeldNotices, Repeats, ShownLobby
from twisted_chat.client.login import Login
from twisted_chat.client.outbox import Outbox
from twisted_chat.client.pairing import Pairing, may_be_not_done
from twisted_chat.client.passwords import Passwords
from twisted_chat.client.render import Line, Renderer
from twisted_chat.client.roster import Roster
from twisted_chat.client.session import Ending, State
from twisted_chat.wire import PROTOCOL_VERSION, nick_key

# Seconds from one bell to the next at least: another user's burst of
# private messages or mentions rings once, and a stream of them, however
# long, still lets anyone else's ring (a second after the last bell).
BELL_GAP = 1.0


class Client(Protocol):
    """What L{Replies} needs from its connection (L{ChatClient})."""

    nick: str | None
    kept_password: tuple[str, str] | None

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def server(self) -> str: ...

    @property
    def interactive(self) -> bool: ...

    @property
    def rejoin(self) -> bool: ...

    @property
    def show_history(self) -> bool: ...

    @property
    def greeted_before(self) -> Callable[[str], bool]:
        """Whether this greeting was said already (in an outage)."""

    @property
    def private_to(self) -> str | None:
        """The partner (nick_key) the last line of a private conversation was sent to."""

    @property
    def state(self) -> State: ...

    @property
    def display(self) -> Display | None: ...

    @property
    def transport(self) -> ITransport | None: ...

    @property
    def renderer(self) -> Renderer: ...

    @property
    def roster(self) -> Roster: ...

    @property
    def pairing(self) -> Pairing: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def lobby_shown(self) -> ShownLobby: ...

    @property
    def login(self) -> Login: ...

    @property
    def passwords(self) -> Passwords: ...

    @property
    def ending(self) -> Ending: ...

    def set_state(self, state: State) -> None: ...

    def send(self, request: Send) -> None: ...

    def show(self, line: Line) -> None: ...

    def notice(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...

    def greeting_done(self) -> None:
        """The server answered: its greeting timeout no longer runs."""


class Replies:
    """
    The server's lines, for one connection.

    @ivar held: the lobby's joins and leaves while paired: shown among the
        lobby's messages replayed when the pair ends (as the web page does).
    """

    def __init__(self, client: Client, user_input: UserInput) -> None:
        self._client = client
        self._input = user_input
        self._replay: str | None = None  # "login" or "away" while HISTORY lines come
        self._replay_heading = False  # the heading for the lines replayed is shown
        # While a READY block's history comes, the lobby messages shown
        # already that it may repeat (twisted_chat.client.lobbyview).
        self._repeats: Repeats | None = None
        self.held = HeldNotices()
        self._last_ring: float | None = None  # when the bell last rang

    def handle(self, event: ServerLine) -> None:
        """Act on a line of a verb this client knows."""
        handler: Callable[[ServerLine], None] = getattr(self, f"on_{event.verb}")
        handler(event)

    def _ring(self) -> None:
        """Ring for a mention, a private message or an invitation, unless
        the bell rang less than L{BELL_GAP} seconds ago (a burst rings once)."""
        client = self._client
        if not client.interactive or client.display is None:
            return
        now, last = client.clock.seconds(), self._last_ring
        if last is not None and now - last < BELL_GAP:
            return
        self._last_ring = now
        client.display.bell()

    def _at_password(self) -> bool:
        """At the password prompt, or about to be asked again (a C{PASS}
        sent and not yet answered)."""
        client = self._client
        return client.state is State.ASK_PASSWORD or (
            client.state is State.NICK_SENT and client.login.pass_sent)

    # -- the login -------------------------------------------------------------

    def on_HELLO(self, event: ServerLine) -> None:
        client = self._client
        version = event.word(0)
        warning = ""
        if version != PROTOCOL_VERSION:
            warning = (f"The server speaks {version}, this client {PROTOCOL_VERSION}; "
                       "some things may not work.")
        about = f", running {event.text}" if event.text else ""
        said = f"Connected to {client.server}{about}."
        if client.greeted_before(f"{warning}\n{said}"):  # the whole greeting, once
            return
        if warning:
            client.error(warning)
        client.notice(said)

    def on_NICK(self, event: ServerLine) -> None:
        self._client.greeting_done()
        self._client.login.nick_asked()

    def on_RETRY(self, event: ServerLine) -> None:
        self._client.login.retry(event.word(0), event.text)

    def on_PASS(self, event: ServerLine) -> None:
        self._client.login.password_asked(event.word(0))

    def on_REGISTERED(self, event: ServerLine) -> None:
        self._client.passwords.registered(event.word(0))

    def on_READY(self, event: ServerLine) -> None:
        client = self._client
        client.greeting_done()
        nick = client.nick = event.word(0)
        client.set_state(State.READY)
        if client.rejoin:
            client.notice(f"Reconnected: you are back in the lobby as {nick}.")
        else:
            client.notice(
                f"Welcome, {nick}! You are in the lobby. "
                "Type a message and press Enter; /help lists the commands."
            )
        kept = client.kept_password
        if kept is not None and nick_key(kept[0]) != nick_key(nick):
            client.kept_password = None  # it belongs to a nick this session left
        login = client.login
        password = login.password_sent
        # A PASS asked for at login: the nick has an account (none otherwise).
        client.passwords.account = login.joined()
        if client.passwords.account:
            if client.interactive and password is not None:
                client.kept_password = (nick, password)
            # What was typed while the password was checked may be it again,
            # unless no prompt asked for it: the kept one answered the
            # server's PASS, and the line being typed is a draft from before.
            if not login.password_kept:
                self._input.drop_typed_ahead("while the password was checked", "now")
        self._replay, self._replay_heading = "login", False
        self._repeats = client.lobby_shown.repeats()
        self._input.pump()

    # -- the lobby -------------------------------------------------------------

    def _heading(self) -> None:
        """The replay's heading, before its first line."""
        if self._replay is not None and not self._replay_heading:
            self._replay_heading = True
            if self._replay == "away":
                self._client.notice("While you were away, the lobby said:")
            else:
                self._client.notice("Recent messages in the lobby:")

    def on_HISTORY(self, event: ServerLine) -> None:
        client = self._client
        ts, sender = event.words
        if self._replay == "login" and not client.show_history:
            return
        # Only a READY block's history can repeat a line already shown (a
        # reconnection's); the replay after UNPAIRED is what was missed.
        if self._repeats is not None and self._repeats.repeats(ts, sender, event.text):
            return
        client.lobby_shown.shown(ts, sender, event.text)
        self._heading()
        if self._replay == "away":
            self.held.release(client.show, until=ts)
        client.show(client.renderer.message(ts, sender, "*", event.text))

    def connection_lost(self) -> None:
        """The joins and leaves held during a pair the connection's end
        ends: what happened in the lobby before it, shown now."""
        if len(self.held):
            self._client.notice("Meanwhile, in the lobby:")
            self.held.release(self._client.show)

    def _end_replay(self) -> None:
        if self._replay == "away" and len(self.held):
            self._heading()
            self.held.release(self._client.show)
        self._replay, self._replay_heading = None, False
        self._repeats = None

    def on_MSG(self, event: ServerLine) -> None:
        client = self._client
        ts, sender, to = event.words
        if to == "*":
            client.lobby_shown.shown(ts, sender, event.text)
        client.show(client.renderer.message(ts, sender, to, event.text))
        if client.nick is None:
            return
        if nick_key(sender) == nick_key(client.nick):
            client.outbox.echoed(None if to == "*" else nick_key(to), event.text)  # it took it
            return
        if to != "*" or render.mentions(event.text, client.nick):
            self._ring()  # a private message, or a lobby line that names you

    def _lobby_notice(self, ts: str, nick: str, line: Line) -> None:
        """A join or leave: shown now, or held while paired (the lobby's
        messages of that time come when the pair ends, and it goes among them).
        The partner's own leaving belongs to the conversation: shown now (the
        web page shows it in the conversation too)."""
        partner = self._client.pairing.partner
        if partner is None or nick_key(nick) == nick_key(partner):
            self._client.show(line)
        else:
            self.held.hold(ts, line)

    def on_JOINED(self, event: ServerLine) -> None:
        ts, nick = event.words
        self._client.roster.joined(nick)
        self._lobby_notice(ts, nick, self._client.renderer.joined(ts, nick))

    def on_LEFT(self, event: ServerLine) -> None:
        ts, nick, reason = event.words
        self._client.roster.left(nick)
        self._lobby_notice(ts, nick, self._client.renderer.left(ts, nick, reason, event.text))

    def on_USER(self, event: ServerLine) -> None:
        self._end_replay()
        self._client.roster.user(event.word(0), event.word(1), event.word(2))

    def on_USERS(self, event: ServerLine) -> None:
        self._end_replay()
        rows, left_out = self._client.roster.users()
        for line in self._client.renderer.users(rows, left_out):
            self._client.show(line)

    # -- pairs -----------------------------------------------------------------

    def on_PENDING(self, event: ServerLine) -> None:
        invitee = event.word(0)
        self._client.pairing.pending(invitee)
        self._client.notice(
            f"Invitation sent to {invitee}; waiting for an answer (/unpair withdraws it)."
        )

    def on_INVITE(self, event: ServerLine) -> None:
        inviter = event.word(0)
        self._client.pairing.invite(inviter)
        self._client.notice(
            f"{inviter} invites you to a private conversation. "
            f"Type /accept {inviter} to accept or /reject {inviter} to decline."
        )
        self._ring()

    def on_PAIRED(self, event: ServerLine) -> None:
        client = self._client
        partner = event.word(0)
        ours = client.pairing.paired(partner)
        client.set_state(State.PAIRED)
        client.notice(
            f"You are now in a private conversation with {partner}. "
            f"What you type goes to {partner} only; /unpair leaves."
        )
        if not ours:
            # Our invitation was accepted while lines typed for the lobby wait.
            self._input.drop_meant_elsewhere(
                f"you are now talking with {partner} only", "the lobby"
            )

    def on_UNPAIRED(self, event: ServerLine) -> None:
        client = self._client
        nick, reason = event.words
        partner = client.pairing.partner or nick
        by_me = client.pairing.unpaired()
        if client.state is State.PAIRED:
            client.set_state(State.READY)
        client.notice(render.unpaired(nick, reason, by_me=by_me))
        if not by_me:
            # (After our /unpair, all that waits was typed after it: it went
            # first.  It goes to the lobby, as it would have without a wait.)
            self._input.drop_meant_elsewhere("the private conversation ended", partner)
        # What the lobby said meanwhile comes next, before the user list.
        self._replay, self._replay_heading = "away", False

    def on_DECLINED(self, event: ServerLine) -> None:
        nick, reason = event.words
        self._client.pairing.declined(nick, reason)
        self._client.notice(render.declined(nick, reason))

    def on_CANCELLED(self, event: ServerLine) -> None:
        nick, reason = event.words
        self._client.pairing.cancelled(nick)
        self._client.notice(render.cancelled(nick, reason))

    # -- the rest --------------------------------------------------------------

    def on_BYE(self, event: ServerLine) -> None:
        client = self._client
        reason = event.word(0)
        at_login = client.state is State.NICK_SENT and client.login.pass_sent
        logging_in = None
        if self._at_password():
            logging_in = "password"
        elif client.state in (State.GREETING, State.ASK_NICK, State.NICK_SENT):
            logging_in = "nickname"
        said = render.bye(reason, event.text, after_password=at_login, logging_in=logging_in)
        ending = client.ending
        ending.bye_received = True
        ending.bye_reason = reason
        ending.bye_at_nick_prompt = client.state is State.ASK_NICK
        client.greeting_done()
        if reason == "quit" and client.state is State.QUITTING:
            ending.bye_answered = True  # after every line we sent before it
            client.notice(said)
        elif ending.failure is None:
            ending.failure = said
        client.set_state(State.QUITTING)
        if client.transport is not None:
            client.transport.loseConnection()

    def on_PING(self, event: ServerLine) -> None:
        self._client.send(Send("PONG", text=event.text))

    def on_PONG(self, event: ServerLine) -> None:
        pass

    def on_HELP(self, event: ServerLine) -> None:
        if event.text:
            self._client.show(render.info(event.text))

    def on_ERROR(self, event: ServerLine) -> None:
        client = self._client
        code = event.word(0)
        said = client.passwords.refused(code, event.text)
        if said is None and code == "not-ready":
            # At the password prompt, or about to be asked again (a PASS refused).
            said = render.not_ready(event.text, prompt=client.interactive and self._at_password())
        elif said is None:
            said = render.error_sentence(code, event.text)
        late = render.behind(code, event.text)
        unsent = render.message_refused(code, event.text)
        gone = event.text.split(" ", 1)[0] if code == "no-such-nick" else ""
        # It answers the oldest DM to that nick still unanswered, else the
        # /pair of that nick, whichever was sent first (the server answers a
        # connection's lines in order; in_flight is None once it may not).
        inviting = bool(gone) and client.pairing.inviting(gone)
        before = client.pairing.in_flight() if inviting else None
        dm = bool(gone) and client.outbox.refused_to(nick_key(gone), before)
        if inviting and not dm:
            said = render.invitation_not_sent(event.text)
        if late is not None:
            said = render.not_keeping_up(late)  # a message's refusal, not an invitation's
        elif unsent is not None:
            said = unsent  # likewise
        elif not dm:
            client.pairing.refused(code, event.text)
        if gone and nick_key(gone) == client.private_to and client.state is not State.NICK_SENT:
            # A line of the private conversation met its partner gone.
            said = (
                f"Not sent: {gone} has left the chat, and your private "
                "conversation with them is over."
            )
        if code == "server-full" and client.state not in (State.READY, State.PAIRED):
            client.ending.failure = said  # said once, on the way out (BYE full follows)
            return
        if client.state is State.NICK_SENT:
            client.login.refused(code, event.text, said)
            return
        refused = self._refused_message(code, late or "", event.text,
                                        unsent=unsent is not None)
        client.error(refused or said)
        if may_be_not_done(code, event.text):
            self._pairing_not_done(code)
        rate = client.outbox.flood(event.text) if code == "flood" else None
        if rate is not None:
            lines = "line" if rate == 1 else "lines"
            client.notice(f"Sending at most {rate:g} {lines} per second from now on.")

    def _pairing_not_done(self, code: str) -> None:
        """An C{ERROR internal}, or an C{ERROR flood} for a line dropped
        (C{code}), may answer the pairing command in flight: it does unless
        a message sent before that is still unanswered (L{Pairing.not_done});
        then the user is told what became of it, and where they still are
        (what an C{internal} fault did before it is not known: a C{PAIRED}
        or C{UNPAIRED} may still come)."""
        client = self._client
        pairing = client.pairing
        before = pairing.in_flight()
        if before is None or client.outbox.unanswered_among_first(before):
            return
        command = pairing.not_done()
        partner = pairing.partner
        where = f"talking with {partner} only" if partner else "in the lobby"
        if code == "flood":
            client.notice(f"{command} was dropped, not done: you are still {where}.")
        else:
            client.notice(f"The server failed on {command}: you are still {where} unless "
                          "it says otherwise.")

    def _refused_message(self, code: str, named: str, text: str, *, unsent: bool) -> str | None:
        """
        An C{ERROR} that may refuse one of our messages: it is answered (said
        now), not in doubt at the end (L{Outbox.losses}).  The server reads a
        connection's lines in order: it refused the oldest message not yet
        answered that it can be about (for a C{busy} about a reader far
        behind, C{named}, a C{DM} to them, else a C{MSG} the server sent to
        them as the partner; a C{MSG} for a "not sent" whose pair changed
        before it was delivered, C{unsent} (as L{render.message_refused}
        tells it); one longer than the limit it names; one with other than
        printable ASCII for its characters), as the web page counts them.
        Returned: a C{too-long} said for the message it refused
        (L{render.too_long}), else C{None}.  (L{on_ERROR} matches a
        C{no-such-nick} to its C{DM} first: if none, it answers a C{PAIR}.)
        """
        outbox = self._client.outbox
        if code == "busy" and named:
            outbox.refused_behind(nick_key(named))
        elif unsent:
            outbox.refused_msg()
        elif code == "self" and self._client.nick is not None:
            outbox.refused_to(nick_key(self._client.nick))
        elif code == "too-long":
            most = re.search(r"at most (\d+) bytes", text)
            limit = int(most.group(1)) if most else 0
            message = outbox.refused_longer(limit)
            if message is not None and limit:
                return render.too_long(message.size, message.text, limit)
        elif code in ("bad-chars", "bad-encoding"):
            outbox.refused_chars()
        return None
