"""
What the client has to send: typed-ahead lines waiting for their turn, how
fast they go, what holds them, and what never arrived.

The design is in docs/client.md ("Scripts and pipes", "Exit status and
errors"); L{Outbox} is the queue behind L{ChatClient.user_line}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime

from twisted_chat.client.commands import changes_pairing, sendable
from twisted_chat.client.pace import Pacer
from twisted_chat.wire import PASSWORD_WORK_REFUSED, list_cost_verb

# Lines that wait to be sent (a script's input, a paste): at this many, a
# script's stdin is no longer read until half of them have gone; on a
# terminal the lines typed or pasted meanwhile are not sent.
QUEUE_MAX = 1000


# Messages sent and not yet answered that are remembered by their text (to
# name them if the connection is lost): at most this many, the latest.
UNCONFIRMED_MAX = 1000
# How many of them the sentence names (the latest), and each at most this long.
NAMED_MAX = 5
NAMED_CHARS = 60


@dataclass(frozen=True, slots=True)
class Sent:
    """
    A message written to the server and not yet answered: C{to} is the
    nick_key of a C{DM}'s recipient (C{None}: a C{MSG}, which the server
    routes), C{size} the line's bytes without its end, C{number} its place
    among the messages sent (1 for the first; L{Outbox.sent} sets it).
    """

    to: str | None
    text: str
    size: int
    number: int = 0


def _named(text: str) -> str:
    cut = text if len(text) <= NAMED_CHARS else text[: NAMED_CHARS - 1] + "\u2026"
    return f"\u201c{cut}\u201d"


def not_sent(count: int) -> str:
    """The sentence for C{count} lines that waited and were dropped unsent."""
    if count == 1:
        return "1 line still waiting to be sent was not sent."
    return f"{count} lines still waiting to be sent were not sent."


def _plain(text: str) -> bool:
    """Whether C{text} is only printable ASCII and TABs: no server refuses those."""
    return text.isascii() and text.replace("\t", "").isprintable()


@dataclass(frozen=True, slots=True)
class Typed:
    """
    A line the user typed, waiting for its turn, and whom it was typed for:
    C{to} is the partner on screen then (C{None}: the lobby).  A line that
    follows a waiting C{/pair}, C{/accept} or C{/unpair} (C{after_pairing})
    goes wherever that command leads.
    """

    line: str
    to: str | None
    after_pairing: bool


@dataclass(frozen=True, slots=True)
class HandedOver:
    """
    The lines typed ahead that a connection which never got in leaves to
    the next one (twisted_chat.client.reconnect): those still waiting, in
    order, and how many were refused meanwhile for the bound.
    """

    lines: tuple[Typed, ...] = ()
    refused: int = 0


class Outbox:
    """
    The lines waiting to be sent, in order, and the counts of what was sent.

    A line leaves with L{next_line} when the pacer (the server's flood
    control) and the socket's buffer let it.  When they did not, and then
    do, C{go} is called: the client takes the next lines again.  While the
    socket's buffer is full (C{socket_full}) the lines wait, as long as the
    server takes some of what the client sent (C{taken} grows) at least every
    C{stall_timeout} seconds: a server that reads slowly but steadily may
    never let the buffer drain.  After C{stall_timeout} seconds in which it
    took nothing, C{stalled} is called.

    @param clock: schedules the pacer's and the stall's timers.
    @param go: the pacer or the socket lets lines go again.
    @param stalled: the server took nothing for C{stall_timeout} seconds
        while lines waited on a full socket.
    @param socket_full: whether the socket's buffer is full.
    @param taken: a count that grows whenever the server takes some of what
        the client sent (L{twisted_chat.client.flow.taken}; C{None}: it
        cannot tell, and the time is counted from when the lines started to
        wait).
    @param stall_timeout: seconds (C{None}: lines wait for ever).
    @param limit: at most this many lines wait (L{QUEUE_MAX}).

    @ivar input: a script's stdin, paused while C{limit} lines wait
        (C{None}: a terminal, where lines over the limit are refused).
    """

    # While lines wait on a full socket, how often what the server took is looked at.
    STALL_STEP = 1.0

    def __init__(
        self,
        clock: IReactorTime,
        *,
        go: Callable[[], None],
        stalled: Callable[[], None],
        socket_full: Callable[[], bool],
        taken: Callable[[], int | None],
        stall_timeout: float | None,
        limit: int = QUEUE_MAX,
    ) -> None:
        self._clock = clock
        self._go = go
        self._on_stalled = stalled
        self._socket_full = socket_full
        self._taken = taken
        self.stall_timeout = stall_timeout
        self.limit = limit
        self.input: IPushProducer | None = None
        self._queue: deque[Typed] = deque()
        self._input_paused = False
        self._resume_call: IDelayedCall | None = None  # stdin read again, later
        self._refused = 0  # lines not queued on a terminal: too many waited
        self._unsent = 0  # lines that waited and were dropped once online
        # Lines go no faster than the server's flood control lets them.
        self._pacer = Pacer(clock.seconds)
        self._pace_timer: IDelayedCall | None = None
        # Lines wait while the socket's buffer is full: the server must take
        # some of it at least every stall_timeout seconds, or the client
        # gives up.  What it took is looked at every STALL_STEP seconds.
        self._stall_timer: IDelayedCall | None = None
        self._stall_since = 0.0  # when the server was last seen taking some
        self._stall_taken: int | None = None  # what it had taken at the last look
        # MSG and DM lines sent, the server's copies of them back (the
        # sender gets one for each message it accepts), and those it refused
        # with an ERROR (answered, and said then): the rest was dropped
        # (flood control) or is in doubt, and is said at the end, named.
        self._messages_sent = 0
        self._messages_echoed = 0
        self._messages_refused = 0
        self._unconfirmed: deque[Sent] = deque(maxlen=UNCONFIRMED_MAX)
        self._flood_dropped = False  # ERROR flood answered a line once online

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Typed]:
        return iter(self._queue)

    # -- lines in --------------------------------------------------------------

    def add(self, line: str, to: str | None) -> bool:
        """
        Queue a line typed for C{to} (C{None}: the lobby).  On a terminal,
        while C{limit} lines wait, it is refused (counted, and said by the
        client).  Whether it was queued.
        """
        if len(self._queue) >= self.limit and self.input is None:
            self._refused += 1
            return False
        last = self._queue[-1] if self._queue else None
        after_pairing = last is not None and (last.after_pairing or changes_pairing(last.line))
        self._queue.append(Typed(line, to, after_pairing))
        full = len(self._queue) >= self.limit
        if full and self.input is not None and not self._input_paused:
            self._input_paused = True
            self.input.pauseProducing()
        return True

    @property
    def refused(self) -> int:
        """Lines refused since the queue was last empty (terminals only)."""
        return self._refused

    def room(self) -> int:
        """
        Once half the queue has gone, read a script's input again.  Once it
        is empty, the lines refused meanwhile are said: how many (0: nothing
        to say).
        """
        if len(self._queue) > self.limit // 2:
            return 0
        if self._input_paused:
            self._input_paused = False
            # Later, not from inside the client's loop: resuming hands over
            # the lines already read, which come back to add.  (Cancelled by
            # stop: a connection lost meanwhile reads no more of it.)
            if self._resume_call is None:
                self._resume_call = self._clock.callLater(0, self._resume_input)
        if self._refused and not self._queue:
            count, self._refused = self._refused, 0
            return count
        return 0

    def _resume_input(self) -> None:
        self._resume_call = None
        if self.input is not None and not self._input_paused:
            self.input.resumeProducing()

    # -- lines out -------------------------------------------------------------

    def next_line(self, paced: bool) -> str | None:
        """
        The next line to send, if one waits and may go now; C{paced}: it
        waits for the pacer and for room in the socket (not at the nickname
        prompt).  When it must wait, C{go} is called once it may.
        """
        if not self._queue or (paced and self._must_wait()):
            return None
        return self._queue.popleft().line

    def _must_wait(self) -> bool:
        if self._socket_full():
            if self._stall_timer is None and self.stall_timeout is not None:
                self._stall_since = self._clock.seconds()
                self._stall_taken = self._taken()
                self._stall_look_later()
            return True
        if self._pace_timer is not None:
            return True
        wait = self._pacer.wait()
        if wait <= 0:
            return False
        self._pace_timer = self._clock.callLater(max(wait, 0.001), self._paced)
        return True

    def _paced(self) -> None:
        self._pace_timer = None
        self._go()

    def socket_room(self) -> None:
        """The socket's buffer has drained: the server reads again."""
        self.cancel_stall()
        self._go()

    def _stall_look_later(self) -> None:
        assert self.stall_timeout is not None
        left = self._stall_since + self.stall_timeout - self._clock.seconds()
        self._stall_timer = self._clock.callLater(
            max(min(self.STALL_STEP, left), 0.0), self._stall_look
        )

    def _stall_look(self) -> None:
        """
        Lines still wait on a full socket: if the server took some of what
        the client sent since the last look, it reads (slowly), and the time
        starts again; after C{stall_timeout} seconds without, give up.
        """
        self._stall_timer = None
        assert self.stall_timeout is not None
        taken = self._taken()
        if taken is not None and self._stall_taken is not None and taken > self._stall_taken:
            self._stall_since = self._clock.seconds()
        self._stall_taken = taken
        if self._clock.seconds() - self._stall_since < self.stall_timeout:
            self._stall_look_later()
            return
        self._on_stalled()

    def cancel_stall(self) -> None:
        """Lines no longer wait on the socket (it drained, or BYE was sent)."""
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None

    def stop(self) -> None:
        """The connection is gone: no more timers, and a script's input stays as it is."""
        self.cancel_stall()
        for call in (self._pace_timer, self._resume_call):
            if call is not None and call.active():
                call.cancel()
        self._pace_timer = self._resume_call = None

    # -- lines not sent ----------------------------------------------------------

    def waiting(self) -> int:
        """The lines waiting to be sent, blank ones (which send nothing) left out."""
        return sum(1 for typed in self._queue if sendable(typed.line).strip(" \t"))

    def drop(self, counted: bool) -> int:
        """
        Drop the lines still waiting to be sent; when C{counted} (once
        online) they are said at the end (none is lost silently).  How many.
        """
        count = self.waiting() if counted else 0
        self._queue.clear()
        self._unsent += count
        return count

    def discard(self) -> None:
        """Drop the lines still waiting, uncounted (after C{/quit})."""
        self._queue.clear()

    def hand_over(self) -> HandedOver:
        """Take out the lines still waiting, uncounted, for the next connection."""
        handed = HandedOver(tuple(self._queue), self._refused)
        self._queue.clear()
        self._refused = 0
        return handed

    def take_over(self, handed: HandedOver) -> None:
        """
        Queue the lines an earlier connection handed over, in order, into
        this empty outbox of the same bound; those it refused stay counted
        (said once the queue is empty, as on one connection).
        """
        self._queue.extend(handed.lines)
        self._refused += handed.refused

    def take_all(self) -> list[str]:
        """Drop the lines still waiting, uncounted: they are what the client says."""
        lines = [typed.line for typed in self._queue]
        self._queue.clear()
        return lines

    def drop_where(self, unwanted: Callable[[Typed], bool]) -> list[Typed]:
        """Drop the waiting lines C{unwanted} picks, uncounted; the others keep their order."""
        kept: deque[Typed] = deque()
        dropped: list[Typed] = []
        for typed in self._queue:
            (dropped if unwanted(typed) else kept).append(typed)
        if dropped:
            self._queue = kept
        return dropped

    # -- what was sent -------------------------------------------------------------

    def sent(self, verb: str, message: Sent | None = None) -> None:
        """
        A line was written (any line: the server's flood control counts them
        all); C{message}: a C{MSG} or C{DM}, what it said and to whom.
        """
        self._pacer.spend()
        if verb in ("MSG", "DM"):
            self._messages_sent += 1
            if message is not None:
                self._unconfirmed.append(replace(message, number=self._messages_sent))

    @property
    def messages_sent(self) -> int:
        """The messages (C{MSG}, C{DM}) sent so far."""
        return self._messages_sent

    def unanswered_among_first(self, count: int) -> bool:
        """
        Whether one of the first C{count} messages sent is still unanswered
        (no copy back, no C{ERROR} refusing it): the oldest unanswered is
        the first kept, as they are kept in the order sent.
        """
        return bool(self._unconfirmed) and self._unconfirmed[0].number <= count

    def _answered(self, picks: Callable[[Sent], bool]) -> Sent | None:
        """The oldest message not yet answered that C{picks}, taken out."""
        for index, message in enumerate(self._unconfirmed):
            if picks(message):
                del self._unconfirmed[index]
                return message
        return None

    def echoed(self, to: str | None = None, text: str | None = None) -> None:
        """
        The server sent back its copy of one of our messages: it took it.
        C{to}: the nick_key it went to (C{None}: the lobby).  It answers the
        oldest message with that text to that place (a C{MSG} went wherever
        the server sent it), or else the oldest of all.
        """
        self._messages_echoed += 1
        if self._answered(lambda m: m.text == text and m.to in (None, to)) is None:
            self._answered(lambda m: True)

    def refused_to(self, to: str, among_first: int | None = None) -> bool:
        """
        C{ERROR no-such-nick} (or C{self}) naming C{to} (a nick_key): it
        answered the oldest C{DM} to them, which was not sent.  If none
        waits for an answer, the error was about a command: nothing changes.
        C{among_first}: only a C{DM} among the first that many messages sent
        (a command to C{to} sent after them, and before a later C{DM},
        is answered first).  Whether it answered a C{DM}.
        """
        return self._refuse(
            lambda m: m.to == to and (among_first is None or m.number <= among_first)
        ) is not None

    def refused_behind(self, to: str) -> None:
        """
        C{ERROR busy}: C{to} (a nick_key) is too far behind reading to take
        a private message.  It answered the oldest C{DM} to them, or else
        the oldest C{MSG} (one the server sent to them as the partner: it
        routes a C{MSG} by the pair it knows when it reads it).
        """
        self._refuse(lambda m: m.to == to, lambda m: m.to is None)

    def refused_msg(self) -> None:
        """
        An C{ERROR} "not sent" about a pair that changed before the line was
        delivered (C{busy} "it was meant for the lobby ...", C{not-paired},
        a cluster's C{unavailable}): the oldest C{MSG} went nowhere (to the
        lobby nor to a partner).
        """
        self._refuse(lambda m: m.to is None)

    def refused_longer(self, most: int) -> Sent | None:
        """C{ERROR too-long}: the oldest message over C{most} bytes was not
        sent; returned (C{None}: the error was about a command)."""
        return self._refuse(lambda m: m.size > most)

    def refused_chars(self) -> None:
        """
        C{ERROR bad-chars} or C{bad-encoding}: the oldest message with a
        character other than printable ASCII or TAB was not sent.  Only such
        a message can be refused for its characters (the client leaves out
        those chat/1 forbids: a server stricter than chat/1, refusing say a
        bidi override, refused it).  If none waits for an answer, the error
        was about a command: nothing changes.
        """
        self._refuse(lambda m: not _plain(m.text))

    def _refuse(self, *picks: Callable[[Sent], bool]) -> Sent | None:
        """An C{ERROR} refused the oldest message the first of C{picks} that
        finds one picks, returned (none: the error was about a command)."""
        for pick in picks:
            message = self._answered(pick)
            if message is not None:
                self._messages_refused += 1
                return message
        return None

    @property
    def rate(self) -> float:
        """Lines a second the pacer lets go."""
        return self._pacer.rate

    def flood(self, text: str) -> float | None:
        """
        C{ERROR flood} with C{text}, once online: a line was dropped, and the
        pacer slows down (unless it refused a request: password work,
        L{PASSWORD_WORK_REFUSED}, or the user list's cost of a C{USERS},
        C{PAIR} or C{ACCEPT}, L{list_cost_verb}).  The new rate, or C{None}
        if it did not change.
        """
        if text.startswith(PASSWORD_WORK_REFUSED) or list_cost_verb(text) is not None:
            return None  # a request refused, not too many lines
        self._flood_dropped = True
        if self._pacer.slow_down(text):
            return self._pacer.rate
        return None

    def losses(self, bye_answered: bool) -> str | None:
        """
        What the user sent that may not have arrived, in a sentence, or
        C{None}: messages the server neither sent a copy of back nor refused
        with an C{ERROR} (those were answered, and said then), and lines
        still waiting that were dropped.  Once it answered our C{BYE}
        (C{bye_answered}: it answers lines in order) the messages were not
        accepted (dropped by its flood control); before, they are in doubt.
        The count is of all of them; the latest few are named (only
        L{UNCONFIRMED_MAX} are remembered), the rest counted as earlier ones.
        """
        unsent = not_sent(self._unsent) if self._unsent else None
        sent = self._messages_sent
        missing = sent - self._messages_echoed - self._messages_refused
        if missing <= 0:
            return unsent
        taken = "accepted" if bye_answered else "confirmed"
        if sent == 1:
            said = f"The message sent was not {taken} by the server"
        elif missing == sent:
            said = f"None of the {sent} messages sent was {taken} by the server"
        else:
            verb = "was" if missing == 1 else "were"
            said = f"{missing} of the {sent} messages sent {verb} not {taken} by the server"
        if self._flood_dropped:
            said += " (it dropped lines sent too fast)"
        remembered = list(self._unconfirmed)[-min(NAMED_MAX, missing) :]
        named = [_named(m.text) for m in remembered]
        if named:
            more = missing - len(named)
            earlier = f"{more} earlier {'one' if more == 1 else 'ones'}, then " if more else ""
            said += f": {earlier}{', '.join(named)}"
        said += "."
        return said if unsent is None else f"{said} {unsent}"
