"""
Reading the cluster's stream and channel, and what a node does when Redis
lost data: the part of the node's log (L{redislog.RedisLog}) that follows
the stream into its replica.  At each connection L{StreamReader.restore}
checks that Redis still has what the replica applied (its epoch, the
stream's last entries) and, on the first, loads the snapshot and the
history; then the channel's events are applied in order
(L{StreamReader.hear}), the stream read first whenever one does not follow
the last applied (L{StreamReader.catch_up}).  When Redis lost events (a
new epoch, or the stream's last ones), the replica is rebuilt from what
Redis kept, or the node goes on as a new one when what it missed was
trimmed.  How: redislog's docstring ("Reading"), docs/cluster.md ("What
is guaranteed").

It knows its RedisLog only as a L{Host}: the connection and its
generation, a reconnection, the outbox's events Redis took, and the
C{hello} that goes ahead of what the node still has to send.
"""

from __future__ import annotations

import json
import random
from collections import deque
from typing import Any, Protocol

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from twisted_chat.server import logs
from twisted_chat.server.cluster.doubts import Doubts
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.pruning import Pruning
from twisted_chat.server.cluster.redisconfig import Unclaimed
from twisted_chat.server.cluster.redishistory import HISTORY, history_entry
from twisted_chat.server.cluster.redisstream import (
    DROP_LOST_SNAPSHOT,
    EPOCH,
    SNAPSHOT,
    STREAM,
    entry_content,
    follows,
    follows_id,
)
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.history import Entry, MessageStore

__all__ = ["READ_COUNT", "Host", "StreamReader"]

# The node's log's logger: these lines were RedisLog's before they moved
# here, and an operator's filter may match its namespace.
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")

READ_COUNT = 2000


class Host(Protocol):
    """What the reader needs of the node's log (L{redislog.RedisLog})."""

    @property
    def generation(self) -> int:
        """The connection's generation (a new one at each connection and
        loss): what was started on an older one is dropped."""

    @property
    def connection(self) -> Any:
        """The command connection, or None while Redis is out of reach."""

    @property
    def last_taken(self) -> str | None:
        """The id of the last event of this node's that Redis took."""

    def lost(self, generation: int, why: str = "connection lost") -> None:
        """The connection of C{generation} is lost (C{why}): reconnect."""

    def wrong_database(self, failure: Any, generation: int) -> bool:
        """Whether C{failure} says the database is not one the node can run
        on (then taken as a lost connection)."""

    def taken_events(self) -> list[tuple[object, str, str]]:
        """This node's commands waiting for a decision whose events Redis
        took: (the ticket, the id Redis gave it, the event)."""

    def appends_sent(self) -> bool:
        """Whether an event of this node's is sent and not acknowledged."""

    def drop_lost_history(self, end: str | None) -> None:
        """Redis lost the events after C{end} (C{None}: all): the history
        writes queued for them are dropped."""

    def announce(self, users: list[list[Any]] | None) -> None:
        """After a loss: this node's C{hello} (C{users}, or as the replica
        has them) goes ahead of what it still has to send."""

    def history_store(self) -> MessageStore:
        """The history's store for the replica's hub (the log writes it)."""


class StreamReader:
    """
    The replica's way through the stream: what the channel brought and is
    not applied yet, what was read from the stream, the last entry applied;
    and what was loaded (C{started}, the epoch).  C{state}: the node,
    C{host}: its log.
    """

    def __init__(self, host: Host, state: ClusterState, reactor: IReactorTime, channel: str,
                 pruning: Pruning, doubts: Doubts) -> None:
        self.host = host
        self.state = state
        self.reactor = reactor
        self.channel = channel
        self.pruning = pruning
        self.doubts = doubts
        self.epoch: str | None = None
        self.started = False  # the snapshot has been loaded
        self._loaded_id: str | None = None  # the event it was loaded as of
        # Whether an event of this node's was sent since the snapshot was loaded.
        self.sent_since_load = False
        # The stream's last entry, when a read found that Redis lost the
        # events after it (see _tail_lost).
        self._lost_tail: str | None = None
        # Events heard on the channel, not applied yet: (the id each follows,
        # its id, its text), in the channel's order.
        self._heard: deque[tuple[str, str, str]] = deque()
        # The entries this node applied from the stream whose copies the
        # channel may still bring (the id each follows and its text, by
        # id, in the stream's order): the only events at or below the last
        # one applied that the channel may bring (see _apply_heard).
        self._read: dict[str, tuple[str, str]] = {}
        # The last entry applied (its id, the id it follows, its text): is
        # it still the stream's (see _lost_after)?
        self.applied: tuple[str, str, str] | None = None
        self._catching_up = False  # reading the stream; the channel waits
        # Whether the replica has caught up with the stream since the
        # connection (re)opened: its snapshots are written only then.
        self.caught_up = False

    def reset(self) -> None:
        """A connection opens: what the channel brings waits until the
        stream has been read."""
        self._heard.clear()
        self._read.clear()
        self._catching_up, self.caught_up = True, False

    # -- at each connection: what Redis kept, loading ----------------------------------

    async def restore(self, cmd: Any) -> Unclaimed | None:
        """At each connection (C{cmd}, its command connection, the database
        checked): that Redis still has the cluster's data (else the
        recovery, L{_tail_lost} or a new epoch), the cluster's retention
        (L{Pruning.agree}: the fields Redis refused to record, returned);
        on the first, load the snapshot and the history."""
        epoch = await cmd.execute_command("GET", EPOCH)
        if epoch is None:
            # Written only where there is none: Redis out of memory refuses
            # the write even where NX would skip it, and a node must
            # reconnect to a full Redis (its heartbeats' trims free it).
            await cmd.execute_command("SET", EPOCH, "%016x" % random.getrandbits(64), "NX")
            epoch = await cmd.execute_command("GET", EPOCH)
        if self.epoch is not None and epoch != self.epoch:
            _log.error(
                "cluster: Redis lost its data (a new epoch); this node rebuilds its state "
                "from nothing, announces its users again, and resends what it had not had "
                "acknowledged"
            )
            # The new stream starts from scratch (no dead node ids either),
            # and so does every replica: what Redis kept is nothing.  What
            # this node still has to send goes after its users' list.
            self._lost_tail = None
            await self._answer_lost(cmd, None)
            self.host.drop_lost_history(None)
            history = self.state.replica.hub.history
            store = self.host.history_store()
            self.host.announce(self.state.rebuild(None, [], lambda: history.attach(store, [])))
        elif self.started:
            lost, self._lost_tail = self._lost_tail, None
            held = lost is not None and await self._holds_applied(cmd)
            if held:
                # The stream still holds the last event this replica
                # applied: whatever showed a loss, nothing it applied is
                # lost (rebuilt from an end below it, it would apply its
                # last events again, out loud).  Its own events Redis took
                # are checked as on any reconnection.
                _log.warn("cluster: the stream still holds event {last}, the last this "
                          "node applied: no loss", last=self.state.replica.last_id)
                lost = None
            if lost is None:
                # The last event the replica applied, or the last of this
                # node's that Redis took (the node may not have read it yet).
                reached = max(self.state.replica.last_id, self.host.last_taken or "0-0", key=id_key)
                lost = await self._lost_after(cmd, reached, held)
            if lost is not None:
                await self._tail_lost(cmd, lost)
        self.epoch = epoch
        unclaimed = await self.pruning.agree(cmd, self.started)
        if not self.started:
            await self._load(cmd)
        return unclaimed

    async def _lost_after(self, cmd: Any, reached: str, held: bool) -> str | None:
        """If the stream lost entry C{reached} (Redis lost its last events),
        the last entry it kept before it; else C{None} (it is there, or it
        was trimmed: the stream goes on after it as it went on then).
        C{held}: the stream was just found to hold the last event the
        replica applied (L{_holds_applied}), which is not read again."""
        if reached == "0-0":
            return None
        applied = self.applied
        if not held and applied is not None and applied[0] == reached:
            at = await cmd.execute_command("XRANGE", STREAM, reached, reached)
            if at and entry_content(at[0]) != applied[1:]:
                # Another event under the id of the last one this node
                # applied (the events after a loss got ids at or below the
                # lost ones: Redis's clock set back, a failover): the stream
                # goes on after the one that event follows.
                return follows_id(at[0]) or "0-0"
        after = await cmd.execute_command("XRANGE", STREAM, "(" + reached, "+", "COUNT", 1)
        if after:
            prev = follows_id(after[0])
            return prev if prev is not None and id_key(prev) < id_key(reached) else None
        tail = await cmd.execute_command("XREVRANGE", STREAM, "+", "-", "COUNT", 1)
        end = str(tail[0][0]) if tail else "0-0"
        return end if id_key(end) < id_key(reached) else None

    async def _tail_lost(self, cmd: Any, end: str) -> None:
        """
        Redis lost the stream's last events, its epoch kept (a crash lost
        the last second that C{appendfsync everysec} had not written, say):
        the stream goes on after C{end}, the last entry it kept.  A replica
        that applied events after it is rebuilt from what Redis kept (the
        snapshot at or before C{end}, the stream up to it), as a node
        starting now builds it: every replica is then the same function of
        what Redis kept (L{ClusterState.rebuild}).  One that had not read up
        to C{end} applied nothing that was lost: it applies the kept events
        it has not read first.  Either way this node's users stay, and a
        C{hello} (before anything it still has to resend) makes every
        replica's view of them this node's.
        """
        replica = self.state.replica
        _log.error(
            "cluster: Redis lost the stream's last events (this node applied {last}, the "
            "stream ends at {end}); this node rebuilds its state from what Redis kept, "
            "announces its users again, and resends what it had not had acknowledged",
            last=replica.last_id, end=end,
        )
        # A snapshot as of a lost event (kept while the events were not:
        # not with an append-only file) would stop every node from starting;
        # one another node wrote after the loss is kept (DROP_LOST_SNAPSHOT).
        await cmd.execute_command("EVAL", DROP_LOST_SNAPSHOT, 2, SNAPSHOT, STREAM, end)
        await self._answer_lost(cmd, end)
        self.host.drop_lost_history(end)
        self._loaded_id = None
        users = None
        if id_key(replica.last_id) > id_key(end):
            kept = await self._kept_state(cmd, end)
            if kept is None:
                _log.error(
                    "cluster: what Redis kept cannot be read back (no snapshot at or "
                    "before {end}, and the stream does not start at the beginning): this "
                    "node goes on with its state; the nodes may disagree on what the lost "
                    "events did", end=end,
                )
                replica.lost_tail(end)
            else:
                snapshot, entries, lines = kept
                history, store = replica.hub.history, self.host.history_store()
                # Attached inside the rebuild: what this node's users missed
                # of the history before is noted first.
                users = self.state.rebuild(snapshot, entries,
                                           lambda: history.attach(store, lines))
        else:
            replica.afterloss.lost_unapplied()
            await self._read_kept(cmd, end)
        self.host.announce(users)

    async def _answer_lost(self, cmd: Any, end: str | None) -> None:
        """
        Redis lost the stream's events after C{end} (C{None}: all of them, a
        new epoch): this node's commands among them that it had taken (it
        acknowledged them, so nothing resends them) and the replica had not
        applied yet are answered now (L{ClusterState.lost_commands}), never
        left waiting for a decision no replica will make.  One taken after
        C{end} that the stream still has (taken after the loss, on a
        connection that outlived it) is not lost: the catch-up applies it
        (each is looked up by its id, all at once: one round trip).  After a
        new epoch, one the stream has was taken after Redis lost its data
        (a C{FLUSHALL}, before this node saw it): it is lost all the same
        (its user is unknown to every replica until this node's hello,
        which comes after it), but nobody saw it, and its answer says so.
        """
        # Not written yet, or not acknowledged: resent.  At or before the
        # kept end: applied, or to be.
        taken = [(ticket, eid, event) for ticket, eid, event in self.host.taken_events()
                 if end is None or id_key(eid) > id_key(end)]
        after: list[object] = []
        if taken:
            found = await defer.gatherResults(
                [cmd.execute_command("XRANGE", STREAM, eid, eid) for _, eid, _ in taken],
                consumeErrors=True,
            )
            after = [ticket for (ticket, _, event), at in zip(taken, found, strict=True)
                     if at and entry_content(at[0])[1] == event]
        lost = [ticket for ticket, _, _ in taken]
        if end is not None:
            lost, after = [ticket for ticket in lost if ticket not in after], []
        if lost:
            _log.error(
                "cluster: Redis lost {n} commands of this node's users after taking them; "
                "they are answered as not taking effect", n=len(lost),
            )
            self.state.lost_commands(lost, after)

    async def _kept_state(
        self, cmd: Any, end: str,
    ) -> tuple[dict[str, Any] | None, list[tuple[str, dict[str, Any]]], list[Entry]] | None:
        """What Redis kept up to C{end}: the snapshot at or before it (or
        none), the stream's entries after the snapshot up to C{end}, and the
        history before them, as a node starting now reads them; C{None} if
        the stream does not go back to the snapshot (or to its start), or
        does not go on from it to C{end} without a gap.

        A snapshot past C{end} is one a node that saw the loss first wrote
        after it (one as of a lost event was just dropped): it is what Redis
        kept as of an event after the loss, and every replica had that state
        there; it is taken with no entries (the catch-up reads on from it),
        unless it holds an event of this node's still waiting for its
        answer (which would never come: C{None})."""
        snapshot = await cmd.execute_command("GET", SNAPSHOT)
        data = json.loads(snapshot) if snapshot else None
        upto = str(data["id"]) if data is not None else "0-0"
        if data is not None and id_key(upto) > id_key(end):
            k = self.state.first_waiting()
            if k is not None and k <= int(data["k"].get(self.state.node, 0)):
                return None
            return data, [], await self._history_entries(cmd, upto)
        entries: list[tuple[str, dict[str, Any]]] = []
        last = upto
        while id_key(last) < id_key(end):
            page = await self._kept_page(cmd, last, end)
            if not page:
                return None  # the stream does not go on from there up to the end
            entries += page
            last = page[-1][0]
        if last != end:
            return None  # the kept end is not in the stream (deleted meanwhile)
        return data, entries, await self._history_entries(cmd, upto)

    async def _read_kept(self, cmd: Any, end: str) -> None:
        """Apply the kept events up to C{end} that this replica has not read
        (it lagged when Redis lost what came after), so that its hello lists
        its users as of the kept end.  (Trimmed past its last one: the
        catch-up after this sees it.)"""
        while id_key(self.state.replica.last_id) < id_key(end):
            page = await self._kept_page(cmd, self.state.replica.last_id, end)
            if not page:
                return
            self.state.deliver(page)

    async def _kept_page(self, cmd: Any, last: str, end: str) -> list[tuple[str, dict[str, Any]]]:
        """The stream's next entries after C{last} up to C{end} (at most
        L{READ_COUNT}), parsed; none if the first one after C{last} does not
        follow it (trimmed or deleted past it) or is past C{end}."""
        rows = await cmd.execute_command("XRANGE", STREAM, "(" + last, "+",
                                         "COUNT", READ_COUNT)
        if not rows or not follows(rows[0], last):
            return []
        return [(str(eid), self._parse(str(eid), fields[1])) for eid, fields in rows
                if id_key(str(eid)) <= id_key(end)]

    async def _load(self, cmd: Any) -> None:
        """The snapshot and the history, into an empty replica."""
        replica = self.state.replica
        snapshot = await cmd.execute_command("GET", SNAPSHOT)
        data = json.loads(snapshot) if snapshot else None
        upto = str(data["id"]) if data is not None else "0-0"
        first = await cmd.execute_command("XRANGE", STREAM, "(" + upto, "+", "COUNT", 1)
        if first and not follows(first[0], upto):
            raise ConnectionError(
                "the snapshot is older than the stream; retrying" if snapshot
                else "the stream was trimmed and no snapshot is there yet"
            )
        # The snapshot's event, as the stream has it: what this replica
        # applies last (see _holds_applied, _lost_after).
        at = await cmd.execute_command("XRANGE", STREAM, upto, upto) if data else []
        self.applied = (upto, *entry_content(at[0])) if at else None
        # The history first: the users the snapshot brings online are shown
        # to the listener, which may cache what a newcomer is sent.  Nothing
        # past --retain-days is shown, as one server's start-up shows none.
        await self.pruning.prune(cmd, self.reactor.seconds(), start=True)
        await self._load_history(cmd, upto)
        if data is not None:
            replica.restore(data)
        self.state.connections.reloaded()
        self.started = True
        self._loaded_id = replica.last_id
        self.sent_since_load = self.host.appends_sent()
        _log.info(
            "cluster: state loaded as of event {id}: {n} users online",
            id=replica.last_id, n=len(replica.members),
        )
        await self._check_loaded(cmd)

    async def _check_loaded(self, cmd: Any) -> None:
        """What the snapshot just loaded says of this node: that it was
        declared dead (it goes on under a new id), or that it applied an
        event of this node's that the node has not read back (its answer
        would never come; the node goes on as one that missed events)."""
        state, replica = self.state, self.state.replica
        if state.node in replica.dead:
            state.lost()
            return
        k = state.first_waiting()
        if k is not None and k <= replica.last_k.get(state.node, 0):
            _log.error(
                "cluster: the snapshot holds event {k} of this node's ({node}), which it "
                "never read back; starting again from the snapshot", k=k, node=state.node,
            )
            self.started = self.caught_up = False
            state.missed()
            await self._load(cmd)

    async def _load_history(self, cmd: Any, upto: str) -> None:
        """The history, as of event C{upto}, into the replica's hub."""
        self.state.replica.hub.history.attach(
            self.host.history_store(), await self._history_entries(cmd, upto))

    async def _history_entries(self, cmd: Any, upto: str) -> list[Entry]:
        """The newest lobby messages of the history (as many as this node
        shows) at or before event C{upto}: those before the snapshot of
        C{upto} (the stream has those after it)."""
        size = self.state.replica.hub.history.size
        if not size:
            return []
        top = id_key(upto)
        rows = await cmd.execute_command(
            "ZREVRANGEBYSCORE", HISTORY, top[0], "-inf", "WITHSCORES", "LIMIT", 0, size + 64,
        )
        found: dict[tuple[int, int], Entry] = {}
        for member, score in zip(rows[::2], rows[1::2], strict=False):
            seq, nick, text = history_entry(str(member))
            key = (int(float(score)), seq)
            if key > top and upto != "0-0":
                continue
            # One event's line once, also if written in both forms (by nodes
            # of two versions during a rolling upgrade).
            found[key] = Entry(key[0] / 1000.0, nick, text)
        return [found[key] for key in sorted(found)[-size:]]

    # -- reading -------------------------------------------------------------------

    def hear(self, message: str, generation: int) -> None:
        """An event published on the channel: C{<the id it follows> <its id> <event>}."""
        if generation != self.host.generation:
            return
        prev, _, rest = str(message).partition(" ")
        eid, _, text = rest.partition(" ")
        try:
            id_key(prev), id_key(eid)
        except ValueError:
            _log.warn("cluster: skipped a malformed message on {channel}",
                      channel=self.channel)
            return
        self._heard.append((prev, eid, text))
        if not self._catching_up:
            self._apply_heard(generation)

    def _apply_heard(self, generation: int, read: bool = False) -> None:
        """
        Apply what the channel brought, in its order, as long as each event
        follows the last one applied; one that does not (the node missed
        one: published while it was not subscribed yet, say) sends it to
        the stream first.  What it has applied already is skipped.

        @param read: the stream has just been read to its end: what was
            published after that read follows it, so an event that does not
            is not the stream's (someone else's on the channel), and is
            dropped rather than read for again and again.
        """
        heard = self._heard
        last = id_key(self.state.replica.last_id)
        batch = []
        behind: tuple[str, str, str] | None = None
        while heard:
            prev, eid, text = heard[0]
            key = id_key(eid)
            if key <= last:
                if not self._read_already(eid, prev, text):
                    behind = (prev, eid, text)
                    break
                heard.popleft()  # read from the stream already
                continue
            if id_key(prev) != last:
                if not read:
                    break
                heard.popleft()
                _log.warn("cluster: skipped event {eid} heard on {channel}: it is not "
                          "in the stream", eid=eid, channel=self.channel)
                continue
            heard.popleft()
            batch.append((eid, self._parse(eid, text)))
            self.applied = (eid, prev, text)
            last = key
            # The channel is past what was read: none of it comes again.
            self._read.clear()
        if batch:
            self.state.deliver(batch)
        if behind is not None:
            # An event at or below the last one applied that is not the
            # copy of one read: the copy of one a snapshot loaded since
            # brought (still in the socket when it was loaded), or the
            # stream's tail that this node applied is gone and the events
            # after the loss got ids at or below it (Redis's clock set
            # back, a failover).  The stream tells which; the channel
            # waits meanwhile.
            self._catching_up = True
            d = defer.ensureDeferred(self._check_behind(generation, *behind, read))
            d.addErrback(self._read_failed, generation)
            return
        if heard and not self._catching_up:
            self.catch_up(generation)

    async def _check_behind(self, generation: int, prev: str, eid: str, text: str,
                            read: bool) -> None:
        """
        The channel brought event C{eid} (after C{prev}), at or below the
        last one applied, and not the copy of one read from the stream.  If
        the stream still holds the last event this replica applied, nothing
        it applied was lost (the stream's ids only grow: an event after a
        loss cannot come before one the stream kept): C{eid} is the copy of
        an event a reloaded snapshot holds (or someone else's message), and
        is skipped.  Else Redis lost the stream's tail (L{_tail_gone}).
        Off the normal path: losses are rare, and so are such copies.
        """
        cmd = self.host.connection
        if cmd is None or generation != self.host.generation:
            return
        last = self.state.replica.last_id
        if not await self._holds_applied(cmd):
            if generation == self.host.generation:
                self._tail_gone(generation, last, prev,
                                f"event {eid} after {prev}, at or below it")
            return
        found = await cmd.execute_command("XRANGE", STREAM, eid, eid)
        if generation != self.host.generation:
            return
        self._heard.popleft()
        if not found or entry_content(found[0]) != (prev, text):
            _log.warn("cluster: skipped event {eid} heard on {channel}: it is not "
                      "in the stream", eid=eid, channel=self.channel)
        self._catching_up = False
        self._apply_heard(generation, read)

    async def _holds_applied(self, cmd: Any) -> bool:
        """Whether the stream still holds the last event this replica
        applied: the same id, after the same entry, the same text (each
        entry names the one it follows, so the stream up to it is what the
        replica applied).  False when the replica does not know that
        event's text (its last came otherwise: a rebuild)."""
        applied = self.applied
        last = self.state.replica.last_id
        if applied is None or applied[0] != last:
            return False
        at = await cmd.execute_command("XRANGE", STREAM, last, last)
        return bool(at) and entry_content(at[0]) == applied[1:]

    def _read_already(self, eid: str, prev: str, text: str) -> bool:
        """Whether an event the channel brings, at or below the last one
        applied, is the copy of one this node read from the stream (the same
        id, following the same one, the same text); what was read up to it
        is forgotten (the channel brings the rest after it)."""
        read = self._read
        if read.get(eid) != (prev, text):
            return False
        while read:
            first = next(iter(read))
            del read[first]
            if first == eid:
                break
        return True

    def catch_up(self, generation: int) -> None:
        """Read the stream from the replica's last event on; the channel's
        events wait meanwhile, and are applied after it."""
        self._catching_up = True
        d = defer.ensureDeferred(self._read_stream(generation))
        d.addErrback(self._read_failed, generation)

    async def _read_stream(self, generation: int) -> None:
        while True:
            cmd = self.host.connection
            if cmd is None or generation != self.host.generation:
                return
            last = self.state.replica.last_id
            entries = await cmd.execute_command(
                "XRANGE", STREAM, "(" + last, "+", "COUNT", READ_COUNT,
            )
            if generation != self.host.generation:
                return
            prev = follows_id(entries[0]) if entries else None
            if prev is not None and id_key(prev) < id_key(last):
                # The first entry after the replica's last follows an older
                # one: Redis lost the replica's last events (a crash lost
                # the stream's tail, entries deleted).
                self._tail_gone(generation, last, prev, "the stream goes on")
                return
            if prev is not None and id_key(prev) != id_key(last):
                # The events between the replica's last and this one are
                # gone from the stream (trimmed).
                if last == self._loaded_id and not self.sent_since_load:
                    # Nothing applied since the snapshot was loaded, nor
                    # sent (nothing of this node's can be in what was
                    # trimmed): the snapshot is older than the stream
                    # (trimmed meanwhile); load a newer one (_load then
                    # checks what it says of this node).
                    self.state.replica.clear()
                    self.started = False
                    raise ConnectionError("the snapshot is older than the stream; retrying")
                await self._missed(cmd, last, str(entries[0][0]), prev)
                # What the channel brought so far is in the snapshot loaded
                # or in the stream read next: none of it is news.
                self._heard.clear()
                continue
            batch = [(str(eid), self._parse(str(eid), fields[1])) for eid, fields in entries]
            for eid, fields in entries:
                self._read[str(eid)] = (follows_id([eid, fields]) or "", str(fields[1]))
                self.applied = (str(eid), *self._read[str(eid)])
            if batch:
                self.state.deliver(batch)
            if len(entries) < READ_COUNT:
                break
        self._catching_up = False
        self.caught_up = True
        self._apply_heard(generation, read=True)

    def _tail_gone(self, generation: int, last: str, prev: str, seen: str) -> None:
        """
        Redis lost the stream's events after C{prev} that this replica
        applied (up to C{last}): announce this node's users again, on a new
        connection (see L{restore}).  C{seen}: what showed it.
        """
        self._lost_tail = prev
        why = (f"Redis lost the stream's last events (this node applied {last}, {seen} "
               f"after {prev}); reconnecting to announce its users again")
        _log.warn("cluster: {why}", why=why)
        self.host.lost(generation, why)

    def _parse(self, eid: str, text: object) -> dict[str, Any]:
        try:
            event = json.loads(str(text))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            _log.warn("cluster: skipped a malformed event {eid}", eid=eid)
            return {}
        return event

    async def _missed(self, cmd: Any, last: str, first: str, prev: str) -> None:
        """
        The replica's next events are gone (the stream was trimmed past its
        last one while this node was cut off or behind, or, just after a
        load, the part trimmed may hold something of this node's): it
        cannot be trusted.  The node goes on as a new one from the snapshot
        (see L{ClusterState.missed}: its users are told C{BYE}).
        """
        _log.error(
            "cluster: events this node never read were trimmed from the stream (it was "
            "cut off or behind for longer than the stream keeps events): it applied "
            "{last}, the stream now goes on only at {first}, which follows {prev}; "
            "starting again from the snapshot", last=last, first=first, prev=prev,
        )
        self.started = self.caught_up = False
        self.state.missed()
        await self._load(cmd)
        # The refusals in doubt whose stream end the snapshot is past are
        # settled now, not at the next event applied (in a quiet cluster
        # there may be none for long; and while Redis refuses writes, there
        # is none).  A rebuild (L{_tail_lost}) needs no such call: it is
        # made on a new connection, which asks every doubt's end again.
        self.doubts.settle()

    def _read_failed(self, failure: Any, generation: int) -> None:
        if generation != self.host.generation or failure.check(txredisapi.ConnectionError):
            return  # the connection went: _lost has it
        if self.host.wrong_database(failure, generation):
            return
        if failure.check(ConnectionError):
            _log.warn("cluster: {why}", why=failure.getErrorMessage())
            self.host.lost(generation, failure.getErrorMessage())
            return
        _log.failure("cluster: reading the stream failed", failure)
        self.host.lost(generation)
