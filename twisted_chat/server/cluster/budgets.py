"""
The per-address lobby-line and registration buckets of the whole cluster, in
Redis (L{twisted_chat.server.limits.addresses.SharedBuckets}): what each node's
copies of them report (L{twisted_chat.server.limits.addresses.AddressBook.share}).

One Redis hash per bucket and address, C{chat:ip:<bucket>:<address key>}
(C{level}: the tokens taken and not yet refilled; C{at}: when, in Redis's
milliseconds), drained at the bucket's rate on Redis's clock (one clock for
all nodes), expiring once drained; so an address that stopped takes no
memory.  A report is one Lua script for every address in it, run by
C{EVALSHA} (loaded with the log's scripts at each connection; C{EVAL} once
if Redis has forgotten it, which loads it again): one command per node
every L{twisted_chat.server.limits.addresses.SHARE_INTERVAL} seconds at most, and
one when a second line comes for an address's stale copy before then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

__all__ = ["BUCKETS", "SPEND", "RedisBuckets"]

BUCKETS = "chat:ip:"
#: Seconds a report may wait for Redis's answer (the copies go on as the
#: node's own meanwhile).
TIMEOUT = 5.0

# KEYS: the buckets; ARGV: for each, the tokens spent (a fraction for lines
# judged as of when they arrived) and the rate per second.  Adds what was
# spent to each bucket, drained since its last change; answers each level
# (a string: Lua numbers become integers).
SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
for i, key in ipairs(KEYS) do
  local spent = tonumber(ARGV[2 * i - 1])
  local rate = tonumber(ARGV[2 * i]) / 1000
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = 0
  if state[1] then
    level = math.max(tonumber(state[1]) - (now - tonumber(state[2])) * rate, 0)
  end
  if spent > 0 then
    level = level + spent
    redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', key, math.ceil(level / rate) + 1)
  end
  levels[i] = tostring(level)
end
return levels
"""
SPEND_SHA = hashlib.sha1(SPEND.encode()).hexdigest()


class RedisBuckets:
    """
    L{SharedBuckets} in the cluster's Redis.

    @param execute: sends one Redis command, returning a C{Deferred} of its
        reply (the node's L{RedisLog.command}: it fails at once while Redis
        is out of reach).
    """

    def __init__(self, execute: Callable[..., Deferred[Any]], clock: IReactorTime,
                 timeout: float = TIMEOUT) -> None:
        self.execute = execute
        self.clock = clock
        self.timeout = timeout

    def spend(self, items: list[tuple[str, str, float, float]]) -> Deferred[list[float]]:
        keys = [f"{BUCKETS}{bucket}:{key}" for bucket, key, _, _ in items]
        args: list[Any] = []
        for _, _, spent, rate in items:
            # A count of lines, or the level lines held through an outage
            # left (a fraction: AddressBook's Shared.owed): one form for
            # both, the script's tonumber reads "1.0" as 1.
            args += [repr(float(spent)), repr(float(rate))]
        d: Deferred[Any] = defer.maybeDeferred(self.execute, "EVALSHA", SPEND_SHA, len(keys),
                                                *keys, *args)
        d.addErrback(self._forgotten, len(keys), *keys, *args)
        d.addTimeout(self.timeout, self.clock)
        return d.addCallback(lambda levels: [float(level) for level in levels])

    def _forgotten(self, failure: Failure, *command: Any) -> Deferred[Any] | Failure:
        """C{NOSCRIPT} (Redis restarted or flushed its scripts since the
        connection loaded them): the script itself, which loads it again."""
        value = failure.value
        if isinstance(value, txredisapi.ResponseError) and "NOSCRIPT" in str(value):
            return defer.maybeDeferred(self.execute, "EVAL", SPEND, *command)
        return failure
