"""
The per-address lobby-line and registration buckets of the whole cluster, in
Redis (L{twisted_chat.server.addresses.SharedBuckets}): what each node's
copies of them report (L{twisted_chat.server.addresses.AddressBook.share}).

One Redis hash per bucket and address, C{chat:ip:<bucket>:<address key>}
(C{level}: the tokens taken and not yet refilled; C{at}: when, in Redis's
milliseconds), drained at the bucket's rate on Redis's clock (one clock for
all nodes), expiring once drained; so an address that stopped takes no
memory.  A report is one Lua script for every address in it: one command
per node every L{twisted_chat.server.addresses.SHARE_INTERVAL} seconds at
most, and one when an address spends after a quiet interval on a node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

__all__ = ["BUCKETS", "RedisBuckets"]

BUCKETS = "chat:ip:"
#: Seconds a report may wait for Redis's answer (the copies go on as the
#: node's own meanwhile).
TIMEOUT = 5.0

# KEYS: the buckets; ARGV: for each, the tokens spent and the rate per
# second.  Adds what was spent to each bucket, drained since its last
# change; answers each level (a string: Lua numbers become integers).
_SPEND = """
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

    def spend(self, items: list[tuple[str, str, int, float]]) -> Deferred[list[float]]:
        keys = [f"{BUCKETS}{bucket}:{key}" for bucket, key, _, _ in items]
        args: list[Any] = []
        for _, _, spent, rate in items:
            args += [spent, repr(float(rate))]
        d: Deferred[Any] = defer.maybeDeferred(self.execute, "EVAL", _SPEND, len(keys), *keys,
                                                *args)
        d.addTimeout(self.timeout, self.clock)
        return d.addCallback(lambda levels: [float(level) for level in levels])
