"""
L{ClusterState}: the connection layer's L{ChatState} in cluster mode.

A command becomes an event handed to the L{EventLog}; it is decided when the
log hands it back and the L{Replica} applies it, and the C{Deferred} the
command returned fires then (with the hub's error, if any, as a failure).
This module knows nothing of Redis: the log is whatever delivers the cluster's
events in one order (L{twisted_chat.server.cluster.redislog} in production, a
list in the unit tests).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twisted_chat.server.cluster.replica import Replica
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, Listener, User
from twisted_chat.server.state import Outcome, StateUnavailable

__all__ = ["ClusterState", "EventLog"]

# An invitation's expiry is applied by the first event past its time; the
# node appends a tick this long after it falls due (and never more often).
TICK_SLACK = 0.02


class EventLog(Protocol):
    def append(self, event: str) -> None:
        """Append C{event} (JSON) to the cluster's log; in order, never lost
        while this process lives (resent after a reconnection if need be)."""


class ClusterState:
    log = Logger()

    def __init__(
        self,
        node: str,
        listener: Listener,
        history: History,
        hub_options: dict[str, Any],
        reactor: IReactorTime,
    ) -> None:
        """@param hub_options: the L{Hub}'s keyword arguments (all replicas
        of a cluster must be given the same)."""
        self.node = node
        self.reactor = reactor
        self.invite_timeout = float(hub_options.get("invite_timeout", 60.0))
        self.replica = Replica(node, listener, history, self, hub_options)
        self.hub: Hub = self.replica.hub
        self.events: EventLog | None = None
        #: Whether new users may register (the log is reachable).
        self.available = False
        #: Called when the cluster has declared this node dead.
        self.on_lost: Callable[[], None] = lambda: None
        self.closing = False
        self._k = 0
        self._pending: dict[int, tuple[Any, Deferred[Any]]] = {}
        self._tick_call: IDelayedCall | None = None
        self._tick_due: float | None = None

    # -- the commands (ChatState) ---------------------------------------------

    def _append(self, event: dict[str, Any]) -> int:
        assert self.events is not None, "no event log attached"
        self._k += 1
        event["n"] = self.node
        event["k"] = self._k
        self.events.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
        return self._k

    def _ask(self, event: dict[str, Any], conn: Any) -> Deferred[Any]:
        k = self._append(event)
        d: Deferred[Any] = Deferred()
        self._pending[k] = (conn, d)
        return d

    def register(self, nick: str, conn: Any, address: str, source: str = "") -> Deferred[User]:
        if not self.available or self.closing:
            return fail(StateUnavailable())
        return self._ask({"t": "reg", "nick": nick, "a": address, "s": source}, conn)

    def leave(self, user: User, reason: str, text: str = "") -> None:
        uid = self.replica.uids.get(user)
        if uid is None or self.closing:
            return  # gone already, or this whole node is leaving (see stop)
        self._append({"t": "leave", "u": uid, "r": reason, "x": text})

    def _command(self, user: User, event: dict[str, Any]) -> Outcome:
        uid = self.replica.uids.get(user)
        if uid is None:
            return None  # the cluster has taken this user offline meanwhile
        event["u"] = uid
        return self._ask(event, user.conn)

    def say(self, user: User, text: str) -> Outcome:
        return self._command(user, {"t": "say", "x": text})

    def direct(self, user: User, nick: str, text: str) -> Outcome:
        return self._command(user, {"t": "dm", "to": nick, "x": text})

    def pair(self, user: User, nick: str) -> Outcome:
        return self._command(user, {"t": "pair", "to": nick, "it": self.invite_timeout})

    def accept(self, user: User, nick: str) -> Outcome:
        return self._command(user, {"t": "acc", "to": nick})

    def reject(self, user: User, nick: str) -> Outcome:
        return self._command(user, {"t": "rej", "to": nick})

    def unpair(self, user: User) -> Outcome:
        return self._command(user, {"t": "unp"})

    # -- what the log and the node's own machinery call ----------------------

    def deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Apply events, in the log's order."""
        apply = self.replica.apply
        for eid, event in batch:
            apply(eid, event)
        self._schedule_tick()

    def node_dead(self, node: str) -> None:
        """Tell the cluster that C{node} is gone (idempotent: a second
        C{dead} for the same node finds nobody left)."""
        self._append({"t": "dead", "node": node})

    def hello(self) -> None:
        """Redis lost its data: tell the new log who this node's users are
        (before anything this node still has to resend)."""
        self._append({"t": "hello", "users": self.replica.local_users()})

    def stopping(self) -> None:
        """
        This node stops cleanly: its users leave the cluster at once, in one
        event (C{LEFT <nick> disconnected} for the others), and no more
        commands are taken.
        """
        if not self.closing:
            self.closing = True
            self._append({"t": "dead", "node": self.node})

    def _schedule_tick(self) -> None:
        due = self.replica.next_due()
        if due is None or self.closing:
            return
        if self._tick_call is not None and self._tick_call.active():
            if self._tick_due is not None and self._tick_due <= due:
                return
            self._tick_call.cancel()
        delay = max(due - self.replica.clock.seconds(), 0.0) + TICK_SLACK
        self._tick_due = due
        self._tick_call = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        self._tick_due = None
        if self.available and not self.closing:
            self._append({"t": "tick"})

    def cancel_timers(self) -> None:
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None

    # -- Answers (the replica about this node's events) ------------------------

    def conn_for(self, k: int) -> Any:
        entry = self._pending.get(k)
        return None if entry is None else entry[0]

    def decided(self, k: int, result: object) -> None:
        entry = self._pending.pop(k, None)
        if entry is None:
            return
        d = entry[1]
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)

    def orphaned(self, user: User) -> None:
        self.leave(user, "disconnected")

    def lost(self) -> None:
        if not self.closing:
            old, self.node = self.node, new_node_id()
            self.replica.node = self.node
            self.log.error(
                "the cluster declared this node ({old}) dead: its users were disconnected;"
                " going on as node {new}", old=old, new=self.node,
            )
            self.on_lost()


def new_node_id() -> str:
    return secrets.token_hex(6)
