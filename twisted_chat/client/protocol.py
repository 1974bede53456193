"""
The client's side of a chat/1 connection.

L{ChatClient} is the protocol on the network connection.  It also takes what
the user types (L{ChatClient.user_line}) and shows what happens through a
L{Display}: the terminal line editor or plain output on a pipe.  Its parts
have modules of their own (docs/client.md, "How it works"), each seeing the
client through a small C{Client} interface: what the user types, the queue
it waits in and leaving (L{twisted_chat.client.input}); what the server says
(L{twisted_chat.client.replies}); the login (L{twisted_chat.client.login})
and passwords (L{twisted_chat.client.passwords}).  The queue, its pacing and
its counts are an L{Outbox} (L{twisted_chat.client.outbox}); the pair and who
is online are plain state (L{twisted_chat.client.pairing},
L{twisted_chat.client.roster}), and so is how the session is ending
(L{twisted_chat.client.session.Ending}).  L{twisted_chat.client.liveness}
notices a server that stopped answering what the user sends.

When the session ends, L{ChatClient.finished} fires with an L{Outcome}: the
exit code and, for a failure, one sentence for stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_chat.client import render
from twisted_chat.client.commands import Local, Send
from twisted_chat.client.diagnose import describe_connect_error, describe_tls_error, looks_like_tls
from twisted_chat.client.display import Display
from twisted_chat.client.events import Malformed, parse
from twisted_chat.client.flow import Valve, taken
from twisted_chat.client.input import UserInput
from twisted_chat.client.lines import SkipLongLines
from twisted_chat.client.liveness import Liveness
from twisted_chat.client.lobbyview import ShownLobby
from twisted_chat.client.login import Login, NickTries
from twisted_chat.client.outbox import QUEUE_MAX, Outbox, Sent
from twisted_chat.client.pairing import Pairing
from twisted_chat.client.passwords import Passwords
from twisted_chat.client.render import Line, Renderer
from twisted_chat.client.replies import Replies
from twisted_chat.client.roster import Roster
from twisted_chat.client.sanitize import decode
from twisted_chat.client.session import INTERRUPTED, Ending, Outcome, State
from twisted_chat.wire import nick_key


class ChatClient(SkipLongLines):
    """
    One connection to a chat/1 server.

    @param display: where to show things; may be set later, before connecting.
    @param nick: the nickname to ask for (from C{--nick}), or C{None} to ask
        the user.
    @param interactive: C{True} on a terminal.  A script (C{False}) whose
        nickname (C{--nick} or its first line) or password is refused stops
        with an error instead of reading the next line as a nickname.
    @param server: how to name the server in messages (C{host:port}).
    @param clock: schedules the quit and greeting timeouts.
    @param tls: the connection uses TLS (else a server that answers in TLS
        gets a hint to use C{--tls}).
    @param probe: send a C{PING} as soon as connected.  A chat server answers
        it after its greeting; a TLS server takes it for a broken handshake and
        closes at once, so the hint to use C{--tls} comes without a wait.
    @param greeting_timeout: seconds to wait, once connected, for the server
        to ask for a nickname, then for its answer to each nickname or
        password sent, and for it to take what the client writes while lines
        wait on a full socket buffer (C{None}: for ever).
    @param show_history: show the lobby's recent messages sent after C{READY}
        (C{--no-history} turns it off; what was missed while paired is shown
        regardless).
    @param environ: where a script's passwords come from: C{CHAT_PASSWORD}
        (to log in, and for C{/register}), C{CHAT_NEW_PASSWORD} (C{/passwd}).
        On a terminal, passwords are typed at a prompt that does not show them.
    @param warn: shows a warning (default: an error line on the display).
    @param answer_wait: seconds a line sent may go unanswered, once online,
        before the client checks with C{PING} that the server is still there
        (L{twisted_chat.client.liveness}; C{None}: it does not).
    @param joined_as: the nick an earlier connection of the session got in
        with: this one is a reconnection (L{twisted_chat.client.reconnect}),
        whose C{READY} says "Reconnected", and a C{RETRY taken} for that nick
        is waited out (the server may still hold the old connection).
    @param lobby_shown: the lobby messages shown so far, shared between the
        connections of a session (a new one by default): the history does not
        show them again.
    @param nick_tries: the C{NICK}s sent again by themselves since the last
        C{READY}, shared by a session's connections (a new L{NickTries} by
        default): L{Login}'s bounds hold across them.
    @param kept_password: C{(nick, password)}, the password typed this
        session (on a terminal), which answers the server's C{PASS} for that
        nick once; L{kept_password} holds the one that got in, or was
        registered, for the next connection (memory only).
    """

    delimiter = b"\n"
    # Server lines may be longer than its --max-line (they add times and nicks).
    MAX_LENGTH = 1 << 20
    QUIT_TIMEOUT = UserInput.QUIT_TIMEOUT
    GREETING_TIMEOUT = 15.0
    INTERRUPTED = INTERRUPTED  # (twisted_chat.client.session)
    # Lines that wait to be sent (twisted_chat.client.outbox).
    QUEUE_MAX = QUEUE_MAX
    DRAIN_TIMEOUT = UserInput.DRAIN_TIMEOUT
    # Once the client said goodbye, the server's last lines are read even
    # while stdout is full (its answer must be seen; it closes right after),
    # up to this many bytes: the server's own send queue (1 MiB by default)
    # and the kernel's buffers hold less.
    QUIT_READ_MAX = 16 * 1024 * 1024
    # The prompt once the session ended while a password prompt was open,
    # and once a connection another follows ended so (Enter reconnects).
    SWALLOW_PROMPT = "(the session is over; Enter leaves) "
    SWALLOW_PROMPT_FOLLOWED = "(the connection is over; Enter reconnects) "

    _log = Logger()

    def __init__(
        self,
        display: Display | None,
        *,
        nick: str | None,
        interactive: bool,
        server: str,
        clock: IReactorTime,
        now: Callable[[], float] = time.time,
        localtime: Callable[[float], time.struct_time] = time.localtime,
        tls: bool = False,
        probe: bool = False,
        greeting_timeout: float | None = GREETING_TIMEOUT,
        show_history: bool = True,
        environ: Mapping[str, str] | None = None,
        warn: Callable[[str], None] | None = None,
        answer_wait: float | None = Liveness.ANSWER_WAIT,
        joined_as: str | None = None,
        kept_password: tuple[str, str] | None = None,
        lobby_shown: ShownLobby | None = None,
        nick_tries: NickTries | None = None,
    ) -> None:
        self.display = display
        self.option_nick = nick
        self.interactive = interactive
        self.server = server
        self.clock = clock
        self.tls = tls
        self.probe = probe
        self.greeting_timeout = greeting_timeout
        self.show_history = show_history
        self.joined_as = joined_as
        self.kept_password = kept_password
        self.nick_tries = nick_tries if nick_tries is not None else NickTries()
        # Whether this greeting ("Connected to ...", and a version warning) was
        # said already (reconnect.py: once in an outage, not at every attempt
        # that gets in to be refused).
        self.greeted_before: Callable[[str], bool] = lambda said: False
        # Whether another connection follows this one's end (reconnect.py):
        # then the lines typed ahead before any got in are left for it.
        self.followed: Callable[[], bool] = lambda: False
        self.environ: Mapping[str, str] = environ if environ is not None else {}
        self.warn = warn if warn is not None else self.error
        self.renderer = Renderer(lambda: self.nick, now, localtime)
        self.state = State.CONNECTING
        self.nick: str | None = None
        # Who is online (for Tab), and the user list being gathered.
        self.roster = Roster()
        # The partner, and the invitations.
        self.pairing = Pairing()
        self.finished: Deferred[Outcome] = Deferred()
        self.cancel_connect: Callable[[], object] | None = None
        # The lobby messages shown (on this connection and, when reconnecting,
        # the earlier ones: twisted_chat.client.lobbyview).
        self.lobby_shown = lobby_shown if lobby_shown is not None else ShownLobby()
        # The partner (nick_key) the last line of a private conversation was
        # sent to: an ERROR no-such-nick naming them says the partner left.
        self.private_to: str | None = None
        # A failure, Ctrl-C, the goodbye: told as an Outcome at the end.
        self.ending = Ending()
        self._greeting_timer: IDelayedCall | None = None
        self._read_after_bye = 0  # bytes read after BYE while stdout was full
        # What the user types and leaving; what the server says.
        self.user_input = UserInput(self)
        self.replies = Replies(self, self.user_input)
        # The password prompt, and /register and /passwd.
        self.passwords = Passwords(self)
        # NICK, and PASS, until READY.
        self.login = Login(self, self.passwords)
        # The server's connection is not read while stdout ("display") or the
        # connection itself ("socket") cannot take more (twisted_chat.client.flow).
        self.reading = Valve()
        # What the user typed, waiting to be sent: paced, held while the
        # socket is full (for at most greeting_timeout seconds in which the
        # server takes none of it), and counted when it does not arrive.
        self.outbox = Outbox(
            clock,
            go=self.user_input.pump,
            stalled=self._stalled,
            socket_full=lambda: self.reading.held("socket"),
            taken=lambda: taken(self.transport),
            stall_timeout=greeting_timeout,
            limit=self.QUEUE_MAX,
        )
        # Whether the server still answers what the user sends, once online.
        self.liveness = Liveness(
            clock,
            ping=lambda: self.send(Send("PING", text="are you there?")),
            silent=self._silent,
            back=self._answers_again,
            # Not read while stdout or the socket is full (self.reading): the
            # answer may be there, unread.
            deaf=lambda: self.reading.held("display") or self.reading.held("socket"),
            answer_wait=answer_wait,
        )

    @property
    def rejoin(self) -> bool:
        """This connection is a reconnection (an earlier one got in)."""
        return self.joined_as is not None

    @property
    def input(self) -> IPushProducer | None:
        """A script's stdin, paused while QUEUE_MAX lines wait (None: a terminal)."""
        return self.outbox.input

    @input.setter
    def input(self, producer: IPushProducer | None) -> None:
        self.outbox.input = producer

    # -- showing -------------------------------------------------------------

    def show(self, line: Line) -> None:
        """Show C{line} (nowhere before a display is set)."""
        if self.display is not None:
            self.display.show(line)

    def notice(self, text: str) -> None:
        self.show(render.notice(text))

    def error(self, text: str) -> None:
        self.show(render.error(text))

    def prompt(self) -> str:
        """The input prompt for the current state."""
        if self.state is State.ASK_NICK:
            return "nickname: "
        partner = self.pairing.partner
        if self.state is State.PAIRED and self.nick and partner:
            return f"{self.nick} -> {partner}> "
        if self.nick and self.state is State.READY:
            return f"{self.nick}> "
        return "> "

    def _update_prompt(self) -> None:
        if self.display is not None:
            self.display.set_prompt(self.prompt())

    def set_state(self, state: State) -> None:
        # Once leaving, stay leaving: a READY or PAIRED the server sent before
        # it read our BYE must not make its answer look unexpected.
        if self.state not in (State.QUITTING, State.CLOSED) or state is State.CLOSED:
            self.state = state
        if self.state is not State.NICK_SENT:
            self.login.answered()
        self._update_prompt()

    # -- the network -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.cancel_connect = None
        if self.transport is not None:
            # What we write waits in the socket's buffer: when it is full (a
            # server that does not read its PONGs), stop reading the server,
            # and send queued lines only once it has room again.
            # (TCP and TLS transports are both.)
            self.reading.attach(cast(IPushProducer, self.transport))
            socket = cast(IConsumer, self.transport)
            socket.registerProducer(self.reading.hand("socket", self.outbox.socket_room), True)
        self.set_state(State.GREETING)
        if self.greeting_timeout is not None:
            self._greeting_timer = self.clock.callLater(
                self.greeting_timeout, self._no_greeting
            )
        if self.probe:
            self.send(Send("PING"))
        self.user_input.pump()

    def _tls_hint(self) -> str:
        return "" if self.tls else " If it uses TLS, add --tls."

    def _no_greeting(self) -> None:
        self._greeting_timer = None
        self.ending.failure = (
            f"No greeting from {self.server} within {self.greeting_timeout:g} seconds: "
            f"is it a chat server?{self._tls_hint()}"
        )
        self.close_now()

    def greeting_done(self) -> None:
        """The server answered: its greeting timeout no longer runs."""
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self._greeting_timer = None

    def close_now(self) -> None:
        """Drop the connection without waiting for the peer (TLS included)."""
        if self.transport is None:
            return
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if data:
            self.liveness.heard()
        if self.ending.said_bye and self.reading.held("display"):
            self._read_after_bye += len(data)
            if self._read_after_bye > self.QUIT_READ_MAX:
                self.reading.heed("display")  # enough: stdout's turn again
        if not self.ending.heard and data:
            self.ending.heard = True
            if not self.tls and looks_like_tls(data):
                self.ending.failure = (
                    f"{self.server} answered in TLS, not in plain text: add --tls "
                    "to connect to it."
                )
                self.state = State.QUITTING
                self.close_now()
                return
        super().dataReceived(data)

    def send(self, request: Send) -> None:
        if self.transport is not None and self.state is not State.CLOSED:
            line = request.encode()
            self.transport.write(line)
            message = None
            if request.verb in ("MSG", "DM"):
                to = nick_key(request.words[0]) if request.verb == "DM" else None
                message = Sent(to, request.text, len(line) - 2)
            self.outbox.sent(request.verb, message)
            online = self.state in (State.READY, State.PAIRED)
            if online and request.verb not in ("PING", "PONG", "BYE"):
                self.liveness.sent()  # the server answers it, or sends it back

    def _silent(self, seconds: float, count: int) -> None:
        """The server has not answered the lines sent for C{seconds} (L{Liveness})."""
        lines = "the last line you sent" if count == 1 else f"the last {count} lines you sent"
        self.error(
            f"No answer from {self.server} for {seconds:.0f} seconds: {lines} may not have "
            "arrived. The client keeps waiting; Ctrl-C leaves."
        )

    def _answers_again(self, seconds: float) -> None:
        self.notice(f"{self.server} answers again, after {seconds:.0f} seconds.")

    def lineReceived(self, data: bytes) -> None:
        if data.endswith(b"\r"):
            data = data[:-1]
        raw = decode(data)
        try:
            event = parse(raw)
        except Malformed:
            self.show(render.info(f"(server) {raw}"))  # shown as it is, cleaned
            return
        if event is None or self.state is State.CLOSED:
            return
        if not event.known:
            self.show(render.info(f"(server) {raw}"))
            return
        try:
            self.replies.handle(event)
        except Exception:
            # A line this client cannot cope with is a bug here or a hostile
            # server: show the line, keep the session, never a traceback.
            self._log.failure("could not handle a server line")
            self.show(render.info(f"(server) {raw}"))

    def lineLengthExceeded(self, line: bytes) -> None:
        # Keep the connection; the rest of the line is skipped too.
        self._log.warn("A server line of over {n} bytes was skipped.", n=self.MAX_LENGTH)

    def connectionLost(self, reason: Failure | None = None) -> None:
        previous = self.state
        self.state = State.CLOSED
        self.replies.connection_lost()
        # At an open password prompt the user may be typing blind: the
        # client waits for Enter (unseen) before it gives the terminal back.
        # Not once the user left there (Ctrl-C, Ctrl-D): no Enter is wanted.
        swallowing = self.interactive and self.passwords.asking and not self.ending.said_bye
        followed = self.followed()
        if swallowing:
            self.passwords.swallow(
                self.SWALLOW_PROMPT_FOLLOWED if followed else self.SWALLOW_PROMPT
            )
        else:
            self.passwords.cancel()
        self.greeting_done()
        self.user_input.stop()
        self.login.stop()
        self.outbox.stop()
        self.liveness.stop()
        # Before any got in, the lines typed ahead wait for the next connection.
        handed_over = self.nick is None and followed
        if not self.ending.said_bye and not handed_over:
            self.user_input.drop_queue()  # the session ended under lines waiting: counted
        tls = describe_tls_error(reason, self.server) if reason is not None else None
        outcome = self.ending.outcome(
            self.server,
            quitting=previous is State.QUITTING,
            joined=self.nick is not None,
            tls_error=tls,
            losses=self.outbox.losses(self.ending.bye_answered),
            tls_hint=self._tls_hint(),
            quit_timeout=self.user_input.QUIT_TIMEOUT,
        )
        if swallowing:
            self.user_input.swallowed = outcome
            if followed:
                self.error(
                    "The connection is over: nothing you type now is shown or sent. "
                    "Press Enter to reconnect, or Ctrl-C to leave."
                )
            else:
                self.error(
                    "The session is over: nothing you type now is shown or sent. "
                    "Press Enter to leave."
                )
            return
        self.finish(outcome)

    def connect_failed(self, reason: Failure) -> None:
        """The connection could not be made at all."""
        self.state = State.CLOSED
        tls = describe_tls_error(reason, self.server)
        if tls is not None:
            self.finish(Outcome(1, tls))
            return
        why = describe_connect_error(reason)
        self.finish(Outcome(1, f"Cannot connect to {self.server}: {why}."))

    def finish(self, outcome: Outcome) -> None:
        """The session is over: tell its outcome (once)."""
        if not self.finished.called:
            self.finished.callback(outcome)

    def _stalled(self) -> None:
        """
        Lines waited on a full socket, and for C{greeting_timeout} seconds
        the server took none of what the client sent: give up (they are
        counted), rather than keep a script waiting for ever.
        """
        if self.ending.failure is None:
            self.ending.failure = (
                f"{self.server} did not read what the client sent for "
                f"{self.greeting_timeout:g} seconds."
            )
        self.close_now()

    # -- what the user does (twisted_chat.client.input) ------------------------

    def user_line(self, line: str) -> None:
        """A line the user typed (or a script wrote)."""
        self.user_input.user_line(line)

    def secret_line(self, text: str) -> None:
        """A line typed at a password prompt (never shown, never in the history)."""
        self.user_input.secret_line(text)

    def paste_time(self, count: int) -> float:
        """About how many seconds C{count} more lines take to send (for a held paste)."""
        return self.user_input.paste_time(count)

    def input_ended(self) -> None:
        """End of input: leave once everything before it has been sent."""
        self.user_input.input_ended()

    def end_of_typing(self) -> None:
        """Ctrl-D on an empty line (L{UserInput.end_of_typing})."""
        self.user_input.end_of_typing()

    def interrupt(self) -> None:
        """Ctrl-C (L{UserInput.interrupt})."""
        self.user_input.interrupt()

    def quit(self, text: str = "") -> None:
        """Say BYE and wait (a bounded time) for the server's answer."""
        self.user_input.quit(text)

    def pump(self) -> None:
        """Send the typed lines that may go now."""
        self.user_input.pump()

    def show_local(self, action: Local) -> None:
        """Show what a local command (C{/help}) says."""
        self.user_input.show_local(action)

    def drop_typed_ahead(self, when: str, again: str | None = None) -> None:
        """Drop what was typed ahead of a prompt: it may be the password."""
        self.user_input.drop_typed_ahead(when, again)

    def online_nicks(self) -> list[str]:
        """The other people online, as far as the user list and JOINED/LEFT say."""
        return self.roster.online_nicks(self.nick)
