"""
What a node checks of its Redis database at each connection, before it
reads or writes the cluster's data there.

  - The keys it uses hold the kinds of value it keeps under them
    (L{foreign_keys}): keys of another kind under C{chat:} are another
    application's, or another version's, and the node does not run on
    them (at start it refuses to start, L{Misconfigured}; while running
    it says so and retries, as for an unreachable Redis).
  - Its history retention (C{--retain-days}, C{--retain-messages},
    C{--retain-bytes}) is the cluster's (L{Retention}): the first node
    records its own in C{chat:config} (L{CLAIM_RETENTION}); a node started
    with others refuses to start, naming both; C{--set-retention} records
    the node's as the cluster's, and the running nodes follow at their
    next heartbeat.  One history has one retention: a node pruning by a
    smaller one would delete the others' messages for good.
  - So is its C{--stream-bytes}.  What the two settings share, how a node
    agrees with C{chat:config} and follows it, is L{Setting}.

docs/cluster.md, "Options" (C{--set-retention}) and "How Redis must be
configured".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer

from twisted_chat.server import logs

__all__ = ["CLAIM_RETENTION", "CONFIG", "RECORDED_LATER", "Misconfigured", "Retention",
           "Setting", "Unclaimed", "foreign_keys", "foreign_message"]

CONFIG = "chat:config"
# The fields of CONFIG that hold the retention ('0': no bound), in this order.
FIELDS = ("retain-days", "retain-messages", "retain-bytes")
# A setting CONFIG lacks, which Redis refused to record as a node
# connected (out of memory): the node goes by its own, and its log says so,
# and that it is
RECORDED_LATER = "recorded as the cluster's at the first heartbeat Redis takes it"


class Unclaimed(NamedTuple):
    """Settings C{chat:config} lacks that Redis refused to record as the
    node connected (L{Setting.agree}): this node's
    are in force."""

    refusal: str  # Redis's error (OOM, MISCONF, READONLY)
    note: str  # which, in the node's "connected all the same" line


#: Records a retention in the cluster's settings (KEYS[1], a hash):
#: ARGV[1] '1' to replace what is there, else only the fields missing;
#: then each field and its value.  Returns the fields as they were before
#: (nil: missing).  Not flagged (no shebang): it writes only where a field
#: is missing or replaced.
CLAIM_RETENTION = """
local before = redis.call('HMGET', KEYS[1], 'retain-days', 'retain-messages', 'retain-bytes')
for i = 2, #ARGV, 2 do
  if ARGV[1] == '1' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return before
"""


class Misconfigured(Exception):
    """The database is not one this node can run on as it is; the text
    says why and what to do."""


# The node's log's logger (the settings' lines were RedisLog's before
# they moved out of it, and an operator's filter may match its namespace).
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")

_T = TypeVar("_T")


class Setting(ABC, Generic[_T]):
    """
    A setting of C{chat:config} every node must share (L{Pruning}'s
    retention, L{StreamBound}'s bound), read first and recorded as this
    node's only where it is missing: at each connection (L{agree}) and
    each heartbeat (L{follow}).  A node starting with another value than
    the cluster's, or reading a malformed one, does not start
    (L{Misconfigured}); a running one follows the cluster's, or says once
    that it is malformed and keeps its own.  A subclass says how the
    setting is read (L{_fetch}, L{_lacks}, L{_parse}), recorded
    (L{_record}), and told (L{_unclaimed}, L{_refused}, L{_kept}), which
    value is in force (L{_in_force}), and follows another (L{_follow}).
    """

    def __init__(self) -> None:
        self._misread: str | None = None  # the malformed value last logged

    async def agree(self, cmd: Any, started: bool) -> Unclaimed | None:
        """At each connection: a node starting (not C{started}) with
        another value than the cluster's does not start (L{Misconfigured});
        one running follows the cluster's.  Where the cluster has none and
        Redis refuses to record this node's (C{OOM}, C{MISCONF},
        C{READONLY}): its refusal and the note saying so (L{Unclaimed}),
        returned; the node's is in force, recorded at the first heartbeat
        Redis takes it (L{follow})."""
        reply = await self._fetch(cmd)
        unclaimed = None
        if self._lacks(reply):
            # Recorded only where missing: Redis out of memory refuses the
            # write, and a node must connect to a full Redis.
            try:
                reply = await self._record(cmd)
            except txredisapi.ResponseError as e:
                unclaimed = Unclaimed(str(e), self._unclaimed(reply))
        stored = self._read(reply, started)
        if stored != self._in_force():
            if not started:
                raise Misconfigured(self._refused(stored))
            self._follow(stored)
        return unclaimed

    async def follow(self, cmd: Any) -> None:
        """At each heartbeat: the cluster's value, which may have been
        changed in Redis (recorded again as this node's where missing:
        Redis's refusal raised, C{txredisapi.ResponseError}).  A heartbeat
        is a running node's, even one reloading its snapshot meanwhile: a
        malformed value is logged, never stops the node (L{_read})."""
        reply = await self._fetch(cmd)
        if self._lacks(reply):
            reply = await self._record(cmd)
        stored = self._read(reply, started=True)
        if stored != self._in_force():
            self._follow(stored)

    def _read(self, reply: Any, started: bool) -> _T:
        """The cluster's value as C{chat:config} holds it (C{reply}); a
        malformed one stops a start (L{Misconfigured}), while running it is
        logged (once) and the node keeps the value it has."""
        try:
            return self._parse(reply)
        except Misconfigured as e:
            if not started:
                raise
            if str(e) != self._misread:
                self._misread = str(e)
                _log.error("cluster: {why}; this node {kept} meanwhile",
                           why=str(e), kept=self._kept())
            return self._in_force()

    @abstractmethod
    async def _fetch(self, cmd: Any) -> Any:
        """The setting as C{chat:config} holds it (a command's reply)."""

    @abstractmethod
    def _lacks(self, reply: Any) -> bool:
        """Whether C{reply} (L{_fetch}'s) lacks some of the setting."""

    @abstractmethod
    async def _record(self, cmd: Any) -> Any:
        """This node's value recorded where C{chat:config} lacks it: a
        reply, as L{_fetch}'s, that L{_parse} makes the value stored now."""

    @abstractmethod
    def _parse(self, reply: Any) -> _T:
        """The value C{reply} holds, the one in force for what it lacks.

        @raise Misconfigured: a malformed one."""

    @abstractmethod
    def _in_force(self) -> _T:
        """The value this node goes by now."""

    @abstractmethod
    def _unclaimed(self, reply: Any) -> str:
        """The note for what C{reply} lacks and Redis refused to record."""

    @abstractmethod
    def _refused(self, stored: _T) -> str:
        """Why a node starting with its value does not start, C{stored}
        being the cluster's."""

    @abstractmethod
    def _kept(self) -> str:
        """What the node keeps going by while the cluster's is malformed
        (C{keeps --stream-bytes N})."""

    @abstractmethod
    def _follow(self, stored: _T) -> None:
        """Go by C{stored}, the cluster's, from now on (said once per
        change)."""


def _number(text: str) -> str:
    """A float as the options take it: C{2} for 2.0, C{0.5} for 0.5."""
    value = float(text)
    return str(int(value)) if value == int(value) else repr(value)


@dataclass(frozen=True, slots=True)
class Retention:
    """What the history keeps: C{--retain-days}, C{--retain-messages},
    C{--retain-bytes} (C{None}: no bound)."""

    days: float | None
    messages: int | None
    bytes: int | None

    @classmethod
    def of(cls, days: float | None, messages: int | None, bytes_: int | None) -> Retention:
        """As the options give them (0 or C{None}: no bound)."""
        return cls(days or None, messages or None, bytes_ or None)

    def values(self) -> tuple[str, str, str]:
        """As C{chat:config} holds them ('0': no bound)."""
        return (repr(float(self.days)) if self.days else "0",
                str(self.messages or 0), str(self.bytes or 0))

    def fields(self) -> list[str]:
        """Field, value, field, value... (L{CLAIM_RETENTION}'s ARGV)."""
        return [x for pair in zip(FIELDS, self.values(), strict=True) for x in pair]

    @classmethod
    def read(cls, reply: Sequence[Any], missing: Retention) -> Retention:
        """The retention C{chat:config} holds (C{HMGET}'s reply, in
        L{FIELDS}' order), C{missing}'s value for a field it lacks.

        @raise Misconfigured: a value that is not a number from 0."""
        values = list(missing.values())
        for i, (name, value) in enumerate(zip(FIELDS, reply, strict=True)):
            if value is None:
                continue
            text = str(value)
            try:
                number = float(text) if i == 0 else int(text)
            except ValueError:
                number = -1
            if not number >= 0:  # (NaN too)
                raise Misconfigured(
                    f"the cluster's settings ({CONFIG}) hold {name} {text!r}, not a number "
                    f"from 0: set it right (HSET {CONFIG} {name} N) or delete the key (DEL "
                    f"{CONFIG}: the next node to start records its own)")
            values[i] = text
        days = float(values[0]) or None
        return cls(days, int(values[1]) or None, int(values[2]) or None)

    def shown(self, name: str) -> str:
        """One option's value as the command line gives it."""
        value = dict(zip(FIELDS, self.values(), strict=True))[name]
        if float(value) == 0:
            return "not given (no bound)" if name == "retain-days" else "0 (no bound)"
        return _number(value)

    def differences(self, other: Retention, mine: str, theirs: str) -> str:
        """Each option that differs, with both values: C{--retain-messages
        10 here, 1000 in the cluster} (C{mine}, C{theirs}: "here", "in the
        cluster"); empty if none does."""
        return "; ".join(
            f"--{name} {self.shown(name)} {mine}, {other.shown(name)} {theirs}"
            for name in FIELDS if self.shown(name) != other.shown(name))

    def __str__(self) -> str:
        return ", ".join(f"--{name} {self.shown(name)}" for name in FIELDS)


async def foreign_keys(cmd: Any, kinds: Mapping[str, str]) -> list[str]:
    """Each key of C{kinds} (a key and the kind of value the cluster keeps
    under it, as C{TYPE} names it) that holds another kind, said as
    C{chat:events is a string (the cluster keeps a stream there)}.  The
    C{TYPE}s go in one write (one round trip)."""
    names = sorted(kinds)
    found = await defer.gatherResults([cmd.execute_command("TYPE", name) for name in names],
                                      consumeErrors=True)
    return [f"{name} is a {kind} (the cluster keeps a {kinds[name]} there)"
            for name, kind in zip(names, map(str, found), strict=True)
            if kind not in ("none", kinds[name])]


def foreign_message(display: str, found: Sequence[str]) -> str:
    """Why a node does not run on a database with L{foreign_keys}."""
    return (f"the Redis database at {display} holds keys of another kind under chat: "
            f"({'; '.join(found)}): another application, or another version of "
            "twisted-chat, uses this database. Give the cluster a database of its own "
            "(another number in --redis, e.g. redis://host:6379/1, or another Redis), or "
            "delete those keys if nothing needs them")
