"""
The user's side of a connection: what is typed (or a script writes), the
queue it waits in, and leaving.

Input that arrives before the server is ready for it (a script's lines, or
a line typed while connecting) waits in the L{Outbox} and is sent in order
once the server has accepted the nickname, no faster than the server's flood
control allows (L{twisted_chat.client.pace}).  On a terminal, lines typed
before a password prompt, or before the nickname prompt comes back, are
dropped instead: one of them may be the password.  A line waits with whom it
was typed for: text typed for a partner is never sent to the lobby (nor lobby
text to a partner) when the pair ends, or begins, before its turn comes.
Leaving is C{BYE} and a bounded wait for its answer (L{UserInput.quit}), or
Ctrl-C, or Ctrl-D once what waits has gone.  L{UserInput} sees its
connection through a small L{Client} interface.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport

from twisted_chat.client import render
from twisted_chat.client.commands import KEYS_HELP, Local, Quit, Secret, Send, parse_input
from twisted_chat.client.display import Display
from twisted_chat.client.flow import Valve
from twisted_chat.client.liveness import Liveness
from twisted_chat.client.login import Login
from twisted_chat.client.outbox import Outbox, Typed
from twisted_chat.client.pairing import Pairing
from twisted_chat.client.passwords import Passwords
from twisted_chat.client.session import INTERRUPTED, Ending, Outcome, State
from twisted_chat.wire import nick_key


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


class Client(Protocol):
    """What L{UserInput} needs from its connection (L{ChatClient})."""

    state: State
    # The partner (nick_key) the last line of a private conversation was sent to.
    private_to: str | None

    @property
    def nick(self) -> str | None: ...

    @property
    def interactive(self) -> bool: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def display(self) -> Display | None: ...

    @property
    def transport(self) -> ITransport | None: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def pairing(self) -> Pairing: ...

    @property
    def passwords(self) -> Passwords: ...

    @property
    def login(self) -> Login: ...

    @property
    def ending(self) -> Ending: ...

    @property
    def reading(self) -> Valve: ...

    @property
    def liveness(self) -> Liveness: ...

    @property
    def cancel_connect(self) -> Callable[[], object] | None:
        """Gives up connecting (C{None}: connected, or not connecting)."""

    def set_state(self, state: State) -> None: ...

    def send(self, request: Send) -> None: ...

    def show(self, line: render.Line) -> None: ...

    def notice(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...

    def close_now(self) -> None:
        """Drop the connection without waiting for the peer."""

    def finish(self, outcome: Outcome) -> None:
        """The session is over: tell its outcome."""


class UserInput:
    """
    What the user types, and leaving, for one connection.

    @ivar swallowed: the session's outcome, held while keys are swallowed
        until Enter: it ended at an open password prompt (set by the
        connection's end).
    """

    QUIT_TIMEOUT = 5.0
    # Ctrl-D with lines still waiting (a paste the pacer holds): they go out
    # for at most this many seconds, then the client leaves without the rest.
    DRAIN_TIMEOUT = 60.0

    def __init__(self, client: Client) -> None:
        self._client = client
        self._eof = False
        self._drain_timer: IDelayedCall | None = None
        self._quit_timer: IDelayedCall | None = None
        self.swallowed: Outcome | None = None

    def _finish(self, outcome: Outcome) -> None:
        self.swallowed = None
        self._client.finish(outcome)

    def stop(self) -> None:
        """The connection is gone: no more timers."""
        for timer in (self._quit_timer, self._drain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._quit_timer = self._drain_timer = None

    # -- lines in ------------------------------------------------------------

    def user_line(self, line: str) -> None:
        """A line the user typed (or a script wrote)."""
        client = self._client
        outbox = client.outbox
        to = client.pairing.partner if client.state is State.PAIRED else None
        if not outbox.add(line, to):
            if outbox.refused == 1:
                client.error(
                    f"{outbox.limit} lines are waiting to be sent: what you type or paste "
                    "now is not sent until they have gone."
                )
            return
        self.pump()

    def paste_time(self, count: int) -> float:
        """About how many seconds C{count} more lines take to send (for a held paste)."""
        outbox = self._client.outbox
        return float(math.ceil((outbox.waiting() + count) / outbox.rate))

    def queue_room(self) -> None:
        """Once half the queue has gone, read a script's input again."""
        outbox = self._client.outbox
        count = outbox.room()
        if count:
            lines, verb = _lines(count)
            self._client.notice(
                f"{lines} typed or pasted while {outbox.limit} waited {verb} not sent."
            )

    def secret_line(self, text: str) -> None:
        """A line typed at a password prompt (never shown, never in the history)."""
        if self.swallowed is not None:
            self._finish(self.swallowed)  # the Enter that ends what was typed blind
            return
        passwords = self._client.passwords
        pending = passwords.take()
        if pending is None:
            return
        verb, first = pending
        if verb == "PASS":
            self._client.login.password_typed(text)
        else:
            passwords.typed(verb, first, text)

    # -- lines out -----------------------------------------------------------

    def pump(self) -> None:
        """Send the typed lines that may go now; leave once input ended and all went."""
        client = self._client
        while client.state in (State.ASK_NICK, State.READY, State.PAIRED):
            # At the nickname prompt lines go at once; then no faster than
            # the pacer lets them, and not while the socket is full.
            line = client.outbox.next_line(paced=client.state is not State.ASK_NICK)
            if line is None:
                break  # the rest goes when the outbox lets it
            if client.state is State.ASK_NICK:
                client.login.typed(line)
            else:
                self._command_input(line)
        self.queue_room()
        if not self._eof or client.outbox:
            return
        if client.state in (State.READY, State.PAIRED):
            self.quit()
        elif client.state is State.ASK_NICK:
            client.ending.failure = "The input ended before a nickname was accepted."
            self.quit()

    def show_local(self, action: Local) -> None:
        """Show what a local command (C{/help}) says."""
        for line in render.local(action):
            self._client.show(line)

    def _command_input(self, line: str) -> None:
        client = self._client
        action = parse_input(line, inviters=client.pairing.invites)
        if isinstance(action, Send):
            partner = client.pairing.partner
            if action.verb == "MSG" and client.state is State.PAIRED and partner:
                # The private conversation's line goes as DM PARTNER, not MSG:
                # the server routes a MSG by the pair it knows when it reads
                # it, and a MSG that crosses the partner's UNPAIR (or their
                # leaving) would go to the whole lobby and into its history.
                # A DM reaches the (ex-)partner only, or nobody (ERROR
                # no-such-nick); its copy back is the same MSG.
                action = Send("DM", (partner,), action.text)
                client.private_to = nick_key(partner)
            elif action.words:
                # A /dm, /pair, /accept or /reject of the user's own names a
                # nick: its refusal is said as it is, not as the partner leaving.
                client.private_to = None
            client.pairing.sending(action.verb, paired=client.state is State.PAIRED,
                                   command=" ".join([f"/{action.verb.lower()}", *action.words]),
                                   messages=client.outbox.messages_sent)
            client.send(action)
        elif isinstance(action, Local):
            self.show_local(action)
            if client.interactive and action.text.startswith("Commands:"):
                self.show_local(Local(KEYS_HELP))
        elif isinstance(action, Secret):
            client.passwords.command(action)
        elif isinstance(action, Quit):
            self.quit(action.text)

    # -- lines not sent ------------------------------------------------------

    def drop_queue(self) -> int:
        """
        Drop the lines still waiting to be sent; once online, or typed ahead
        while a terminal waited to send its nick again (and no connection
        follows to send them: C{--no-reconnect}, Ctrl-C), they are counted
        and said at the end (none is lost silently).  How many.
        """
        client = self._client
        waited = client.interactive and client.login.nick_waited is not None
        return client.outbox.drop(counted=client.nick is not None or waited)

    def drop_typed_ahead(self, when: str, again: str | None = None) -> None:
        """
        Lines typed before a password prompt (or a nickname prompt asked
        again, or while a password was checked) are not sent, nor is the line
        half-typed then: one of them may be the password, typed ahead by
        someone who knows it is asked for.  C{when} says when they were typed.
        """
        client = self._client
        if not client.interactive:
            return
        dropped = client.outbox.take_all()
        half = False
        if client.display is not None:
            half = client.display.drop_typing()
            if dropped:
                client.display.forget(dropped)
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
            again = "once you are in" if client.nick is None else "afterwards"
        client.notice(f"{' and '.join(said)} (it could be the password); type it again {again}.")

    def drop_meant_elsewhere(self, why: str, meant: str) -> None:
        """
        The conversation changed (a pair ended, or began not by our
        C{/accept}) while lines typed for another one wait: their text is not
        sent where it was not meant to go, and the user is told.  Commands
        still go, and so does what follows a waiting C{/pair}, C{/accept} or
        C{/unpair} (that command decides where it goes).  The line being
        typed then, meant for C{meant} (a partner, or "the lobby"), is set
        aside: Enter does not send it to the new conversation (L{set_aside}).
        """
        client = self._client
        partner = client.pairing.partner
        to = nick_key(partner) if client.state is State.PAIRED and partner else None

        def elsewhere(typed: Typed) -> bool:
            meant = nick_key(typed.to) if typed.to is not None else None
            return meant != to and not typed.after_pairing and _is_text(typed.line)

        dropped = client.outbox.drop_where(elsewhere)
        if dropped:
            self.queue_room()  # a script's input may read again
            lines, verb = _lines(len(dropped))
            whom = dropped[0].to or "the lobby"
            client.notice(f"{lines} typed for {whom} {verb} not sent: {why}.")
        if client.display is not None:
            set_aside(client.display, client.notice, meant, why)

    # -- leaving -------------------------------------------------------------

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
        client = self._client
        waiting = client.outbox.waiting()
        if self._eof or not waiting or client.state not in (State.READY, State.PAIRED):
            self.interrupt()
            return
        lines = "the line" if waiting == 1 else f"the {waiting} lines"
        seconds = min(self.paste_time(0), self.DRAIN_TIMEOUT)
        client.notice(
            f"Sending {lines} still waiting (about {seconds:g} s), then leaving; "
            "Ctrl-C leaves now without them."
        )
        self._drain_timer = client.clock.callLater(self.DRAIN_TIMEOUT, self._drained)
        self.input_ended()

    def _drained(self) -> None:
        """Ctrl-D's time is up: leave without what still waits (it is counted)."""
        self._drain_timer = None
        self.drop_queue()
        self.quit()

    def interrupt(self) -> None:
        """
        Ctrl-C: leave now; a second time, drop the connection.  Before the
        chat was joined, or in a script, or when typed lines still waited
        (they are dropped, and counted), the exit code says it was interrupted.
        """
        client = self._client
        if self.swallowed is not None:
            self._finish(self.swallowed)  # the session is over already
            return
        if self.drop_queue() or client.nick is None or not client.interactive:
            client.ending.interrupted = True
        if client.state is State.QUITTING and client.transport is not None:
            client.ending.cut_short = True
            client.close_now()
        else:
            self.quit()

    def quit(self, text: str = "") -> None:
        """
        Say BYE and wait (a bounded time) for the server's answer.  Lines
        after a C{/quit} are not sent: it is the end the user asked for.
        """
        client = self._client
        client.outbox.discard()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        if client.state is State.CONNECTING:
            client.state = State.CLOSED
            if client.ending.interrupted:
                self._finish(Outcome(INTERRUPTED, "Interrupted while connecting."))
            else:
                self._finish(Outcome(0))
            if client.cancel_connect is not None:
                client.cancel_connect()
            return
        if client.state in (State.QUITTING, State.CLOSED):
            return
        client.send(Send("BYE", text=text))
        client.ending.said_bye = True
        # The server's answer, and the lines before it, are read even while
        # stdout is full (a pager, a slow pipe): else the goodbye would seem
        # unanswered.  Bounded: the server closes after its answer.
        client.reading.ignore("display")
        client.outbox.cancel_stall()  # the goodbye's own time bounds it now
        client.liveness.stop()  # and the server's answer to it
        client.set_state(State.QUITTING)
        self._quit_timer = client.clock.callLater(self.QUIT_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        self._quit_timer = None
        self._client.ending.gave_up = True
        self._client.close_now()
