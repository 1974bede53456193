"""
A cluster node's Redis connections hand on a read's replies in the turn
the read came (twisted_chat.server.cluster.redisconn, C{_WholeReads}), so
the events that one read brings from the channel are fanned out together
(rev21-clu F1): txredisapi handed on one bulk string per reactor turn, and
the fan-out, which sends what a turn gathered at its end, wrote each
event's lines alone (1,595 of 1,597 flushes carried one line; 200 users
leaving one node cost every node about 40,000 writes).  Within the
fan-out's bound: once its waiting lines are due (C{LobbyFanout.due}), the
rest of the read waits a turn, and with C{--fanout-delay 0} each event's
lines go at the end of their own turn.  Deterministic: the real protocol on
a StringTransport, a task.Clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from tests.test_fanout import Stub
from twisted_chat.server.cluster.redisconn import _Subscriber
from twisted_chat.server.output.fanout import LobbyFanout

CHANNEL = "chat:live:0"


def bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def published(*messages: str) -> bytes:
    """What Redis writes to a subscriber for C{messages} on the channel."""
    return b"".join(b"*3\r\n" + bulk("message") + bulk(CHANNEL) + bulk(m) for m in messages)


class Intake:
    """A node's subscriber (txredisapi's protocol, as redisconn builds it)
    whose events each add a lobby line to a fan-out of one member; C{cost}:
    the seconds each event takes to apply (the clock moves, no call runs)."""

    def __init__(self, window: float, cost: float = 0.0) -> None:
        self.clock = Clock()
        self.member = Stub()
        self.fanout = LobbyFanout(self.clock, lambda: [self.member], window,
                                  backlog=lambda: False)
        self.transport = StringTransport()
        self.proto = _Subscriber(charset="utf-8", convertNumbers=False)
        self.proto.callLater = self.clock.callLater
        self.proto.due = self.fanout.due
        self.proto.heard = self.heard
        self.proto.makeConnection(self.transport)
        self.cost = cost
        self.heard_in_turn: list[int] = [0]
        self.paused_while_waiting = False

    def heard(self, message: str) -> None:
        self.fanout.add(f"LEFT {message}\n".encode())
        self.heard_in_turn[-1] += 1
        self.clock.rightNow += self.cost

    def run(self) -> None:
        """The reactor's turns, until no call waits."""
        while self.clock.getDelayedCalls():
            if self.transport.producerState == "paused":
                self.paused_while_waiting = True
            self.heard_in_turn.append(0)
            self.clock.advance(0)

    def batches(self) -> list[list[str]]:
        return [w.decode().splitlines() for w in self.member.got]


def test_the_events_of_one_read_are_fanned_out_in_one_write() -> None:
    """50 departures in one read from Redis: every member gets their LEFT
    lines in one write (before: 50 writes, one per reactor turn)."""
    intake = Intake(window=0.010)
    nicks = [f"u{i}" for i in range(50)]
    intake.proto.dataReceived(published(*nicks))
    assert intake.heard_in_turn == [50]  # all applied in the read's turn
    intake.run()
    assert intake.batches() == [[f"LEFT {n}" for n in nicks]]
    assert intake.transport.producerState == "producing"


def test_a_read_split_across_reads_and_bulk_strings_keeps_its_order() -> None:
    """Events cut anywhere (inside a bulk string, between two) come out
    whole and in order, the part after the cut with the next read."""
    intake = Intake(window=0.010)
    data = published(*(f"u{i}" for i in range(10)))
    for cut in (7, 40, 41, 95, len(data) - 3):
        intake.proto.dataReceived(data[:cut])
        intake.proto.dataReceived(data[cut:])
    intake.run()
    lines = [line for batch in intake.batches() for line in batch]
    assert lines == [f"LEFT u{i}" for _ in range(5) for i in range(10)]


def test_a_long_read_lets_the_lines_go_once_they_are_due() -> None:
    """Each event takes 4 ms to apply and the window is 10 ms: once the
    first waiting line is due, the rest of the read waits a turn (its
    transport paused, as txredisapi had it), the turn's end sends what was
    gathered, and the read goes on: no line waits much past the window."""
    intake = Intake(window=0.010, cost=0.004)
    intake.proto.dataReceived(published(*(f"u{i}" for i in range(10))))
    intake.run()
    assert [len(b) for b in intake.batches()] == [3, 3, 3, 1]
    assert [line for b in intake.batches() for line in b] == [f"LEFT u{i}" for i in range(10)]
    assert intake.paused_while_waiting
    assert intake.transport.producerState == "producing"


def test_with_fanout_delay_0_each_events_lines_go_at_the_end_of_its_turn() -> None:
    """--fanout-delay 0 turns pacing off: nothing waits for lines behind it,
    so each event's lines go at the end of a turn of their own."""
    intake = Intake(window=0.0)
    intake.proto.dataReceived(published("a", "b", "c"))
    intake.run()
    assert intake.batches() == [["LEFT a"], ["LEFT b"], ["LEFT c"]]


def test_an_event_whose_handling_raises_is_logged_and_the_rest_still_handed_on() -> None:
    """rr21-d: an event callback that raised inside the read's handling
    took the rest of that read with it (events lost, the parser left in
    the middle of a bulk string) and ended the connection.  Now it is
    logged with its traceback, and the events after it come, in order:
    in the read's turn, and in a rest put off a turn."""
    intake = Intake(window=0.010, cost=0.004)
    apply = intake.heard

    def heard(message: str) -> None:
        if message in ("u1", "u6"):
            raise RuntimeError(f"a bug at {message}")
        apply(message)

    intake.proto.heard = heard
    with capturedLogs() as events:
        intake.proto.dataReceived(published(*(f"u{i}" for i in range(10))))
        intake.run()
    assert [line for b in intake.batches() for line in b] == [
        f"LEFT u{i}" for i in range(10) if i not in (1, 6)]
    assert len(intake.batches()) > 1, "a rest was put off a turn too"
    failures = [e for e in events if "log_failure" in e]
    assert [e["log_failure"].getErrorMessage() for e in failures] == [
        "a bug at u1", "a bug at u6"]
    assert formatEvent(failures[0]).startswith("cluster: handling a reply from Redis failed")
    intake.proto.dataReceived(published("later"))  # the connection reads on
    intake.run()
    assert intake.batches()[-1] == ["LEFT later"]
    assert intake.transport.producerState == "producing"


def test_command_replies_are_handed_on_in_the_reads_turn() -> None:
    """The command connection too: a read of many replies (a burst of
    appends acknowledged) answers them all in its turn, not one a turn
    (rev21-clu F3: a node read its replies so late that its own reply
    timeout dropped the connection)."""
    from twisted_chat.server.cluster.redisconn import _Commands

    clock = Clock()
    proto = _Commands(charset="utf-8", convertNumbers=False)
    proto.callLater = clock.callLater
    proto.makeConnection(StringTransport())
    answers: list[object] = []
    for _ in range(20):
        proto.execute_command("EVALSHA", "x").addCallback(answers.append)
    proto.dataReceived(b"".join(bulk(f"{i}-0") for i in range(20)))
    assert answers == [f"{i}-0" for i in range(20)]
    assert not clock.getDelayedCalls()


def test_what_comes_while_a_reads_rest_waits_is_handed_on_after_it() -> None:
    """rr21-c #1: over TLS (rediss://) one socket read is handed on as
    several records, each a dataReceived, paused or not.  The lobby's lines
    due after the first event: the rest of the first record waits a turn,
    and the second record comes meanwhile.  It is handed on after that
    rest (it was put before it: events lost and reordered)."""
    intake = Intake(window=0.010)
    asks = iter([True])  # the lines are due once, after the first bulk string
    intake.proto.due = lambda: next(asks, False)
    data = published(*(f"u{i}" for i in range(6)))
    cut = len(published("u0", "u1", "u2"))
    intake.proto.dataReceived(data[:cut])
    assert intake.transport.producerState == "paused"
    intake.proto.dataReceived(data[cut:])  # the same read's next record
    intake.run()
    assert [line for b in intake.batches() for line in b] == [f"LEFT u{i}" for i in range(6)]
    assert intake.transport.producerState == "producing"


def test_command_replies_that_come_while_a_reads_rest_waits_answer_their_own_commands() -> None:
    """rr21-c #1, the command connection: six GETs answered in one read
    that comes as two records, the lobby's lines due once: each command
    gets its own reply (k1 got v3's, k4 v1's)."""
    from twisted_chat.server.cluster.redisconn import _Commands

    clock = Clock()
    proto = _Commands(charset="utf-8", convertNumbers=False)
    proto.callLater = clock.callLater
    proto.makeConnection(StringTransport())
    got: dict[str, object] = {}
    for i in range(6):
        proto.execute_command("GET", f"k{i}").addBoth(lambda r, k=f"k{i}": got.__setitem__(k, r))
    asks = iter([True])
    proto.due = lambda: next(asks, False)
    data = b"".join(bulk(f"v{i}") for i in range(6))
    cut = len(b"".join(bulk(f"v{i}") for i in range(3)))
    proto.dataReceived(data[:cut])
    proto.dataReceived(data[cut:])
    while clock.getDelayedCalls():
        clock.advance(0)
    assert got == {f"k{i}": f"v{i}" for i in range(6)}


HIREDIS_IMPORTABLE = """
import sys, types
sys.modules["hiredis"] = types.ModuleType("hiredis")  # importable: txredisapi picks its parser
import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted_chat.server.cluster.redisconn import _Commands, _Subscriber
assert txredisapi.RedisProtocol is txredisapi.HiredisProtocol
for kind in (_Commands, _Subscriber):
    assert txredisapi.HiredisProtocol not in kind.__mro__, kind.__mro__
proto = _Subscriber(charset="utf-8", convertNumbers=False)
clock = Clock()
proto.callLater = clock.callLater
heard, asked = [], []
proto.heard = heard.append
proto.due = lambda: not asked  # due at the first ask (after a bulk string), then not
proto.makeConnection(StringTransport())
proto.dataReceived(sys.stdin.buffer.read())
asked.append(1)
print(heard)  # the rest of the read waits a turn
clock.advance(0)
print(heard)
"""


def test_the_nodes_connections_parse_whole_reads_even_with_hiredis_importable() -> None:
    """rr21-c: with hiredis importable, txredisapi's RedisProtocol (and
    SubscriberProtocol's base) is HiredisProtocol, which parses a read in
    its own dataReceived: _WholeReads and due were skipped, and the
    fan-out's bound did not hold within a read.  The node's connections are
    on txredisapi's line parser whatever is installed (a stand-in hiredis
    module, in a process of its own: txredisapi chooses at import)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", HIREDIS_IMPORTABLE], capture_output=True,
                         input=published("a", "b"), timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().splitlines() == ["[]", "['a', 'b']"]  # due asked, then the rest


def test_the_subscribers_line_parser_class_is_redisconns_own() -> None:
    """redisconn's copy of SubscriberProtocol's methods took its __module__
    too: the class named itself txredisapi._LineSubscriber,
    a class txredisapi does not have, in reprs and tracebacks (rr21-d)."""
    import txredisapi

    from twisted_chat.server.cluster import redisconn

    line_subscriber = _Subscriber.__mro__[_Subscriber.__mro__.index(
        txredisapi.BaseRedisProtocol) - 1]
    assert line_subscriber.__qualname__ == "_LineSubscriber"
    assert line_subscriber.__module__ == redisconn.__name__


def test_the_paired_users_lines_let_the_turn_end_once_they_are_due() -> None:
    """The rule asked only whether the lobby's lines were due, so events
    that bring only paired users' JOINED and LEFT lines (their own batch)
    were all handed on in the read's turn, however long it took: a whole
    read (64 KiB) past the window (rr21-f).  The server's lobby fan-out
    (whose due a node's connections are given, cluster/service.py) asks
    its batch beside it too: as in the lobby's test above."""
    from tests.harness import Harness
    from tests.test_pacing import count_writes, couples

    h = Harness(fanout_delay=0.010, backlog=lambda: False)
    [(alice, _)] = couples(h, 1)
    h.clear_all()
    writes = count_writes(alice)
    proto = _Subscriber(charset="utf-8", convertNumbers=False)
    proto.callLater = h.clock.callLater
    proto.due = h.factory.fanout.due

    def heard(message: str) -> None:
        h.factory.paired_fanout.add(f"LEFT {message}\r\n".encode())
        h.clock.rightNow += 0.004  # each event takes 4 ms to apply

    proto.heard = heard
    proto.makeConnection(StringTransport())
    proto.dataReceived(published(*(f"u{i}" for i in range(10))))
    while h.clock.getDelayedCalls():
        h.clock.advance(0)
    assert [w.decode().splitlines() for w in writes] == [
        [f"LEFT u{i}" for i in batch] for batch in ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9,))]
