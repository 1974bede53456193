"""
The history's Redis side: the keys of every lobby message (C{chat:history})
and of the count of its bytes (C{chat:history:size}), the two scripts that
write and prune them (L{HISTORY_ADD}, L{PRUNE_HISTORY}), and how a message
becomes a member of the sorted set and back (L{history_row},
L{history_entry}).

Constants and pure functions (and L{HistoryStore}, which hands each new
message to the log), apart from the node's log so that retention can be
read and changed without loss recovery and leases around it: L{RedisLog}
(L{redislog}) sends these commands and keeps what Redis refused.  What the
history keeps and how the pruning is bounded: docs/cluster.md, "What is
guaranteed" (One history).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred

from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.history import Entry

HISTORY = "chat:history"
HISTORY_SIZE = "chat:history:size"
# The most messages one history write that is written again holds.
HISTORY_BATCH = 500
# The most messages, and bytes of them, one run of PRUNE_HISTORY reads
# (counts or removes): a few milliseconds of Redis's time.
PRUNE_BATCH = 1000
PRUNE_BATCH_BYTES = 1 << 20
# What the byte bound counts for a message beyond its member's bytes: about
# what Redis adds to each (measured on Redis 7.0: a member of 132 bytes
# takes 246; the allocator rounds larger ones up by up to a quarter more).
HISTORY_OVERHEAD = 100
# The share of a heartbeat one node's pruning may take (runs of
# PRUNE_HISTORY one after another while more is due; see pruning.Pruning.prune).
PRUNE_SHARE = 0.2


#: Writes lobby messages into the history (KEYS[1]) and counts their bytes
#: in KEYS[2] (see HISTORY_SIZE): ARGV[1] the bytes a member counts beyond
#: its own, then each message's score and member.  A member not there yet
#: is added (one there already, written twice, changes nothing) and, if
#: the count covers its score (at or below 'upto', see PRUNE_HISTORY),
#: counted.  Returns how many were added.  Not flagged allow-oom: Redis
#: out of memory refuses it as it would the ZADD (see kepthistory.KeptHistory).
HISTORY_ADD = """
local upto = redis.call('HGET', KEYS[2], 'upto')
local limit = nil
if upto == '+inf' then limit = math.huge
elseif upto == '-inf' then limit = -math.huge
elseif upto then limit = tonumber(upto) end
local extra = tonumber(ARGV[1])
local added, bytes, members = 0, 0, 0
for i = 2, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1]) == 1 then
    added = added + 1
    if limit and tonumber(ARGV[i]) <= limit then
      bytes, members = bytes + #ARGV[i + 1] + extra, members + 1
    end
  end
end
if members > 0 then
  redis.call('HINCRBY', KEYS[2], 'bytes', bytes)
  redis.call('HINCRBY', KEYS[2], 'members', members)
end
return added
"""


#: Prunes the history (KEYS[1]) and keeps its count of bytes (KEYS[2], see
#: HISTORY_SIZE) right: ARGV[1] the oldest score kept ('': no bound by
#: time), ARGV[2] the most members kept (0: none), ARGV[3] the most bytes
#: kept (0: none), ARGV[4] and ARGV[5] the most members and member bytes
#: one run reads (removing, counting; read 100 at a time: Redis hands a
#: script a large reply slowly), ARGV[6] the bytes a member counts beyond
#: its own.  The count ('bytes', 'members') is of the members scored at or
#: below 'upto' ('-inf': none yet; '+inf': all of them); HISTORY_ADD adds
#: those it writes there, and this script subtracts those it removes, so
#: once 'upto' is '+inf' the count is exact at every write, without
#: reading anything again.  Each run: checks the count against the history
#: (a member written or removed otherwise, by hand or by a node of an
#: earlier version, makes them differ: the count starts again from
#: nothing); removes the oldest members past the time and past the count
#: (without reading them when nothing is counted); counts on from 'upto'
#: (a millisecond's members together) while 'upto' is not '+inf' and
#: there is a bound in bytes (none: no count is started, one there is
#: kept up); removes the oldest while the bytes counted are over the bound,
#: before counting on (within the run's reads, the removal first) and after
#: (the members counted are the oldest: nothing is removed for bytes not
#: counted yet).  Returns {removed, bytes counted, 1 if more is due to
#: go, 1 if more is to be counted}.  Safe for nodes to run at once (a
#: script runs alone); flagged allow-oom: a Redis out of memory (under
#: noeviction) must still let the history shrink.
PRUNE_HISTORY = """#!lua flags=allow-oom
local cutoff, most, most_bytes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local batch, batch_bytes, extra = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local size = redis.call('HMGET', KEYS[2], 'bytes', 'members', 'upto')
local total, counted, upto = tonumber(size[1]) or 0, tonumber(size[2]) or 0, size[3]
local card = redis.call('ZCARD', KEYS[1])
local changed = false
if upto then
  local there = card
  if upto == '-inf' then there = 0
  elseif upto ~= '+inf' then there = redis.call('ZCOUNT', KEYS[1], '-inf', upto) end
  if counted ~= there then
    -- Written or removed behind the count's back: count again from nothing.
    redis.call('DEL', KEYS[2])
    total, counted, upto = 0, 0, nil
  end
end
if not upto and most_bytes > 0 then
  total, counted, upto, changed = 0, 0, '-inf', true
end
local function level()
  if upto == '+inf' then return math.huge end
  if upto == '-inf' then return -math.huge end
  return tonumber(upto)
end
local read, read_bytes, chunk = 0, 0, math.min(batch, 100)
local removed = 0
local function spent()
  return read >= batch or read_bytes >= batch_bytes
end
-- The oldest n go, or with 'bound' only as many as bring the bytes counted
-- down to it; within the run's reads.  Read (to be subtracted) only where
-- a count is kept.
local function remove(n, bound)
  local limit = level()
  while n > 0 and not spent() do
    local k = 0
    if upto then
      local head = redis.call('ZRANGE', KEYS[1], 0, math.min(n, chunk) - 1, 'WITHSCORES')
      for i = 1, #head, 2 do
        if bound and total <= bound then break end
        k = k + 1
        read, read_bytes = read + 1, read_bytes + #head[i]
        if tonumber(head[i + 1]) <= limit then
          total, counted = total - #head[i] - extra, counted - 1
        end
      end
    else
      k = math.min(n, batch - read)
      read = read + k
    end
    if k == 0 then return end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, k - 1)
    removed, card, n, changed = removed + k, card - k, n - k, true
    if bound and total <= bound then return end
  end
end
-- Past the time, past the count.
local drop = 0
if cutoff ~= '' then drop = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. cutoff) end
if most > 0 and card - most > drop then drop = card - most end
local dropping = 0
if drop > 0 then
  remove(drop)
  if removed < drop then dropping = 1 end
end
-- Over the bytes counted (before counting on, which would take the run's
-- reads while a count is under way).
local function over()
  if upto and most_bytes > 0 and total > most_bytes then
    remove(card, most_bytes)
  end
end
over()
-- Counting on, where a count is started and not done.
local counting = 0
if upto and upto ~= '+inf' and most_bytes > 0 then
  local function count(member)
    total, counted = total + #member + extra, counted + 1
    read, read_bytes = read + 1, read_bytes + #member
  end
  while not spent() do
    local low = '-inf'
    if upto ~= '-inf' then low = '(' .. upto end
    local rows = redis.call('ZRANGEBYSCORE', KEYS[1], low, '+inf', 'WITHSCORES', 'LIMIT', 0, chunk)
    changed = true
    if #rows < 2 * chunk then
      for i = 1, #rows, 2 do count(rows[i]) end
      upto = '+inf'
      break
    end
    local last = rows[#rows]
    for i = 1, #rows, 2 do
      if rows[i + 1] ~= last then count(rows[i]) end
    end
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], last, last)) do
      count(member)
    end
    upto = last
  end
  if upto ~= '+inf' then counting = 1 end
end
-- Over the bytes counted now.
over()
if upto and most_bytes > 0 and total > most_bytes then dropping = 1 end
if upto and changed then
  redis.call('HSET', KEYS[2], 'bytes', total, 'members', counted, 'upto', upto)
end
return {removed, total, dropping, counting}
"""


HISTORY_ADD_SHA = hashlib.sha1(HISTORY_ADD.encode()).hexdigest()
#: HISTORY_ADD flagged allow-oom, for the history write a snapshot needs
#: before it (snapshots.Snapshots.write): without it, a Redis out of memory
#: would take no snapshot, so the stream would never be trimmed and the
#: memory never freed.  Its rows are the recent lobby lines of events still
#: in the stream (bounded by them, most already written); the sender's
#: node's own writes stay refused under OOM (kept and written again).
HISTORY_ADD_OOM = "#!lua flags=allow-oom\n" + HISTORY_ADD
HISTORY_ADD_OOM_SHA = hashlib.sha1(HISTORY_ADD_OOM.encode()).hexdigest()
SNAPSHOT_HISTORY_WRITING = ("EVALSHA", HISTORY_ADD_OOM_SHA)  # how a snapshot's starts
HISTORY_WRITING = ("EVALSHA", HISTORY_ADD_SHA)  # how a history write's starts


def history_write(rows: Sequence[Any],
                  writing: tuple[str, str] = HISTORY_WRITING) -> tuple[Any, ...]:
    """The command that writes history rows (score, member, score, member,
    ...: see L{history_row}) into the history and its count (L{HISTORY_ADD};
    C{writing}: how the command starts, which script it runs)."""
    return (*writing, 2, HISTORY, HISTORY_SIZE, HISTORY_OVERHEAD, *rows)


def snapshot_history_write(rows: Sequence[Any]) -> tuple[Any, ...]:
    """L{history_write} for a snapshot's history: by L{HISTORY_ADD_OOM},
    which Redis out of memory takes."""
    return history_write(rows, SNAPSHOT_HISTORY_WRITING)


def history_rows(command: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    """A history write's (L{history_write}) rows, as (score, member) pairs."""
    rows = command[len(HISTORY_WRITING) + 4:]
    return list(zip(rows[::2], rows[1::2], strict=True))


def prune_again(dropping: bool, counting: bool, spent: float, budget: float | None) -> bool:
    """
    Whether L{Pruning.prune} runs L{PRUNE_HISTORY} once more: while a run
    says more is due to go or to be counted, and the runs so far took less
    than C{budget} seconds (C{None}: at start, as long as it takes).  Each
    run is short (L{PRUNE_BATCH}); many of them, one after another, remove
    whatever a heartbeat brought at any rate Redis can take writes at (a
    run removes 1,000 messages or 1 MiB in a few milliseconds), while the
    budget keeps a backlog (a bound lowered, a count started again) from
    taking Redis's time for long: it goes on at the next heartbeat.
    """
    if not (dropping or counting):
        return False
    return budget is None or spent < budget


def history_row(eid: str, nick: str, text: str) -> tuple[int, str]:
    """A lobby line of event C{eid} in the history: its score and member,
    C{<sequence number> <time> <nick> <text>} (a nick has no space; the
    text is the rest, as said: no escaping makes it longer).  A sorted set
    holds a member once: the event's time is in it too, or a line said
    again (the same nick and text) would replace the one before.  The
    sequence number first: one millisecond's messages sort in the stream's
    order.  (The same line makes the same row on every node.)"""
    ms, seq = id_key(eid)
    return ms, f"{seq:08d} {ms} {nick} {text}"


def history_entry(member: str) -> tuple[int, str, str]:
    """A history member's sequence number, nick and text: as L{history_row}
    writes it, or as it wrote it before (C{<sequence number> [nick, text,
    time]} in JSON)."""
    seq_text, _, body = member.partition(" ")
    if body.startswith("["):
        nick, text = json.loads(body)[:2]
    else:
        _, nick, text = body.split(" ", 2)
    return int(seq_text), nick, text


def history_size(member: str) -> int:
    """What a kept history write counts against its bound (its score too)."""
    return len(member.encode()) + 16


class _EntryLog(Protocol):
    """Where L{HistoryStore} hands each new message: the node's log
    (L{twisted_chat.server.cluster.redislog.RedisLog})."""

    def append_entry(self, entry: Entry) -> None: ...


class HistoryStore:
    """The history's durable store (L{MessageStore}) in cluster mode."""

    def __init__(self, log: _EntryLog) -> None:
        self._log = log

    def append(self, entry: Entry) -> None:
        self._log.append_entry(entry)

    def close(self) -> Deferred[None]:
        return defer.succeed(None)
