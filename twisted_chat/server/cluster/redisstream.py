"""
The event stream in Redis: its keys, the scripts that append to it and
write its snapshot, and how one of its entries names the one it follows
(so that a reader tells a gap or a loss from the stream itself).

The cluster's keys (all under C{chat:}; the history's are
L{redishistory}'s, the settings L{redisconfig}'s):
  - C{chat:events}: the stream of events, the cluster's one order.  Each node
    appends with one script (L{APPEND}: C{XADD}, then C{PUBLISH} of the
    event with its id and the id it follows on the channel C{chat:live:<db>});
    the entry's id is the event's time.
  - C{chat:node:<id>}: a node's lease, renewed by its heartbeat; a node whose
    lease has expired is declared dead by whichever node notices first.
  - C{chat:nodes}: the ids of the nodes (a set): each node adds its own at
    every heartbeat, and takes out those whose lease has expired; with their
    leases, the live nodes, users or not (C{--metrics}).
  - C{chat:snapshot}: the state as of some event id (JSON, see
    L{Replica.snapshot}), written by each node every few seconds
    (L{snapshots.SNAPSHOT_INTERVAL}), only over an older one
    (L{SAVE_SNAPSHOT}); a starting node loads it and reads the stream
    after it.  The stream is trimmed to the snapshot
    before the last one (to the last, an interval after it with no new
    event; flagged allow-oom, so that a Redis out of memory frees it).
  - C{chat:history}: every lobby message (a sorted set scored by time, each
    member C{<sequence number> <time> <nick> <text>}: L{redishistory.history_row};
    C{<sequence number> [nick, text, time]} in JSON before, still read),
    written by the sender's node (L{HISTORY_ADD}), pruned by C{--retain-days},
    C{--retain-messages} and C{--retain-bytes} (L{PRUNE_HISTORY}); these
    scripts and the rows' encoding are in L{redishistory}.
  - C{chat:history:size}: the count of the history's bytes, for
    C{--retain-bytes} (a hash: C{bytes}, C{members}, and C{upto}, the score
    up to which they are counted, C{+inf} once all are), kept by the
    history's writes and the pruning.
  - C{chat:epoch}: a random value set once; when it changes, Redis lost
    its data.
  - C{chat:config}: the cluster's settings (a hash): its history
    retention, recorded by the first node (L{redisconfig}).
  - (Not this module's: C{chat:accounts} and C{chat:fails:*},
    L{twisted_chat.server.cluster.accounts}; C{chat:ip:*}, the addresses'
    lobby and registration buckets, L{twisted_chat.server.cluster.budgets}.)

Constants and pure functions: the node's log (L{redislog}) sends these
commands.  How the stream, its snapshot and its trimming work together:
docs/cluster.md, "How it works".
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted_chat.server.cluster.streamids import id_key

STREAM = "chat:events"
# The pub/sub channel is "chat:live:<db>": channels are not a database's
# (two clusters on one Redis, in two databases, must not hear each other).
CHANNEL = "chat:live"
SNAPSHOT = "chat:snapshot"
EPOCH = "chat:epoch"
LEASE = "chat:node:"
NODES = "chat:nodes"


#: Appends one event (ARGV[3]) to the stream (KEYS[1]), with the id of the
#: entry it follows ("0-0": none) as field p, and publishes it on the
#: channel (ARGV[1]) as "<the id it follows> <its id> <event>"; returns its
#: id.  While the stream takes more memory (MEMORY USAGE, sampled) than
#: ARGV[2] bytes (0: no bound, for the events a node appends for itself),
#: it appends nothing and answers the error FULL (as Redis out of memory
#: would OOM), so that users' traffic fills the stream up to
#: --stream-bytes, not Redis up to its maxmemory.  The entry it follows is
#: the stream's last (never trimmed: the stream is trimmed below a
#: snapshot's event).  A reader that finds the first
#: entry after its last one following another has missed what was trimmed
#: (Redis 7.0's XINFO max-deleted-entry-id does not move on XTRIM).
APPEND = """
local bound = tonumber(ARGV[2])
if bound > 0 then
  local used = redis.call('MEMORY', 'USAGE', KEYS[1])
  if used and used > bound then
    return redis.error_reply('FULL the event stream takes more than --stream-bytes ('
      .. bound .. ' bytes)')
  end
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[3], 'p', prev)
redis.call('PUBLISH', ARGV[1], prev .. ' ' .. id .. ' ' .. ARGV[3])
return id
"""

#: Sets the snapshot (KEYS[1]) to ARGV[1], the state as of event ARGV[2],
#: unless the one there is as recent or more (a node that lags behind does
#: not put back an older one: the stream may be trimmed past it already).
#: Returns 1 if set.  Only the start of the one there is read.  Flagged
#: allow-oom: the stream is trimmed only behind a new snapshot, so a Redis
#: out of memory (under noeviction) that refused it would never free the
#: stream (the snapshot is bounded by the users and invitations, small next
#: to the stream it lets go; see snapshots.Snapshots.write).
SAVE_SNAPSHOT = """#!lua flags=allow-oom
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
local oms, oseq = string.match(head, '^{"id":"(%d+)%-(%d+)"')
if oms then
  local nms, nseq = string.match(ARGV[2], '^(%d+)%-(%d+)$')
  oms, oseq, nms, nseq = tonumber(oms), tonumber(oseq), tonumber(nms), tonumber(nseq)
  if oms > nms or (oms == nms and oseq >= nseq) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


#: At a lost tail: deletes the snapshot (KEYS[1]) if it is as of a lost
#: event, one after the stream's (KEYS[2]) kept end ARGV[1] that the stream
#: does not hold; returns 1 if deleted.  One script, so that of two nodes
#: that see the loss, neither deletes the snapshot the other wrote after
#: it (as of an event the stream holds): it is valid.  Run with EVAL (not
#: loaded: a Redis that lost events may have restarted without scripts).
DROP_LOST_SNAPSHOT = """
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
local id = string.match(head, '^{"id":"(%d+%-%d+)"')
if not id then return 0 end
local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
local ems, eseq = string.match(ARGV[1], '^(%d+)%-(%d+)$')
ms, seq, ems, eseq = tonumber(ms), tonumber(seq), tonumber(ems), tonumber(eseq)
if ms < ems or (ms == ems and seq <= eseq) then return 0 end
if redis.call('XRANGE', KEYS[2], id, id)[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


APPEND_SHA, SAVE_SNAPSHOT_SHA = _sha(APPEND), _sha(SAVE_SNAPSHOT)
APPENDING = ("EVALSHA", APPEND_SHA)  # how an append's command starts


def follows(entry: Any, last: str) -> bool:
    """Whether a stream entry ([id, fields]) follows the entry C{last}: its
    field C{p} (see L{APPEND}) names it.  An entry without one (appended
    otherwise) is taken to."""
    prev = follows_id(entry)
    return prev is None or id_key(prev) == id_key(last)


def entry_content(entry: Any) -> tuple[str, str]:
    """What tells a stream entry ([id, fields]) from another event under
    its id: the id of the entry it follows and its text."""
    return follows_id(entry) or "", str(entry[1][1])


def follows_id(entry: Any) -> str | None:
    """The id of the entry a stream entry ([id, fields]) follows (its field
    C{p}), or C{None} if it has none."""
    fields = entry[1]
    for name, value in zip(fields[::2], fields[1::2], strict=False):
        if name == "p":
            return str(value)
    return None
