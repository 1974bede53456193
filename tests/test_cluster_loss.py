"""
A cluster node when Redis loses part of what it had (deterministic, on the
L{MemoryRedis} and L{Node} fakes of test_cluster_read):

- a node that loaded a snapshot older than the stream reloads a newer one
  only if nothing of its own can be in what was trimmed; and what the new
  snapshot says of it (its id declared dead) is acted on, so it never goes
  on under an id every replica skips;
- Redis losing the stream's last events (a crash with appendfsync everysec,
  its epoch kept), or all its data without a restart (FLUSHDB): the nodes
  keep their users' connections and announce them again, and a node
  started afterwards agrees with the running ones;
- a snapshot script Redis forgot makes the node reconnect (it loads it).
"""

from __future__ import annotations

import json
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import ensureDeferred, fail
from twisted.internet.task import Clock

from tests.test_cluster_read import SCRIPTS, Conn, MemoryRedis, Node, cluster, now, say
from twisted_chat.server.cluster.streamids import id_key


def _one_node_with_a_snapshot() -> tuple[MemoryRedis, Clock, Node, Any]:
    clock = Clock()
    clock.advance(1_700_000_000)
    redis = MemoryRedis(clock)
    n0 = Node(redis, clock, "n0")
    clock.advance(0)
    redis.pump()
    ann = n0.user("ann")
    say(n0, ann, "a")
    clock.advance(11)  # n0's heartbeats: a snapshot
    redis.pump()
    assert "chat:snapshot" in redis.keys
    return redis, clock, n0, ann


def _lapse_and_trim(redis: MemoryRedis, clock: Clock, n0: Node, ann: Any, n1: Node,
                    lapse: bool = True) -> str:
    """n1 is cut off; its lease lapses, n0 declares it dead (unless not
    C{lapse}), and 40 s of lobby messages make n0 snapshot and trim past
    n1's loaded snapshot."""
    old = n1.state.node
    if lapse:
        redis.keys.pop("chat:node:" + old)  # MemoryRedis ignores PX: the lease lapses
        if old not in n0.state.replica.nodes():
            n0.state.node_dead(old)  # no user to be judged by: declared all the same
    for i in range(16):
        say(n0, ann, f"m{i}")
        clock.advance(2.5)
        redis.pump()
    assert (old in n0.state.replica.dead) == lapse
    first = redis.stream[0][2]
    assert first != n1.state.replica.last_id  # trimmed past what n1 loaded
    return old


def _back(redis: MemoryRedis, clock: Clock, *nodes: Node) -> None:
    for node in nodes:
        node.reachable = True
    for _ in range(10):
        clock.advance(1)
        redis.pump()


def _a_newcomer_on_n1_is_known_everywhere(
        redis: MemoryRedis, clock: Clock, n0: Node, n1: Node) -> None:
    """n1's next registration is answered (not skipped as a dead id's) and
    known on n0 too."""
    amy: list[Any] = []
    n1.state.register("amy", Conn(), "-").addBoth(amy.append)
    clock.advance(0.01)
    redis.pump()
    assert [type(a).__name__ for a in amy] == ["User"]
    assert n0.nicks() == n1.nicks() == ["amy", "ann"]


def test_a_node_that_sent_a_registration_after_loading_does_not_reload_as_if_unseen() -> None:
    """n1 loads the snapshot, sends NICK zed (Redis takes it, n1 never hears
    it) and is cut off; n0 declares it dead, the stream is trimmed past
    both.  Back, n1 must not reload the newer snapshot under its old id
    (every replica skips that id: a zombie whose registrations are never
    answered): it goes the missed() way, under a new id, and its next
    registration is answered and known everywhere."""
    redis, clock, n0, ann = _one_node_with_a_snapshot()
    n1 = Node(redis, clock, "n1")
    clock.advance(0)
    redis.pump()
    loaded = n1.state.replica.last_id
    answers: list[Any] = []
    n1.state.register("zed", Conn(), "-").addBoth(answers.append)
    n1.cut()  # Redis took the NICK; n1 never heard it
    redis.pump()
    assert "zed" in n0.nicks() and n1.state.replica.last_id == loaded
    old = _lapse_and_trim(redis, clock, n0, ann, n1)
    _back(redis, clock, n1)
    assert n1.state.node != old
    assert n1.lost == 1
    assert "zed" not in n1.nicks() and "zed" not in n0.nicks()
    _a_newcomer_on_n1_is_known_everywhere(redis, clock, n0, n1)


def test_a_registration_sent_after_loading_and_trimmed_is_not_held_for_good() -> None:
    """As above, n1's lease kept (nobody declares it dead): the newer
    snapshot holds zed as n1's user, whose answer n1 would never get (a
    remote user on its own node, the nick held for good).  n1 goes the
    missed() way: new id, its old one declared dead, zed free everywhere."""
    redis, clock, n0, ann = _one_node_with_a_snapshot()
    n1 = Node(redis, clock, "n1")
    clock.advance(0)
    redis.pump()
    n1.state.register("zed", Conn(), "-")
    n1.cut()
    redis.pump()
    old = _lapse_and_trim(redis, clock, n0, ann, n1, lapse=False)
    assert "zed" in n0.nicks()
    _back(redis, clock, n1)
    assert n1.state.node != old and n1.lost == 1
    assert "zed" not in n1.nicks() and "zed" not in n0.nicks()
    _a_newcomer_on_n1_is_known_everywhere(redis, clock, n0, n1)


def test_a_node_declared_dead_before_the_snapshot_it_reloads_takes_a_new_id() -> None:
    """n1 loaded and sent nothing: the trimmed part holds nothing of its
    own but its death (n0 declared it dead).  It reloads the newer snapshot,
    which lists its id as dead: it goes on under a new id, and what it
    sends next is applied everywhere (not skipped as the dead id's)."""
    redis, clock, n0, ann = _one_node_with_a_snapshot()
    n1 = Node(redis, clock, "n1")
    clock.advance(0)
    redis.pump()
    n1.cut()
    old = _lapse_and_trim(redis, clock, n0, ann, n1)
    _back(redis, clock, n1)
    assert n1.state.node != old and n1.lost == 1
    _a_newcomer_on_n1_is_known_everywhere(redis, clock, n0, n1)


def _lose_tail(redis: MemoryRedis, entries: int) -> None:
    """Redis loses the stream's last entries (its epoch and id counter kept)."""
    del redis.stream[-entries:]


def _nobody_told_bye_and_a_new_node_agrees(
        redis: MemoryRedis, clock: Clock, n0: Node, n1: Node, bob: Any,
        nicks: list[str]) -> Node:
    """The lobby goes on (bob on n1 speaks), nobody was told BYE, and a
    node started now shows the same users as the running ones."""
    say(n1, bob, "after")
    assert n0.lost == n1.lost == 0
    assert n0.listener.said()[-1] == n1.listener.said()[-1] == "after"
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert n0.nicks() == n1.nicks() == n2.nicks() == nicks
    return n2


def test_redis_losing_the_streams_last_events_keeps_every_users_connection() -> None:
    """A Redis crash loses the stream's last second (appendfsync everysec),
    its epoch kept: ann's "lost" message, carol's registration on n0, and
    bob2's leave on n1, all applied by both nodes.  No node tells its users
    BYE; each announces its users again; the lobby goes on; and a node
    started afterwards agrees with the running ones."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    bob2 = n1.user("bob2")
    say(n0, ann, "kept")
    n0.user("carol")
    n1.state.leave(bob2, "quit")
    say(n0, ann, "lost")
    redis.pump()
    assert n0.nicks() == n1.nicks() == ["ann", "bob", "carol"]
    _lose_tail(redis, 3)  # carol's registration, bob2's leave, "lost"
    n0.cut()
    n1.cut()  # the restart
    _back(redis, clock, n0, n1)
    n2 = _nobody_told_bye_and_a_new_node_agrees(redis, clock, n0, n1, bob,
                                                ["ann", "bob", "carol"])
    assert n0.state.replica.last_id == n1.state.replica.last_id == n2.state.replica.last_id
    # Every replica names the same users by the same ids, on the same nodes.
    views = [sorted((uid, m.node, m.user.nick) for uid, m in n.state.replica.members.items())
             for n in (n0, n1, n2)]
    assert views[0] == views[1] == views[2]
    carol = n2.state.hub.online["carol"]
    assert n2.state.replica.members[n2.state.replica.uids[carol]].node == n0.state.node


def test_a_lost_tail_is_noticed_from_the_channel_without_a_reconnection() -> None:
    """The stream's last entries go (deleted) while the nodes stay
    connected: the next event follows an entry older than the nodes' last
    (its field p); they announce their users again, nobody is told BYE."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n0, ann, "one", "two")
    _lose_tail(redis, 1)
    say(n0, ann, "three")
    clock.advance(1)
    redis.pump()
    say(n1, bob, "four")
    assert n0.lost == n1.lost == 0
    assert n0.nicks() == n1.nicks() == ["ann", "bob"]
    assert n0.listener.said()[-1] == n1.listener.said()[-1] == "four"
    hellos = [e["n"] for e in redis.events() if e["t"] == "hello"]
    assert sorted(hellos) == sorted([n0.state.node, n1.state.node])


def test_flushdb_without_a_restart_takes_the_new_epoch_path() -> None:
    """FLUSHDB (or FLUSHALL) while the nodes stay connected: at their next
    heartbeat they see the epoch key gone, reconnect, see a new epoch and
    announce their users; nobody is told BYE, and a node started afterwards
    agrees."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n0, ann, "before")
    redis.flushdb()
    for _ in range(4):
        clock.advance(1)
        redis.pump()
    _nobody_told_bye_and_a_new_node_agrees(redis, clock, n0, n1, bob, ["ann", "bob"])


def test_a_snapshot_script_redis_forgot_makes_the_node_reconnect() -> None:
    """SCRIPT FLUSH just before a snapshot: the node reconnects (loading
    the scripts again) rather than logging it at debug level and never
    writing a snapshot again."""
    redis, clock, (n0,) = cluster(1)
    ann = n0.user("ann")
    say(n0, ann, "a")
    redis.scripts.clear()
    clock.advance(2.5)  # the heartbeat's snapshot: NOSCRIPT
    assert "chat:snapshot" not in redis.keys
    clock.advance(1)  # the reconnection
    redis.pump()
    assert redis.calls["SCRIPT"] == 2 * len(SCRIPTS)
    clock.advance(10)
    redis.pump()
    assert "chat:snapshot" in redis.keys


def test_a_node_whose_own_lost_event_it_never_read_announces_its_users_too() -> None:
    """Redis took n0's registration of zed and lost it; n1 had applied it,
    n0 not yet (it lagged on the channel).  n0's replica is not past the
    stream's end, but the event Redis took is: n0 announces its users too,
    so n1 drops zed, and a node started afterwards agrees."""
    redis, clock, (n0, n1) = cluster(2)
    n0.user("ann")
    n1.user("bob")
    n0.state.register("zed", Conn(), "-")
    reader = next(c for c in n0.conns if c.subscriber and not c.closed)
    reader.inbox.clear()  # n0 never hears it
    redis.pump()
    assert n1.nicks() == ["ann", "bob", "zed"] and n0.nicks() == ["ann", "bob"]
    _lose_tail(redis, 1)
    n0.cut()
    n1.cut()
    _back(redis, clock, n0, n1)
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert n0.nicks() == n1.nicks() == n2.nicks() == ["ann", "bob"]
    assert n0.lost == n1.lost == 0


def test_a_node_behind_a_lost_tail_still_applies_the_kept_events_it_had_not_read() -> None:
    """A node that had not heard the last kept events when Redis lost the
    ones after them goes on from where it was, not from the stream's end:
    a lobby line and an invitation that the stream kept reach its replica
    too (found in review: it used to jump to the end and skip them)."""
    redis, clock, (n0, n1) = cluster(2)
    n0.user("ann")
    bob = n1.user("bob")
    reader = next(c for c in n0.conns if c.subscriber and not c.closed)
    n1.state.say(bob, "kept message")  # kept in the stream
    n1.state.pair(bob, "ann")  # kept: an invitation to ann
    n0.state.register("zed", Conn(), "-")  # n0's own event: lost
    reader.inbox.clear()  # n0 lags: it heard none of the three
    redis.pump()
    _lose_tail(redis, 1)
    n0.cut()
    n1.cut()
    _back(redis, clock, n0, n1)
    assert any("kept message" in line for line in n0.listener.said())
    assert n0.listener.said() == n1.listener.said()
    invitations = [node.state.hub.online["bob"].outgoing for node in (n0, n1)]
    assert [(i.inviter.nick, i.invitee.nick) for i in invitations if i] == [("bob", "ann")] * 2


def test_a_node_that_sees_a_loss_late_keeps_the_snapshot_written_after_it() -> None:
    """Two nodes see one lost tail: n0 first (it deletes the snapshot as of
    a lost event and writes one after the loss), n1 later (it was cut off).
    n1 must not delete n0's new snapshot (its event is in the stream: it is
    valid; it used to go, being newer than the kept end), so a node started
    then loads it at once rather than waiting for the next one."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    say(n0, ann, "kept", "lost")
    clock.advance(10)  # the heartbeats: a snapshot as of "lost"
    redis.pump()
    stale = json.loads(redis.keys["chat:snapshot"])["id"]
    assert stale == redis.stream[-1][0]
    n1.cut()
    _lose_tail(redis, 1)  # "lost", and the snapshot's event with it
    say(n0, ann, "after")  # n0 sees the loss: deletes the stale snapshot
    for _ in range(15):  # and writes one after the loss a snapshot interval later
        clock.advance(1)
        redis.pump()
    assert redis.deleted == [stale]
    fresh = json.loads(redis.keys["chat:snapshot"])["id"]
    assert id_key(fresh) > id_key(stale) and fresh in [eid for eid, _, _ in redis.stream]
    n1.reachable = True
    for _ in range(100):  # n1's reconnection (within its backoff): it sees the loss
        clock.advance(0.1)
        redis.pump()
        if n1.state.available:
            break
    assert n1.state.available and n1.lost == 0
    assert redis.deleted == [stale]  # n0's snapshot after the loss was not deleted
    kept = json.loads(redis.keys["chat:snapshot"])["id"]
    assert id_key(kept) >= id_key(fresh) and kept in [eid for eid, _, _ in redis.stream]
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert n2.state.replica.last_id == n0.state.replica.last_id
    assert n2.reloaded == 1 and n0.nicks() == n1.nicks() == n2.nicks() == ["ann", "bob"]


def _restart_behind(redis: MemoryRedis, lost: int, behind_ms: int) -> str:
    """Redis loses the stream's last C{lost} entries and comes back with
    only the kept ones and its clock C{behind_ms} behind (set back): the
    next ids start right after the kept end, at or below the lost ones.
    Returns the kept end."""
    _lose_tail(redis, lost)
    end = redis.stream[-1][0]
    redis.last = id_key(end)
    redis.clock_behind_ms = behind_ms
    return end


def test_events_after_a_loss_with_ids_below_the_lost_ones_are_not_skipped() -> None:
    """Redis loses the last events and its clock is set back: the events
    after the loss get ids at or below those the nodes applied.  Each node
    sees from the channel that the first one follows an entry older than
    its last (it is not the copy of one it read): a lost tail, the same
    path as any (its users announced again, nobody told BYE), and the
    events after the loss are applied, not skipped (they used to be, in
    silence: their ids were not above the node's last)."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n0, ann, "kept")
    n1.user("carol")  # lost: applied by both nodes
    say(n0, ann, "lost one", "lost two")
    applied = n0.state.replica.last_id
    end = _restart_behind(redis, 3, 60_000)
    say(n1, bob, "after")  # its id is above the kept end, below the lost ones
    assert id_key(end) < id_key(redis.stream[-1][0]) <= id_key(applied)
    for _ in range(5):
        clock.advance(1)
        redis.pump()
    say(n0, ann, "later")
    assert n0.lost == n1.lost == 0
    for node in (n0, n1):
        assert node.listener.said()[-2:] == ["after", "later"]
    assert sorted(e["n"] for e in redis.events() if e["t"] == "hello") == sorted(
        [n0.state.node, n1.state.node])
    # carol's registration was lost: n1's hello brings her back everywhere.
    n2 = _nobody_told_bye_and_a_new_node_agrees(redis, clock, n0, n1, bob,
                                                ["ann", "bob", "carol"])
    assert n0.state.replica.last_id == n1.state.replica.last_id == n2.state.replica.last_id


def test_an_event_with_the_id_of_a_lost_one_is_not_taken_for_it() -> None:
    """The first event after the loss gets exactly the id of the first lost
    one, and follows the same entry: the node that applied the lost one
    still sees it is another event (its text), not the copy of one it read."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    n0.state.say(ann, "kept")
    n0.state.say(ann, "lost")  # in the same millisecond as the kept end
    redis.pump()
    lost_id = redis.stream[-1][0]
    _restart_behind(redis, 1, 60_000)
    n1.state.say(bob, "after")
    redis.pump()
    assert redis.stream[-1][0] == lost_id  # the same id, after the same entry
    for _ in range(5):
        clock.advance(1)
        redis.pump()
    assert n0.lost == n1.lost == 0
    assert n0.listener.said()[-1] == n1.listener.said()[-1] == "after"
    hellos = [e["n"] for e in redis.events() if e["t"] == "hello"]
    assert sorted(hellos) == sorted([n0.state.node, n1.state.node])


def test_the_channels_copies_of_what_a_node_read_are_no_loss() -> None:
    """A node that read events from the stream (it missed one on the
    channel) gets their copies from the channel afterwards, at or below its
    last: they are skipped as read, not taken for a lost tail (no
    reconnection)."""
    redis, _, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    reader = next(c for c in n1.conns if c.subscriber and not c.closed)
    say(n0, ann, "one")
    n0.state.say(ann, "two")
    reader.inbox.clear()  # n1 never hears "two"
    n0.state.say(ann, "three")
    n0.state.say(ann, "four")
    # n1 hears "three" only, reads the stream (two, three, four); the
    # channel's "four" comes after the read.
    reader.heard(reader.inbox.popleft())
    assert n1.listener.said() == ["one", "two", "three", "four"]
    subscribed = redis.calls["SUBSCRIBE"]
    redis.pump()
    say(n0, ann, "five")
    assert n1.listener.said() == n0.listener.said() == ["one", "two", "three", "four", "five"]
    assert redis.calls["SUBSCRIBE"] == subscribed


def _back_to_a_trimmed_stream() -> tuple[MemoryRedis, Clock, Node, Node, Any]:
    """n1 was cut off while the stream was trimmed past its next events;
    it reconnects, and its read of the stream is held."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("dora")
    n1.cut()
    say(n0, ann, "while away", "trimmed")
    ensureDeferred(n0.log._snapshot(n0.log._cmd, clock.seconds()))
    redis.trim(json.loads(redis.keys["chat:snapshot"])["id"])  # past n1's next events
    redis.hold_catch_ups = True
    n1.reachable = True
    clock.advance(1)  # n1 reconnects: its read of the stream is held
    assert redis.held
    return redis, clock, n0, n1, ann


def test_what_the_channel_brought_before_a_reload_is_no_loss() -> None:
    """A node reading the stream finds its next events trimmed and goes on
    from a snapshot newer than what the channel brought meanwhile: those
    events are in the snapshot, not a lost tail (no second reconnection,
    no second BYE)."""
    redis, clock, n0, n1, ann = _back_to_a_trimmed_stream()
    subscribed = redis.calls["SUBSCRIBE"]
    say(n0, ann, "heard during the read")  # on n1's channel, waiting
    clock.advance(0.1)
    ensureDeferred(n0.log._snapshot(n0.log._cmd, clock.seconds()))  # it holds that one
    redis.hold_catch_ups = False
    while redis.held:
        redis.release()
    redis.pump()
    assert n1.lost == 1  # the one reload: what it missed was trimmed
    assert redis.calls["SUBSCRIBE"] == subscribed  # no reconnection
    say(n0, ann, "after")
    assert n1.lost == 1 and redis.calls["SUBSCRIBE"] == subscribed
    assert n1.listener.said()[-1] == "after"
    assert n0.nicks() == n1.nicks() == ["ann"]


def _reload_with_a_copy_in_flight(after: bool) -> tuple[MemoryRedis, Clock, Node, Node, Any]:
    """n1, back after a cut, finds its next events trimmed and reloads the
    snapshot n0 wrote as of "in flight", whose channel copy is still in
    n1's socket (a node behind): it reaches n1 only after the reload, and
    so does "after the snapshot" (read from the stream meanwhile) if
    C{after}; if not, Redis refuses writes meanwhile (n1's C{dead} for its
    old id is not in the stream either: the snapshot's event is the last
    n1 applied).  Returns once the reload is done, the copies unheard."""
    redis, clock, n0, n1, ann = _back_to_a_trimmed_stream()
    n0.state.say(ann, "in flight")  # published; not handed to n1 yet
    r0 = next(c for c in n0.conns if c.subscriber and not c.closed)
    while r0.inbox:
        r0.heard(r0.inbox.popleft())
    clock.advance(0.1)
    ensureDeferred(n0.log._snapshot(n0.log._cmd, clock.seconds()))  # holds "in flight"
    if after:
        clock.advance(0.1)
        n0.state.say(ann, "after the snapshot")
        while r0.inbox:
            r0.heard(r0.inbox.popleft())
    else:
        redis._append = _refusing  # type: ignore[method-assign,assignment]
    redis.hold_catch_ups = False
    while redis.held:
        redis.release()
    assert n1.lost == 1  # the one reload: what it missed was trimmed
    if not after:
        assert n1.state.replica.last_id == redis.stream[-1][0]
    r1 = next(c for c in n1.conns if c.subscriber and not c.closed)
    assert r1.inbox  # "in flight" reaches n1 only now
    return redis, clock, n0, n1, ann


def _refusing(*args: Any) -> Any:
    return fail(txredisapi.ResponseError("MISCONF disk full"))


def _no_second_loss(redis: MemoryRedis, clock: Clock, n0: Node, n1: Node, ann: Any,
                    subscribed: int, hellos: int) -> None:
    """n1 took no copy for a loss: no reconnection, no snapshot check, no
    hello, no second BYE; and it goes on (a line after is heard once)."""
    for _ in range(3):
        clock.advance(1)
        redis.pump()
    say(n0, ann, "later")
    assert n1.lost == 1
    assert redis.calls["SUBSCRIBE"] == subscribed
    assert redis.calls["drop-lost-snapshot"] == 0
    assert sum(e["t"] == "hello" for e in redis.events()) == hellos
    assert n1.listener.said().count("later") == 1
    assert n1.state.replica.last_id == n0.state.replica.last_id


def test_a_channel_message_still_in_flight_at_a_reload_is_no_loss() -> None:
    """As test_what_the_channel_brought_before_a_reload_is_no_loss, but the
    channel's copy of the event the new snapshot is as of reaches n1 only
    after the reload (and after n1 read the next event from the stream):
    the copy of an event in the snapshot, not a lost tail.  (It was taken
    for one: a reconnection, a rebuild from the snapshot with no entries,
    and the event read after it shown to n1's users twice.)"""
    redis, clock, n0, n1, ann = _reload_with_a_copy_in_flight(after=True)
    subscribed = redis.calls["SUBSCRIBE"]
    redis.pump()
    assert n1.listener.said().count("after the snapshot") == 1  # shown once to n1's users
    _no_second_loss(redis, clock, n0, n1, ann, subscribed, hellos=0)


def test_the_copy_of_the_reloaded_snapshot_s_own_event_is_no_loss() -> None:
    """The same with nothing after the snapshot: the last event n1 applied
    is the snapshot's (n1 reads it from the stream as it loads)."""
    redis, clock, n0, n1, ann = _reload_with_a_copy_in_flight(after=False)
    subscribed = redis.calls["SUBSCRIBE"]
    redis.pump()
    del redis._append  # Redis takes writes again
    _no_second_loss(redis, clock, n0, n1, ann, subscribed, hellos=0)


def test_someone_else_s_message_below_the_last_event_applied_is_no_loss() -> None:
    """A message on the channel, at or below the last event applied, that
    the stream does not hold, while the stream still holds that last event:
    someone else's message, dropped (it was taken for a lost tail)."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    say(n0, ann, "one", "two")
    first, last = redis.stream[-2][0], redis.stream[-1][0]
    subscribed = redis.calls["SUBSCRIBE"]
    redis.publish(f'{first} {last} {{"t":"say","n":"x","k":1,"u":"{first}","x":"forged"}}')
    for _ in range(3):
        clock.advance(1)
        redis.pump()
    say(n0, ann, "three")
    assert n0.listener.said() == n1.listener.said() == ["one", "two", "three"]
    assert redis.calls["SUBSCRIBE"] == subscribed and n0.lost == n1.lost == 0
    assert [e for e in redis.events() if e["t"] == "hello"] == []


def test_a_loss_seen_while_the_stream_holds_the_last_event_applied_rebuilds_nothing() -> None:
    """Whatever showed a lost tail (here a false alarm, straight), a node
    whose last applied event the stream still holds (the same id, after
    the same entry, the same text) lost nothing it applied: it does not
    rebuild from an end below it (it would apply again, out loud, what it
    applied after that end) and announces nothing.  It asks Redis for that
    event once (not again to see whether another event has its id)."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    say(n0, ann, "one", "two")
    end = redis.stream[-3][0]  # before "one"
    applied = n1.state.replica.last_id
    reads: list[tuple[Any, ...]] = []
    xrange = redis._xrange

    def recorded(*args: Any) -> Any:
        reads.append(args[1:])
        return xrange(*args)

    redis._xrange = recorded  # type: ignore[method-assign]
    n1.log.reading._tail_gone(n1.log._generation, applied, end, "a false alarm")
    for _ in range(3):
        clock.advance(1)
        redis.pump()
    say(n0, ann, "three")
    assert n1.listener.said() == n0.listener.said() == ["one", "two", "three"]
    assert reads.count((applied, applied)) == 1
    assert redis.calls["drop-lost-snapshot"] == 0
    assert [e for e in redis.events() if e["t"] == "hello"] == []
    assert n0.lost == n1.lost == 0


def test_a_node_back_after_a_loss_sees_its_last_id_taken_by_another_event() -> None:
    """Redis restarts without the last two events and with its clock set
    back: n0 comes back first and appends under the very ids the lost
    events had, so n1's last id is in the stream again, another event
    under it, and the next one follows it.  n1, back, compares the entry
    under its last id with the one it applied: a lost tail (its users
    announced again, nobody told BYE), and it applies what came after,
    rather than going on as if nothing was lost (and skipping it)."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    # All in one millisecond: the ids after the loss are the lost ones'.
    n0.state.say(ann, "kept")
    n1.state.say(bob, "lost one")
    n0.state.say(ann, "lost two")
    redis.pump()
    applied = n1.state.replica.last_id
    n0.cut()
    n1.cut()  # the restart
    _restart_behind(redis, 2, 60_000)
    n0.reachable = True
    for _ in range(3):  # n0 back: it announces its users, under "lost one"'s id
        clock.advance(1)
        redis.pump()
    n0.state.say(now(ann), "after one")  # under "lost two"'s id: n1's last
    n0.state.say(now(ann), "after two")
    redis.pump()
    assert redis.stream[-2][0] == applied
    assert n1.state.replica.last_id == applied
    _back(redis, clock, n1)
    assert n0.lost == n1.lost == 0
    assert n1.listener.said()[-2:] == n0.listener.said()[-2:] == ["after one", "after two"]
    assert n1.state.node in [e["n"] for e in redis.events() if e["t"] == "hello"]
