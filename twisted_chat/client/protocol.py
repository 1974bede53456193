"""
The client's side of a chat/1 connection.

L{ChatClient} is the protocol on the network connection.  It also takes what
the user types (L{ChatClient.user_line}) and shows what happens through a
L{Display}: the terminal line editor or plain output on a pipe.  Input that
arrives before the server is ready for it (a script's lines, or a line typed
while connecting) waits in a queue and is sent in order once the server has
accepted the nickname, no faster than the server's flood control allows
(L{twisted_chat.client.pace}).  On a terminal, lines typed before a password
prompt, or before the nickname prompt comes back, are dropped instead: one of
them may be the password.  A line waits with whom it was typed for: text typed
for a partner is never sent to the lobby (nor lobby text to a partner) when
the pair ends, or begins, before its turn comes.  The queue, its pacing and
its counts are an L{Outbox} (L{twisted_chat.client.outbox}).

The rest has modules of its own (docs/client.md, "How it works"): the login
(L{twisted_chat.client.login}) and passwords (L{twisted_chat.client.passwords})
see the client through a small C{Client} interface each; the pair and who is
online are plain state (L{twisted_chat.client.pairing},
L{twisted_chat.client.roster}), and so is how the session is ending
(L{twisted_chat.client.session.Ending}).  L{twisted_chat.client.liveness}
notices a server that stopped answering what the user sends.

When the session ends, L{ChatClient.finished} fires with an L{Outcome}: the
exit code and, for a failure, one sentence for stderr.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_chat.client import render
from twisted_chat.client.commands import (
    KEYS_HELP,
    Local,
    Quit,
    Secret,
    Send,
    parse_input,
)
from twisted_chat.client.diagnose import describe_connect_error, describe_tls_error, looks_like_tls
from twisted_chat.client.display import Display
from twisted_chat.client.events import Malformed, ServerLine, parse
from twisted_chat.client.flow import Valve, taken
from twisted_chat.client.lines import SkipLongLines
from twisted_chat.client.liveness import Liveness
from twisted_chat.client.lobbyview import HeldNotices, Repeats, ShownLobby
from twisted_chat.client.login import Login
from twisted_chat.client.outbox import QUEUE_MAX, Outbox, Sent, Typed
from twisted_chat.client.pairing import Pairing
from twisted_chat.client.passwords import Passwords
from twisted_chat.client.render import Line, Renderer
from twisted_chat.client.roster import Roster
from twisted_chat.client.sanitize import decode
from twisted_chat.client.session import INTERRUPTED, Ending, Outcome, State
from twisted_chat.wire import PROTOCOL_VERSION, nick_key


def _lines(count: int) -> tuple[str, str]:
    """C{("1 line", "was")}, or C{("N lines", "were")}."""
    return ("1 line", "was") if count == 1 else (f"{count} lines", "were")


def set_aside(display: Display, notice: Callable[[str], None], meant: str, why: str) -> None:
    """
    The conversation changed under the line being typed (not by the user's
    own command): it is not left on the input line, where the next Enter
    would send it to the new conversation, but set aside, unsent, into the
    history Up recalls, and the user is told (the web page's rule: a draft
    belongs to the conversation it was typed in; docs/client.md).  C{meant}:
    whom it was typed for; C{why}: what changed.
    """
    lines = display.set_aside()
    if not lines:
        return
    if len(lines) == 1:
        said, it = "The line you were typing", "it"
    else:
        said, it = f"The {len(lines)} lines you were typing or pasting", "them"
    notice(f"{said} for {meant} {'was' if len(lines) == 1 else 'were'} not sent: {why}. "
           f"Up brings {it} back.")


def _is_text(line: str) -> bool:
    """Whether C{line} is a message to whoever one is talking to (not a command)."""
    action = parse_input(line)
    return isinstance(action, Send) and action.verb == "MSG"


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
    @param rejoin: this connection is a reconnection
        (L{twisted_chat.client.reconnect}): C{READY} says "Reconnected", and
        a C{RETRY taken} for the nick asked by itself is waited out.
    @param lobby_shown: the lobby messages shown so far, shared between the
        connections of a session (a new one by default): the history does not
        show them again.
    @param taken_tries: the C{RETRY taken} answers the earlier reconnections
        met since the last C{READY} (L{Login.TAKEN_TRIES} in all).
    @param kept_password: C{(nick, password)}, the password typed this
        session (on a terminal), which answers the server's C{PASS} for that
        nick once; L{kept_password} holds the one that got in, or was
        registered, for the next connection (memory only).
    """

    delimiter = b"\n"
    # Server lines may be longer than its --max-line (they add times and nicks).
    MAX_LENGTH = 1 << 20
    QUIT_TIMEOUT = 5.0
    GREETING_TIMEOUT = 15.0
    INTERRUPTED = INTERRUPTED  # (twisted_chat.client.session)
    # Lines that wait to be sent (twisted_chat.client.outbox).
    QUEUE_MAX = QUEUE_MAX
    # Ctrl-D with lines still waiting (a paste the pacer holds): they go out
    # for at most this many seconds, then the client leaves without the rest.
    DRAIN_TIMEOUT = 60.0
    # Once the client said goodbye, the server's last lines are read even
    # while stdout is full (its answer must be seen; it closes right after),
    # up to this many bytes: the server's own send queue (1 MiB by default)
    # and the kernel's buffers hold less.
    QUIT_READ_MAX = 16 * 1024 * 1024
    # The prompt once the session ended while a password prompt was open.
    SWALLOW_PROMPT = "(the session is over; Enter leaves) "

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
        rejoin: bool = False,
        kept_password: tuple[str, str] | None = None,
        lobby_shown: ShownLobby | None = None,
        taken_tries: int = 0,
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
        self.rejoin = rejoin
        self.kept_password = kept_password
        self.taken_tries = taken_tries
        # Whether this greeting ("Connected to ...", and a version warning) was
        # said already (reconnect.py: once in an outage, not at every attempt
        # that gets in to be refused).
        self.greeted_before: Callable[[str], bool] = lambda said: False
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
        self._eof = False
        self._drain_timer: IDelayedCall | None = None
        self._replay: str | None = None  # "login" or "away" while HISTORY lines come
        self._replay_heading = False  # the heading for the lines replayed is shown
        # The lobby messages shown (on this connection and, when reconnecting,
        # the earlier ones), and, while a READY block's history comes, those
        # of them it may repeat (twisted_chat.client.lobbyview).
        self.lobby_shown = lobby_shown if lobby_shown is not None else ShownLobby()
        self._repeats: Repeats | None = None
        # The lobby's joins and leaves while paired: shown among the lobby's
        # messages replayed when the pair ends (as the web page does).
        self.held = HeldNotices()
        # The partner (nick_key) the last line of a private conversation was
        # sent to: an ERROR no-such-nick naming them says the partner left.
        self._private_to: str | None = None
        # A failure, Ctrl-C, the goodbye: told as an Outcome at the end.
        self.ending = Ending()
        self._quit_timer: IDelayedCall | None = None
        self._greeting_timer: IDelayedCall | None = None
        self._read_after_bye = 0  # bytes read after BYE while stdout was full
        # The session's outcome, held while keys are swallowed until Enter:
        # it ended at an open password prompt (connectionLost).
        self._swallowed: Outcome | None = None
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
            go=self.pump,
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
    def input(self) -> IPushProducer | None:
        """A script's stdin, paused while QUEUE_MAX lines wait (None: a terminal)."""
        return self.outbox.input

    @input.setter
    def input(self, producer: IPushProducer | None) -> None:
        self.outbox.input = producer

    # -- showing -------------------------------------------------------------

    def _show(self, line: Line) -> None:
        if self.display is not None:
            self.display.show(line)

    def notice(self, text: str) -> None:
        self._show(render.notice(text))

    def error(self, text: str) -> None:
        self._show(render.error(text))

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
        self.pump()

    def _tls_hint(self) -> str:
        return "" if self.tls else " If it uses TLS, add --tls."

    def _no_greeting(self) -> None:
        self._greeting_timer = None
        self.ending.failure = (
            f"No greeting from {self.server} within {self.greeting_timeout:g} seconds: "
            f"is it a chat server?{self._tls_hint()}"
        )
        self.close_now()

    def _greeting_done(self) -> None:
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
            self._show(render.info(f"(server) {raw}"))  # shown as it is, cleaned
            return
        if event is None or self.state is State.CLOSED:
            return
        if not event.known:
            self._show(render.info(f"(server) {raw}"))
            return
        handler = getattr(self, f"_on_{event.verb}")
        try:
            handler(event)
        except Exception:
            # A line this client cannot cope with is a bug here or a hostile
            # server: show the line, keep the session, never a traceback.
            self._log.failure("could not handle a server line")
            self._show(render.info(f"(server) {raw}"))

    def lineLengthExceeded(self, line: bytes) -> None:
        # Keep the connection; the rest of the line is skipped too.
        self._log.warn("A server line of over {n} bytes was skipped.", n=self.MAX_LENGTH)

    def connectionLost(self, reason: Failure | None = None) -> None:
        previous = self.state
        self.state = State.CLOSED
        if len(self.held):
            # Held during a pair the connection's end ends: what happened before it.
            self.notice("Meanwhile, in the lobby:")
            self.held.release(self._show)
        # At an open password prompt the user may be typing blind: the
        # client waits for Enter (unseen) before it gives the terminal back.
        swallowing = self.interactive and self.passwords.asking
        if swallowing:
            self.passwords.swallow(self.SWALLOW_PROMPT)
        else:
            self.passwords.cancel()
        timers = (
            self._quit_timer,
            self._greeting_timer,
            self._drain_timer,
        )
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()
        self._quit_timer = self._greeting_timer = self._drain_timer = None
        self.login.stop()
        self.outbox.stop()
        self.liveness.stop()
        if not self.ending.said_bye:
            self._drop_queue()  # the session ended under lines waiting: counted
        tls = describe_tls_error(reason, self.server) if reason is not None else None
        outcome = self.ending.outcome(
            self.server,
            quitting=previous is State.QUITTING,
            joined=self.nick is not None,
            tls_error=tls,
            losses=self.outbox.losses(self.ending.bye_answered),
            tls_hint=self._tls_hint(),
            quit_timeout=self.QUIT_TIMEOUT,
        )
        if swallowing:
            self._swallowed = outcome
            self.error(
                "The session is over: nothing you type now is shown or sent. "
                "Press Enter to leave."
            )
            return
        self._finish(outcome)

    def connect_failed(self, reason: Failure) -> None:
        """The connection could not be made at all."""
        self.state = State.CLOSED
        tls = describe_tls_error(reason, self.server)
        if tls is not None:
            self._finish(Outcome(1, tls))
            return
        why = describe_connect_error(reason)
        self._finish(Outcome(1, f"Cannot connect to {self.server}: {why}."))

    def _finish(self, outcome: Outcome) -> None:
        self._swallowed = None
        if not self.finished.called:
            self.finished.callback(outcome)

    # -- what the user does ----------------------------------------------------

    def user_line(self, line: str) -> None:
        """A line the user typed (or a script wrote)."""
        to = self.pairing.partner if self.state is State.PAIRED else None
        if not self.outbox.add(line, to):
            if self.outbox.refused == 1:
                self.error(
                    f"{self.QUEUE_MAX} lines are waiting to be sent: what you type or paste "
                    "now is not sent until they have gone."
                )
            return
        self.pump()

    def paste_time(self, count: int) -> float:
        """About how many seconds C{count} more lines take to send (for a held paste)."""
        return float(math.ceil((self.outbox.waiting() + count) / self.outbox.rate))

    def _queue_room(self) -> None:
        """Once half the queue has gone, read a script's input again."""
        count = self.outbox.room()
        if count:
            lines = "1 line" if count == 1 else f"{count} lines"
            self.notice(f"{lines} typed or pasted while {self.QUEUE_MAX} waited were not sent.")

    def input_ended(self) -> None:
        """End of input: leave once everything before it has been sent."""
        self._eof = True
        self.pump()

    def end_of_typing(self) -> None:
        """
        Ctrl-D on an empty line: the end of input, as for a script.  Lines
        still waiting for the pacer (a paste) go out first, for at most
        L{DRAIN_TIMEOUT} seconds, then BYE.  With nothing waiting, or a second
        time, it is Ctrl-C.
        """
        waiting = self.outbox.waiting()
        if self._eof or not waiting or self.state not in (State.READY, State.PAIRED):
            self.interrupt()
            return
        lines = "the line" if waiting == 1 else f"the {waiting} lines"
        seconds = min(self.paste_time(0), self.DRAIN_TIMEOUT)
        self.notice(
            f"Sending {lines} still waiting (about {seconds:g} s), then leaving; "
            "Ctrl-C leaves now without them."
        )
        self._drain_timer = self.clock.callLater(self.DRAIN_TIMEOUT, self._drained)
        self.input_ended()

    def _drained(self) -> None:
        """Ctrl-D's time is up: leave without what still waits (it is counted)."""
        self._drain_timer = None
        self._drop_queue()
        self.quit()

    def interrupt(self) -> None:
        """
        Ctrl-C: leave now; a second time, drop the connection.  Before the
        chat was joined, or in a script, or when typed lines still waited
        (they are dropped, and counted), the exit code says it was interrupted.
        """
        if self._swallowed is not None:
            self._finish(self._swallowed)  # the session is over already
            return
        if self._drop_queue() or self.nick is None or not self.interactive:
            self.ending.interrupted = True
        if self.state is State.QUITTING and self.transport is not None:
            self.ending.cut_short = True
            self.close_now()
        else:
            self.quit()

    def _drop_queue(self) -> int:
        """
        Drop the lines still waiting to be sent; once online they are counted
        and said at the end (none is lost silently).  How many.
        """
        return self.outbox.drop(counted=self.nick is not None)

    def quit(self, text: str = "") -> None:
        """
        Say BYE and wait (a bounded time) for the server's answer.  Lines
        after a C{/quit} are not sent: it is the end the user asked for.
        """
        self.outbox.discard()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        if self.state is State.CONNECTING:
            self.state = State.CLOSED
            if self.ending.interrupted:
                self._finish(Outcome(self.INTERRUPTED, "Interrupted while connecting."))
            else:
                self._finish(Outcome(0))
            if self.cancel_connect is not None:
                self.cancel_connect()
            return
        if self.state in (State.QUITTING, State.CLOSED):
            return
        self.send(Send("BYE", text=text))
        self.ending.said_bye = True
        # The server's answer, and the lines before it, are read even while
        # stdout is full (a pager, a slow pipe): else the goodbye would seem
        # unanswered.  Bounded: the server closes after its answer.
        self.reading.ignore("display")
        self.outbox.cancel_stall()  # the goodbye's own time bounds it now
        self.liveness.stop()  # and the server's answer to it
        self.set_state(State.QUITTING)
        self._quit_timer = self.clock.callLater(self.QUIT_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        self._quit_timer = None
        self.ending.gave_up = True
        self.close_now()

    def pump(self) -> None:
        while self.state in (State.ASK_NICK, State.READY, State.PAIRED):
            # At the nickname prompt lines go at once; then no faster than
            # the pacer lets them, and not while the socket is full.
            line = self.outbox.next_line(paced=self.state is not State.ASK_NICK)
            if line is None:
                break  # the rest goes when the outbox lets it
            if self.state is State.ASK_NICK:
                self.login.typed(line)
            else:
                self._command_input(line)
        self._queue_room()
        if not self._eof or self.outbox:
            return
        if self.state in (State.READY, State.PAIRED):
            self.quit()
        elif self.state is State.ASK_NICK:
            self.ending.failure = "The input ended before a nickname was accepted."
            self.quit()

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

    def show_local(self, action: Local) -> None:
        if action.is_error:
            self.error(action.text)
            return
        for text in action.text.splitlines():
            self._show(render.columns(text))

    def _command_input(self, line: str) -> None:
        action = parse_input(line, inviters=self.pairing.invites)
        if isinstance(action, Send):
            partner = self.pairing.partner
            if action.verb == "MSG" and self.state is State.PAIRED and partner:
                # The private conversation's line goes as DM PARTNER, not MSG:
                # the server routes a MSG by the pair it knows when it reads
                # it, and a MSG that crosses the partner's UNPAIR (or their
                # leaving) would go to the whole lobby and into its history.
                # A DM reaches the (ex-)partner only, or nobody (ERROR
                # no-such-nick); its copy back is the same MSG.
                action = Send("DM", (partner,), action.text)
                self._private_to = nick_key(partner)
            elif action.words:
                # A /dm, /pair, /accept or /reject of the user's own names a
                # nick: its refusal is said as it is, not as the partner leaving.
                self._private_to = None
            self.pairing.sending(action.verb, paired=self.state is State.PAIRED)
            self.send(action)
        elif isinstance(action, Local):
            self.show_local(action)
            if self.interactive and action.text.startswith("Commands:"):
                self.show_local(Local(KEYS_HELP))
        elif isinstance(action, Secret):
            self.passwords.command(action)
        elif isinstance(action, Quit):
            self.quit(action.text)

    def secret_line(self, text: str) -> None:
        """A line typed at a password prompt (never shown, never in the history)."""
        if self._swallowed is not None:
            self._finish(self._swallowed)  # the Enter that ends what was typed blind
            return
        pending = self.passwords.take()
        if pending is None:
            return
        verb, first = pending
        if verb == "PASS":
            self.login.password_typed(text)
        else:
            self.passwords.typed(verb, first, text)

    def drop_typed_ahead(self, when: str, again: str | None = None) -> None:
        """
        Lines typed before a password prompt (or a nickname prompt asked
        again, or while a password was checked) are not sent, nor is the line
        half-typed then: one of them may be the password, typed ahead by
        someone who knows it is asked for.  C{when} says when they were typed.
        """
        if not self.interactive:
            return
        dropped = self.outbox.take_all()
        half = False
        if self.display is not None:
            half = self.display.drop_typing()
            if dropped:
                self.display.forget(dropped)
        if not dropped and not half:
            return
        said = []
        if dropped:
            lines, verb = _lines(len(dropped))
            said.append(f"{lines} typed {when} {verb} not sent")
        if half:
            typing = "the line you were typing" if dropped else "The line you were typing"
            said.append(f"{typing}{'' if dropped else ' ' + when} was cleared")
        if again is None:
            again = "once you are in" if self.nick is None else "afterwards"
        self.notice(f"{' and '.join(said)} (it could be the password); type it again {again}.")

    def _drop_meant_elsewhere(self, why: str, meant: str) -> None:
        """
        The conversation changed (a pair ended, or began not by our
        C{/accept}) while lines typed for another one wait: their text is not
        sent where it was not meant to go, and the user is told.  Commands
        still go, and so does what follows a waiting C{/pair}, C{/accept} or
        C{/unpair} (that command decides where it goes).  The line being
        typed then, meant for C{meant} (a partner, or "the lobby"), is set
        aside: Enter does not send it to the new conversation (L{set_aside}).
        """
        partner = self.pairing.partner
        to = nick_key(partner) if self.state is State.PAIRED and partner else None

        def elsewhere(typed: Typed) -> bool:
            meant = nick_key(typed.to) if typed.to is not None else None
            return meant != to and not typed.after_pairing and _is_text(typed.line)

        dropped = self.outbox.drop_where(elsewhere)
        if dropped:
            self._queue_room()  # a script's input may read again
            lines, verb = _lines(len(dropped))
            whom = dropped[0].to or "the lobby"
            self.notice(f"{lines} typed for {whom} {verb} not sent: {why}.")
        if self.display is not None:
            set_aside(self.display, self.notice, meant, why)

    def online_nicks(self) -> list[str]:
        """The other people online, as far as the user list and JOINED/LEFT say."""
        return self.roster.online_nicks(self.nick)

    def _ring(self) -> None:
        if self.interactive and self.display is not None:
            self.display.bell()

    # -- what the server says --------------------------------------------------

    def _on_HELLO(self, event: ServerLine) -> None:
        version = event.word(0)
        warning = ""
        if version != PROTOCOL_VERSION:
            warning = (f"The server speaks {version}, this client {PROTOCOL_VERSION}; "
                       "some things may not work.")
        about = f", running {event.text}" if event.text else ""
        said = f"Connected to {self.server}{about}."
        if self.greeted_before(f"{warning}\n{said}"):  # the whole greeting, once
            return
        if warning:
            self.error(warning)
        self.notice(said)

    def _on_NICK(self, event: ServerLine) -> None:
        self._greeting_done()
        self.login.nick_asked()

    def _on_RETRY(self, event: ServerLine) -> None:
        self.login.retry(event.word(0), event.text)

    def _on_PASS(self, event: ServerLine) -> None:
        self.login.password_asked(event.word(0))

    def _on_REGISTERED(self, event: ServerLine) -> None:
        self.passwords.registered(event.word(0))

    def _on_READY(self, event: ServerLine) -> None:
        self._greeting_done()
        self.nick = event.word(0)
        self.set_state(State.READY)
        if self.rejoin:
            self.notice(f"Reconnected: you are back in the lobby as {self.nick}.")
        else:
            self.notice(
                f"Welcome, {self.nick}! You are in the lobby. "
                "Type a message and press Enter; /help lists the commands."
            )
        kept = self.kept_password
        if kept is not None and nick_key(kept[0]) != nick_key(self.nick):
            self.kept_password = None  # it belongs to a nick this session left
        password = self.login.password_sent
        if self.login.joined():
            if self.interactive and password is not None:
                self.kept_password = (self.nick, password)
            # What was typed while the password was checked may be it again,
            # unless no prompt asked for it: the kept one answered the
            # server's PASS, and the line being typed is a draft from before.
            if not self.login.password_kept:
                self.drop_typed_ahead("while the password was checked", "now")
        self._replay, self._replay_heading = "login", False
        self._repeats = self.lobby_shown.repeats()
        self.pump()

    def _heading(self) -> None:
        """The replay's heading, before its first line."""
        if self._replay is not None and not self._replay_heading:
            self._replay_heading = True
            if self._replay == "away":
                self.notice("While you were away, the lobby said:")
            else:
                self.notice("Recent messages in the lobby:")

    def _on_HISTORY(self, event: ServerLine) -> None:
        ts, sender = event.words
        if self._replay == "login" and not self.show_history:
            return
        # Only a READY block's history can repeat a line already shown (a
        # reconnection's); the replay after UNPAIRED is what was missed.
        if self._repeats is not None and self._repeats.repeats(ts, sender, event.text):
            return
        self.lobby_shown.shown(ts, sender, event.text)
        self._heading()
        if self._replay == "away":
            self.held.release(self._show, until=ts)
        self._show(self.renderer.message(ts, sender, "*", event.text))

    def _end_replay(self) -> None:
        if self._replay == "away" and len(self.held):
            self._heading()
            self.held.release(self._show)
        self._replay, self._replay_heading = None, False
        self._repeats = None

    def _on_MSG(self, event: ServerLine) -> None:
        ts, sender, to = event.words
        if to == "*":
            self.lobby_shown.shown(ts, sender, event.text)
        self._show(self.renderer.message(ts, sender, to, event.text))
        if self.nick is None:
            return
        if nick_key(sender) == nick_key(self.nick):
            self.outbox.echoed(None if to == "*" else nick_key(to), event.text)  # it took it
            return
        if to != "*" or render.mentions(event.text, self.nick):
            self._ring()  # a private message, or a lobby line that names you

    def _lobby_notice(self, ts: str, nick: str, line: Line) -> None:
        """A join or leave: shown now, or held while paired (the lobby's
        messages of that time come when the pair ends, and it goes among them).
        The partner's own leaving belongs to the conversation: shown now (the
        web page shows it in the conversation too)."""
        partner = self.pairing.partner
        if partner is None or nick_key(nick) == nick_key(partner):
            self._show(line)
        else:
            self.held.hold(ts, line)

    def _on_JOINED(self, event: ServerLine) -> None:
        ts, nick = event.words
        self.roster.joined(nick)
        self._lobby_notice(ts, nick, self.renderer.joined(ts, nick))

    def _on_LEFT(self, event: ServerLine) -> None:
        ts, nick, reason = event.words
        self.roster.left(nick)
        self._lobby_notice(ts, nick, self.renderer.left(ts, nick, reason, event.text))

    def _on_USER(self, event: ServerLine) -> None:
        self._end_replay()
        self.roster.user(event.word(0), event.word(1), event.word(2))

    def _on_USERS(self, event: ServerLine) -> None:
        self._end_replay()
        rows, left_out = self.roster.users()
        for line in self.renderer.users(rows, left_out):
            self._show(line)

    def _on_PENDING(self, event: ServerLine) -> None:
        invitee = event.word(0)
        self.pairing.pending(invitee)
        self.notice(
            f"Invitation sent to {invitee}; waiting for an answer (/unpair withdraws it)."
        )

    def _on_INVITE(self, event: ServerLine) -> None:
        inviter = event.word(0)
        self.pairing.invite(inviter)
        self.notice(
            f"{inviter} invites you to a private conversation. "
            f"Type /accept {inviter} to accept or /reject {inviter} to decline."
        )
        self._ring()

    def _on_PAIRED(self, event: ServerLine) -> None:
        partner = event.word(0)
        ours = self.pairing.paired(partner)
        self.set_state(State.PAIRED)
        self.notice(
            f"You are now in a private conversation with {partner}. "
            f"What you type goes to {partner} only; /unpair leaves."
        )
        if not ours:
            # Our invitation was accepted while lines typed for the lobby wait.
            self._drop_meant_elsewhere(
                f"you are now talking with {partner} only", "the lobby"
            )

    def _on_UNPAIRED(self, event: ServerLine) -> None:
        nick, reason = event.words
        partner = self.pairing.partner or nick
        by_me = self.pairing.unpaired()
        if self.state is State.PAIRED:
            self.set_state(State.READY)
        self.notice(render.unpaired(nick, reason, by_me=by_me))
        if not by_me:
            # (After our /unpair, all that waits was typed after it: it went
            # first.  It goes to the lobby, as it would have without a wait.)
            self._drop_meant_elsewhere("the private conversation ended", partner)
        # What the lobby said meanwhile comes next, before the user list.
        self._replay, self._replay_heading = "away", False

    def _on_DECLINED(self, event: ServerLine) -> None:
        nick, reason = event.words
        self.pairing.declined(nick, reason)
        self.notice(render.declined(nick, reason))

    def _on_CANCELLED(self, event: ServerLine) -> None:
        nick, reason = event.words
        self.pairing.cancelled(nick)
        self.notice(render.cancelled(nick, reason))

    def _at_password(self) -> bool:
        """At the password prompt, or about to be asked again (a C{PASS}
        sent and not yet answered)."""
        return self.state is State.ASK_PASSWORD or (
            self.state is State.NICK_SENT and self.login.pass_sent)

    def _on_BYE(self, event: ServerLine) -> None:
        reason = event.word(0)
        at_login = self.state is State.NICK_SENT and self.login.pass_sent
        logging_in = None
        if self._at_password():
            logging_in = "password"
        elif self.state in (State.GREETING, State.ASK_NICK, State.NICK_SENT):
            logging_in = "nickname"
        said = render.bye(reason, event.text, after_password=at_login, logging_in=logging_in)
        self.ending.bye_received = True
        self.ending.bye_reason = reason
        self._greeting_done()
        if reason == "quit" and self.state is State.QUITTING:
            self.ending.bye_answered = True  # after every line we sent before it
            self.notice(said)
        elif self.ending.failure is None:
            self.ending.failure = said
        self.set_state(State.QUITTING)
        if self.transport is not None:
            self.transport.loseConnection()

    def _on_PING(self, event: ServerLine) -> None:
        self.send(Send("PONG", text=event.text))

    def _on_PONG(self, event: ServerLine) -> None:
        pass

    def _on_HELP(self, event: ServerLine) -> None:
        if event.text:
            self._show(render.info(event.text))

    def _on_ERROR(self, event: ServerLine) -> None:
        code = event.word(0)
        said = self.passwords.refused(code, event.text)
        if said is None and code == "not-ready":
            # At the password prompt, or about to be asked again (a PASS refused).
            said = render.not_ready(event.text, prompt=self.interactive and self._at_password())
        elif said is None:
            said = render.error_sentence(code, event.text)
        late = render.behind(code, event.text)
        unsent = render.message_refused(code, event.text)
        if late is not None:
            said = render.not_keeping_up(late)  # a message's refusal, not an invitation's
        elif unsent is not None:
            said = unsent  # likewise
        else:
            self.pairing.refused(code)
        gone = event.text.split(" ", 1)[0] if code == "no-such-nick" else ""
        if gone and nick_key(gone) == self._private_to and self.state is not State.NICK_SENT:
            # A line of the private conversation met its partner gone.
            said = (
                f"Not sent: {gone} has left the chat, and your private "
                "conversation with them is over."
            )
        if code == "server-full" and self.state not in (State.READY, State.PAIRED):
            self.ending.failure = said  # said once, on the way out (BYE full follows)
            return
        if self.state is State.NICK_SENT:
            self.login.refused(code, event.text, said)
            return
        self.error(said)
        self._refused_message(code, gone or late or "", event.text)
        rate = self.outbox.flood(event.text) if code == "flood" else None
        if rate is not None:
            lines = "line" if rate == 1 else "lines"
            self.notice(f"Sending at most {rate:g} {lines} per second from now on.")

    def _refused_message(self, code: str, named: str, text: str) -> None:
        """
        An C{ERROR} that may refuse one of our messages: it is answered (said
        now), not in doubt at the end (L{Outbox.losses}).  The server reads a
        connection's lines in order: it refused the oldest message not yet
        answered that it can be about (a C{DM} to the nick it names,
        C{named}; for a C{busy} about a reader far behind, else a C{MSG} the
        server sent to them as the partner; a C{MSG} for a "not sent"
        whose pair changed before it was delivered; one longer than the limit it
        names; one with other than printable ASCII for its characters), as
        the web page counts them.
        """
        if code == "no-such-nick" and named:
            self.outbox.refused_to(nick_key(named))
        elif code == "busy" and named:
            self.outbox.refused_behind(nick_key(named))
        elif render.message_refused(code, text) is not None:
            self.outbox.refused_msg()
        elif code == "self" and self.nick is not None:
            self.outbox.refused_to(nick_key(self.nick))
        elif code == "too-long":
            most = re.search(r"at most (\d+) bytes", text)
            self.outbox.refused_longer(int(most.group(1)) if most else 0)
        elif code in ("bad-chars", "bad-encoding"):
            self.outbox.refused_chars()
