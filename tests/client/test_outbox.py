"""
The outbox on its own (twisted_chat.client.outbox): order, pacing, the wait
on a full socket, the bound on what waits, and the counts said at the end.
A fake clock throughout; no network, no client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface import implementer

from twisted_chat.client.outbox import NAMED_CHARS, NAMED_MAX, UNCONFIRMED_MAX, Outbox, Sent
from twisted_chat.client.pace import BURST, RATE
from twisted_chat.wire import LIST_COST_VERBS, list_cost


@implementer(IPushProducer)
class Stdin:
    """A script's stdin: only whether it is paused."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


@dataclass
class Rig:
    """An L{Outbox} on a fake clock, with what it called back."""

    clock: Clock = field(default_factory=Clock)
    full: bool = False  # the socket's buffer
    taken: int | None = None  # what the server acknowledged (None: cannot tell)
    goes: int = 0
    stalls: int = 0
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = self.make()

    def make(self, stall_timeout: float | None = 15.0, limit: int = 1000) -> Outbox:
        self.outbox = Outbox(
            self.clock,
            go=self._go,
            stalled=self._stalled,
            socket_full=lambda: self.full,
            taken=lambda: self.taken,
            stall_timeout=stall_timeout,
            limit=limit,
        )
        return self.outbox

    def _go(self) -> None:
        self.goes += 1

    def _stalled(self) -> None:
        self.stalls += 1

    def take(self, paced: bool = True) -> list[str]:
        """Every line that may go now, as the client's loop takes them."""
        lines = []
        while (line := self.outbox.next_line(paced)) is not None:
            self.outbox.sent("MSG")
            lines.append(line)
        return lines


def test_lines_go_in_order_a_burst_then_at_the_pacers_rate() -> None:
    r = Rig()
    for i in range(BURST + 3):
        assert r.outbox.add(f"line {i}", None)
    assert r.take() == [f"line {i}" for i in range(BURST)]
    assert len(r.outbox) == 3 and r.goes == 0
    r.clock.advance(1 / RATE)
    assert r.goes == 1  # the pacer lets the next one go: the client takes it
    assert r.take() == [f"line {BURST}"]
    r.clock.advance(1 / RATE)
    assert r.take() == [f"line {BURST + 1}"]


def test_at_the_nickname_prompt_lines_are_not_paced() -> None:
    r = Rig()
    r.full = True
    for i in range(BURST + 3):
        r.outbox.add(f"line {i}", None)
    assert len(r.take(paced=False)) == BURST + 3
    assert r.clock.getDelayedCalls() == []  # neither the pacer's nor the stall's timer


def test_lines_wait_on_a_full_socket_and_go_once_it_drains() -> None:
    r = Rig()
    r.outbox.add("hello", None)
    r.full = True
    assert r.take() == []
    r.clock.advance(10)
    assert r.stalls == 0
    r.full = False
    r.outbox.socket_room()
    assert r.goes == 1
    assert r.take() == ["hello"]
    r.clock.advance(60)
    assert r.stalls == 0  # drained: the stall's timer is gone
    assert r.clock.getDelayedCalls() == []


def test_a_socket_that_never_drains_stalls_after_the_timeout() -> None:
    r = Rig()
    r.outbox.add("hello", None)
    r.full = True
    r.take()
    r.take()  # looking again does not start the time again
    r.clock.advance(15 - 0.5)
    assert r.stalls == 0
    r.clock.advance(0.5)
    assert r.stalls == 1
    assert len(r.outbox) == 1  # the lines are the client's to count


def test_a_socket_the_server_takes_some_of_does_not_stall() -> None:
    # The buffer never drains (the server reads slowly), but it takes some.
    r = Rig(full=True, taken=5000)
    r.outbox.add("hello", None)
    r.take()
    for second in range(1, 61):
        r.clock.advance(1)
        if second % 10 == 0:
            r.taken = 5000 + 10 * second  # 100 bytes every 10 s
    assert r.stalls == 0
    assert len(r.clock.getDelayedCalls()) == 1  # one look at a time


def test_the_stall_counts_from_the_last_bytes_taken() -> None:
    r = Rig(full=True, taken=5000)
    r.outbox.add("hello", None)
    r.take()
    r.clock.advance(5)
    r.taken = 6000  # taken between the looks at 5 s and 6 s
    r.clock.advance(1)
    r.clock.advance(15 - 0.5)
    assert r.stalls == 0
    r.clock.advance(0.5)
    assert r.stalls == 1  # 15 s after the look that saw the last progress
    assert r.clock.getDelayedCalls() == []


def test_a_count_that_does_not_grow_is_not_progress() -> None:
    # Where only Twisted's buffer can be read, its count falls as the
    # client writes more (a password typed): that is not the server reading.
    r = Rig(full=True, taken=-70_000)
    r.outbox.add("hello", None)
    r.take()
    r.clock.advance(5)
    r.taken = -70_500
    r.clock.advance(10 - 0.5)
    assert r.stalls == 0
    r.clock.advance(0.5)
    assert r.stalls == 1  # 15 s after the lines started to wait


def test_where_nothing_can_be_seen_the_time_runs_from_the_start_of_the_wait() -> None:
    r = Rig(full=True, taken=None)
    r.outbox.add("hello", None)
    r.take()
    r.clock.advance(15 - 0.5)
    assert r.stalls == 0
    r.clock.advance(0.5)
    assert r.stalls == 1


def test_without_a_timeout_lines_wait_on_a_full_socket_for_ever() -> None:
    r = Rig()
    r.make(stall_timeout=None)
    r.outbox.add("hello", None)
    r.full = True
    assert r.take() == []
    assert r.clock.getDelayedCalls() == []


def test_cancel_stall_and_stop_leave_no_timer() -> None:
    r = Rig()
    r.outbox.add("hello", None)
    r.full = True
    r.take()
    r.outbox.cancel_stall()  # BYE was sent: its own timeout bounds the wait
    r.clock.advance(60)
    assert r.stalls == 0
    r.full = False
    for i in range(BURST + 1):
        r.outbox.add(f"line {i}", None)
    r.take()
    assert r.clock.getDelayedCalls() != []  # the pacer's
    r.outbox.stop()
    assert r.clock.getDelayedCalls() == []


def test_a_scripts_input_is_paused_at_the_limit_and_read_again_at_half() -> None:
    r = Rig()
    r.make(limit=10)
    stdin = r.outbox.input = Stdin()
    for i in range(10):
        assert r.outbox.add(f"line {i}", None)  # a script's lines are never refused
    assert stdin.paused
    r.outbox.next_line(paced=False)
    assert r.outbox.room() == 0
    r.clock.advance(0)
    assert stdin.paused  # 9 wait: more than half
    for _ in range(4):
        r.outbox.next_line(paced=False)
    r.outbox.room()
    assert stdin.paused  # resumed later, not from inside the client's loop
    r.clock.advance(0)
    assert not stdin.paused


def half_gone(r: Rig) -> Stdin:
    """A script's 10 lines filled the outbox (limit 10), then 5 went: stdin is read again later."""
    r.make(limit=10)
    stdin = r.outbox.input = Stdin()
    for i in range(10):
        r.outbox.add(f"line {i}", None)
    for _ in range(5):
        r.outbox.next_line(paced=False)
    r.outbox.room()
    return stdin


def test_a_connection_lost_before_stdin_is_read_again_leaves_it_paused() -> None:
    # Half the queue went, and the connection was lost in the same reactor
    # turn: the session is over, its script's input is not read again.
    r = Rig()
    stdin = half_gone(r)
    assert len(r.clock.getDelayedCalls()) == 1  # stdin, read again later
    r.outbox.stop()
    assert r.clock.getDelayedCalls() == []
    r.clock.advance(1)
    assert stdin.paused


def test_stdin_paused_again_before_it_was_read_again_is_read_again_once() -> None:
    r = Rig()
    stdin = half_gone(r)
    for i in range(5):
        r.outbox.add(f"more {i}", None)  # lines already read: full again
    assert stdin.paused
    for _ in range(5):
        r.outbox.next_line(paced=False)
    r.outbox.room()
    assert len(r.clock.getDelayedCalls()) == 1
    r.clock.advance(0)
    assert not stdin.paused and r.clock.getDelayedCalls() == []


def test_on_a_terminal_lines_over_the_limit_are_refused_and_counted_once_empty() -> None:
    r = Rig()
    r.make(limit=4)
    for i in range(4):
        assert r.outbox.add(f"line {i}", None)
    assert not r.outbox.add("five", None)
    assert not r.outbox.add("six", None)
    assert r.outbox.refused == 2
    for _ in range(2):  # half gone: lines typed before them still wait
        r.outbox.next_line(paced=False)
        r.outbox.sent("MSG")
    assert r.outbox.room() == 0
    assert r.outbox.refused == 2
    r.take(paced=False)
    assert len(r.outbox) == 0
    assert r.outbox.room() == 2  # said once...
    assert r.outbox.room() == 0  # ...and only once
    assert r.outbox.refused == 0


def test_the_lines_handed_over_keep_their_order_tags_and_the_refused_count() -> None:
    """The lines typed ahead of a login the server's nick timeout cut go to
    the next connection's outbox (twisted_chat.client.reconnect): in order,
    with whom they were typed for; those refused over the bound stay
    counted as refused (said once the queue is empty, as on one
    connection)."""
    r = Rig()
    r.make(limit=3)
    for line in ("one", "/pair bob", "two", "three"):
        r.outbox.add(line, None)
    handed = r.outbox.hand_over()
    assert len(r.outbox) == 0 and r.outbox.refused == 0
    assert r.outbox.losses(bye_answered=False) is None  # not counted as unsent here
    nxt = Rig()
    nxt.make(limit=3)
    nxt.outbox.take_over(handed)
    assert [(t.line, t.after_pairing) for t in nxt.outbox] == [
        ("one", False), ("/pair bob", False), ("two", True)
    ]
    assert nxt.outbox.refused == 1  # "three", over the bound
    nxt.take(paced=False)
    assert nxt.outbox.room() == 1


def test_a_line_after_a_waiting_pairing_command_is_tagged() -> None:
    r = Rig()
    r.outbox.add("hi all", None)
    r.outbox.add("/pair bob", None)
    r.outbox.add("hi bob", None)
    r.outbox.add("still for bob", None)
    assert [(t.line, t.to, t.after_pairing) for t in r.outbox] == [
        ("hi all", None, False),
        ("/pair bob", None, False),
        ("hi bob", None, True),
        ("still for bob", None, True),
    ]


def test_drop_where_keeps_the_order_of_the_rest() -> None:
    r = Rig()
    for line, to in [("a", "bob"), ("b", None), ("c", "bob"), ("d", None)]:
        r.outbox.add(line, to)
    dropped = r.outbox.drop_where(lambda typed: typed.to is not None)
    assert [t.line for t in dropped] == ["a", "c"]
    assert [t.line for t in r.outbox] == ["b", "d"]
    assert r.outbox.drop_where(lambda typed: False) == []
    assert r.outbox.losses(bye_answered=True) is None  # not counted


def test_dropped_lines_are_counted_blank_ones_left_out() -> None:
    r = Rig()
    for line in ["one", "  ", "two", "/users"]:
        r.outbox.add(line, None)
    assert r.outbox.waiting() == 3
    assert r.outbox.drop(counted=True) == 3
    assert len(r.outbox) == 0
    r.outbox.add("before joining", None)
    assert r.outbox.drop(counted=False) == 0
    r.outbox.add("after /quit", None)
    r.outbox.discard()
    assert r.outbox.take_all() == []
    assert r.outbox.losses(bye_answered=True) == (
        "3 lines still waiting to be sent were not sent."
    )


def test_take_all_hands_back_the_lines_uncounted() -> None:
    r = Rig()
    r.outbox.add("secret", None)
    r.outbox.add("more", None)
    assert r.outbox.take_all() == ["secret", "more"]
    assert len(r.outbox) == 0
    assert r.outbox.losses(bye_answered=False) is None


@pytest.mark.parametrize(
    ("sent", "echoed", "answered", "said"),
    [
        (3, 3, True, None),
        (1, 0, True, "The message sent was not accepted by the server."),
        (2, 0, False, "None of the 2 messages sent was confirmed by the server."),
        (5, 4, True, "1 of the 5 messages sent was not accepted by the server."),
        (5, 2, False, "3 of the 5 messages sent were not confirmed by the server."),
    ],
)
def test_messages_without_the_servers_copy_are_counted(
    sent: int, echoed: int, answered: bool, said: str | None
) -> None:
    r = Rig()
    for _ in range(sent):
        r.outbox.sent("MSG")
    r.outbox.sent("PONG")  # not a message
    for _ in range(echoed):
        r.outbox.echoed()
    assert r.outbox.losses(bye_answered=answered) == said


def test_error_flood_slows_down_and_marks_the_loss_unless_busy() -> None:
    r = Rig()
    r.outbox.sent("DM")
    # Password work refused (PASSWORD_WORK_REFUSED): no line was dropped, so
    # the pacer keeps its rate and its bucket (the next line goes now).
    assert r.outbox.flood("the server is busy; send PASSWD again in a moment") is None
    assert r.outbox.rate == RATE
    r.outbox.add("next", None)
    assert r.outbox.next_line(True) == "next"
    assert r.outbox.losses(bye_answered=True) == (
        "The message sent was not accepted by the server."
    )
    assert r.outbox.flood("at most 10 lines per second (bursts of 20)") == RATE / 2
    assert r.outbox.rate == RATE / 2
    r.outbox.add("left", None)
    r.outbox.drop(counted=True)
    assert r.outbox.losses(bye_answered=True) == (
        "The message sent was not accepted by the server (it dropped lines sent too "
        "fast). 1 line still waiting to be sent was not sent."
    )


def test_the_user_list_s_cost_is_no_dropped_line() -> None:
    """ERROR flood refusing USERS, PAIR or ACCEPT for the user list's cost
    (wire.list_cost) did not drop a line: the rate stays, and the end does
    not say the server dropped lines sent too fast."""
    r = Rig()
    r.outbox.sent("MSG")
    for verb in LIST_COST_VERBS:
        assert r.outbox.flood(f"{list_cost(verb)}4096 bytes of the user list") is None
    assert r.outbox.rate == RATE
    assert r.outbox.losses(bye_answered=True) == (
        "The message sent was not accepted by the server."
    )


# -- rev15 L1: refused messages are answered; those in doubt are named ---------


def _sent(r: Rig, text: str, to: str | None = None) -> None:
    r.outbox.sent("DM" if to else "MSG", Sent(to, text, len(text) + 4))


def test_a_dm_refused_with_no_such_nick_is_not_in_doubt() -> None:
    r = Rig()
    _sent(r, "are you there", to="nobody2")
    r.outbox.refused_to("nobody2")
    assert r.outbox.losses(bye_answered=False) is None
    _sent(r, "hello lobby")
    r.outbox.refused_to("nobody2")  # answered once: a PAIR's refusal now
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 2 messages sent was not confirmed by the server: \u201chello lobby\u201d."
    )


def test_the_lines_in_doubt_are_named_and_only_they() -> None:
    r = Rig()
    _sent(r, "are you there", to="nobody2")
    _sent(r, "hello lobby")
    _sent(r, "one line while the server hangs")
    r.outbox.refused_to("nobody2")
    r.outbox.echoed(None, "hello lobby")
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 3 messages sent was not confirmed by the server: "
        "\u201cone line while the server hangs\u201d."
    )


def test_a_copy_answers_its_own_message_not_the_oldest() -> None:
    r = Rig()
    _sent(r, "first", to="bob")
    _sent(r, "second")
    r.outbox.echoed(None, "second")  # the lobby's copy came before bob's
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 2 messages sent was not confirmed by the server: \u201cfirst\u201d."
    )
    r.outbox.echoed("bob", "first")
    assert r.outbox.losses(bye_answered=False) is None


def test_a_message_too_long_for_the_server_is_answered() -> None:
    r = Rig()
    _sent(r, "short")
    _sent(r, "x" * 5000)
    r.outbox.refused_longer(4096)
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 2 messages sent was not confirmed by the server: \u201cshort\u201d."
    )


def test_a_message_to_a_reader_far_behind_is_answered() -> None:
    # ERROR busy naming a reader far behind answers the oldest DM to them,
    # else the oldest MSG (one the server sent to them as the partner).
    r = Rig()
    _sent(r, "lobby line")
    _sent(r, "to carol", to="carol")
    _sent(r, "to bob", to="bob")
    r.outbox.refused_behind("bob")
    assert r.outbox.losses(bye_answered=False) == (
        "2 of the 3 messages sent were not confirmed by the server: "
        "\u201clobby line\u201d, \u201cto carol\u201d."
    )
    r.outbox.refused_behind("bob")  # no DM to bob waits: a MSG the server sent bob
    r.outbox.refused_behind("bob")  # none left it can be about
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 3 messages sent was not confirmed by the server: \u201cto carol\u201d."
    )


@pytest.mark.parametrize("code", ["bad-chars", "bad-encoding"])
def test_a_message_refused_for_its_characters_is_answered(code: str) -> None:
    # ERROR bad-chars (or bad-encoding) answers the oldest message that has
    # a character other than printable ASCII or TAB: only such a line can be
    # refused for its characters.  (code: which ERROR the client passes on.)
    r = Rig()
    _sent(r, "plain\tascii")
    _sent(r, "caf\u00e9 \u202eevil")
    _sent(r, "also caf\u00e9")
    r.outbox.refused_chars()
    assert r.outbox.losses(bye_answered=False) == (
        "2 of the 3 messages sent were not confirmed by the server: "
        "\u201cplain\tascii\u201d, \u201calso caf\u00e9\u201d."
    )
    r.outbox.refused_chars()
    r.outbox.refused_chars()  # none left it can be about: a command's refusal
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 3 messages sent was not confirmed by the server: \u201cplain\tascii\u201d."
    )


def test_the_names_are_bounded() -> None:
    r = Rig()
    for i in range(8):
        _sent(r, f"line {i} " + "y" * 100)
    said = r.outbox.losses(bye_answered=False)
    assert said is not None
    assert said.startswith(
        "None of the 8 messages sent was confirmed by the server: 3 earlier ones, then "
        "\u201cline 3 yyy"
    )
    assert said.count("\u201c") == NAMED_MAX
    assert "\u201cline 7 " + "y" * (NAMED_CHARS - 8) + "\u2026\u201d." in said
    assert len(said) < 100 + NAMED_MAX * (NAMED_CHARS + 4)


# -- reread15 #1: the count said is the one named, past what is remembered -----


def test_more_in_doubt_than_remembered_are_all_counted() -> None:
    # A script that floods: more messages in doubt than the outbox remembers
    # by their text.  The earlier ones plus the named ones are all of them.
    r = Rig()
    for i in range(UNCONFIRMED_MAX + 200):
        _sent(r, f"m{i}")
    said = r.outbox.losses(bye_answered=False)
    assert said is not None
    assert said.startswith(
        f"None of the {UNCONFIRMED_MAX + 200} messages sent was confirmed by the server: "
        f"{UNCONFIRMED_MAX + 200 - NAMED_MAX} earlier ones, "
        f"then \u201cm{UNCONFIRMED_MAX + 195}\u201d"
    )
    for i in range(200):  # the oldest, no longer remembered, are confirmed
        r.outbox.echoed(None, f"m{i}")
    said = r.outbox.losses(bye_answered=False)
    assert said is not None
    assert said.startswith(
        f"{UNCONFIRMED_MAX} of the {UNCONFIRMED_MAX + 200} messages sent were not confirmed "
        f"by the server: {UNCONFIRMED_MAX - NAMED_MAX} earlier ones, then "
    )
    assert said.endswith(f"\u201cm{UNCONFIRMED_MAX + 199}\u201d.")


def test_no_more_are_named_than_are_counted() -> None:
    # A copy that answers nothing remembered (none waits) still counts: the
    # sentence names at most as many as it says are in doubt.
    r = Rig()
    r.outbox.echoed(None, "from before")
    _sent(r, "first")
    _sent(r, "second")
    assert r.outbox.losses(bye_answered=False) == (
        "1 of the 2 messages sent was not confirmed by the server: \u201csecond\u201d."
    )
