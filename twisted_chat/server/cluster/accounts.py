"""
The cluster's accounts: one account namespace for every node, in Redis.

L{RedisBook} is the L{AccountBook} (and the operator tool's
L{AccountAdmin}) on the cluster's Redis, through the node's own non-blocking
txredisapi connection (L{RedisLog.command}); the password hashes are made
and checked on the node's password threads, as on one server
(L{twisted_chat.server.accounts.login}).  See docs/accounts.md.

One Redis hash, C{chat:accounts}: the field is the nick in lower case (nicks
are unique without regard to case), the value the account as JSON,
C{{"nick", "hash", "created", "changed"}} (times in integer milliseconds).
Each operation is one Redis command, so each is atomic on its own and none
needs a transaction on the node's shared, pipelined connection (where a
C{WATCH}/C{MULTI} would take in the other commands the node sends meanwhile):

  - a new account (C{REGISTER}, the tool's C{add}) is C{HSETNX}: of any number
    of nodes racing to create one nick's account, exactly one succeeds (a
    C{REGISTER}'s is a Lua script that also counts the accounts, C{HLEN},
    against C{--max-accounts}, in the same atomic step);
  - a new password (C{PASSWD}, the tool's C{passwd}) is a Lua script that
    replaces the hash only if the account still exists, keeping its nick and
    creation time: a password change never re-creates an account removed
    meanwhile, and changes that race are applied one after the other, whole;
    a C{PASSWD}'s only while the account's hash is still the one its
    connection proved (not once the operator has reset it);
  - removing one is C{HDEL}; reading one C{HGET}; the list C{HGETALL}; the
    count (a node's start under C{--accounts required}) C{HLEN}.

A command that cannot be sent (Redis out of reach) or gets no answer within
L{TIMEOUT} seconds fails with L{AccountsUnavailable}; one Redis refuses
(out of memory under C{noeviction}, a read-only replica) with
L{AccountStoreError}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from twisted_chat.server.accounts.loginlimits import LoginLimits, nick_address_key
from twisted_chat.server.accounts.records import (
    Account,
    AccountExists,
    AccountsFull,
    AccountStoreError,
    AccountsUnavailable,
    NoSuchAccount,
    PasswordChanged,
)
from twisted_chat.server.cluster.redisconn import connect, parse_url, with_password_file
from twisted_chat.wire import is_valid_nick, nick_key

__all__ = ["ACCOUNTS", "FAILS", "TIMEOUT", "RedisBook", "RedisFailures", "forgetful", "open_book"]

ACCOUNTS = "chat:accounts"
#: Seconds an account command may wait for Redis's answer.
TIMEOUT = 5.0

# KEYS[1] the hash; ARGV: the nick's key, the new hash, the time (ms), and
# the hash the account must have now ('': any, the operator's tool).
# 1: changed; 0: no such account; -1: its hash is not that one.  (cjson keeps
# integers of up to 14 digits exactly: milliseconds until the year 5138.)
_SET_HASH = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local account = cjson.decode(current)
if ARGV[4] ~= '' and account['hash'] ~= ARGV[4] then return -1 end
account['hash'] = ARGV[2]
account['changed'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(account))
return 1
"""


# KEYS[1] the hash; ARGV: the nick's key, the account, the most accounts.
# 1: created; 0: the nick has one; -1: there are that many accounts already.
_ADD_BOUNDED = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _encode(nick: str, password_hash: str, created_ms: int, changed_ms: int) -> str:
    return json.dumps({"nick": nick, "hash": password_hash, "created": created_ms,
                       "changed": changed_ms}, separators=(",", ":"))


def _decode(value: Any) -> Account:
    try:
        record = json.loads(value)
        return Account(str(record["nick"]), str(record["hash"]),
                       int(record["created"]) / 1000, int(record["changed"]) / 1000)
    except (ValueError, TypeError, KeyError) as e:
        raise AccountStoreError(f"a malformed account in Redis ({ACCOUNTS}): {e}") from None


class RedisBook:
    """
    The accounts in the cluster's Redis (see the module docstring).

    @param execute: sends one Redis command, returning a C{Deferred} of its
        reply (the node's L{RedisLog.command}, or a connection's
        C{execute_command} in the operator's tool).
    """

    #: The cluster answers a NICK or PASS it cannot check RETRY unavailable.
    retry_unavailable = True

    def __init__(self, execute: Callable[..., Deferred[Any]], clock: IReactorTime,
                 timeout: float = TIMEOUT) -> None:
        self.execute = execute
        self._clock = clock
        self.timeout = timeout

    def command(self, *args: Any) -> Deferred[Any]:
        """One Redis command, with the accounts' timeout and errors."""
        d: Deferred[Any] = defer.maybeDeferred(self.execute, *args)
        d.addTimeout(self.timeout, self._clock)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        value = failure.value
        if isinstance(value, txredisapi.ResponseError):
            raise AccountStoreError(f"Redis refused an accounts command: {value}")
        if isinstance(value, defer.TimeoutError):  # its text: "(5.0, 'Deferred')"
            raise AccountsUnavailable("the cluster's Redis is out of reach (no answer "
                                      f"within {self.timeout:g} seconds)")
        if isinstance(value, (ConnectionError, txredisapi.ConnectionError)):
            raise AccountsUnavailable(f"the cluster's Redis is out of reach ({value})")
        return failure

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- AccountBook ----------------------------------------------------------

    def get(self, nick: str) -> Deferred[Account | None]:
        d = self.command("HGET", ACCOUNTS, nick_key(nick))
        return d.addCallback(lambda value: None if value is None else _decode(value))

    def add(self, nick: str, password_hash: str, most: int | None = None) -> Deferred[None]:
        if not is_valid_nick(nick):
            return defer.fail(ValueError(f"{nick!r} is not a valid nick"))
        now = self._now_ms()
        value = _encode(nick, password_hash, now, now)
        if most is None:
            d = self.command("HSETNX", ACCOUNTS, nick_key(nick), value)
        else:
            d = self.command("EVAL", _ADD_BOUNDED, 1, ACCOUNTS, nick_key(nick), value, most)
            d.addCallback(_raise_if_full, nick)
        return d.addCallback(_raise_unless_set, AccountExists, nick)

    def set_hash(
        self, nick: str, password_hash: str, expected: str | None = None
    ) -> Deferred[None]:
        d = self.command("EVAL", _SET_HASH, 1, ACCOUNTS, nick_key(nick), password_hash,
                          self._now_ms(), expected or "")
        d.addCallback(_raise_if_changed, nick)
        return d.addCallback(_raise_unless_set, NoSuchAccount, nick)

    # -- AccountAdmin ---------------------------------------------------------

    def remove(self, nick: str) -> Deferred[None]:
        d = self.command("HDEL", ACCOUNTS, nick_key(nick))
        return d.addCallback(_raise_unless_set, NoSuchAccount, nick)

    def list(self) -> Deferred[list[Account]]:
        def accounts(reply: list[Any]) -> list[Account]:
            pairs = sorted(zip(reply[::2], reply[1::2], strict=True))
            return [_decode(value) for _, value in pairs]

        return self.command("HGETALL", ACCOUNTS).addCallback(accounts)

    def count(self) -> Deferred[int]:
        """How many accounts there are (C{HLEN})."""
        return self.command("HLEN", ACCOUNTS).addCallback(int)

    def copy(self, account: Account) -> Deferred[bool]:
        """
        Put an account from elsewhere (the single server's file) here as it
        is, hash and times included, unless the nick has one already
        (C{HSETNX}): whether it was put.
        """
        if not is_valid_nick(account.nick):
            return defer.fail(ValueError(f"{account.nick!r} is not a valid nick"))
        value = _encode(account.nick, account.password_hash, round(account.created * 1000),
                        round(account.changed * 1000))
        d = self.command("HSETNX", ACCOUNTS, nick_key(account.nick), value)
        return d.addCallback(lambda reply: int(reply) == 1)


#: Failed logins, one leaky bucket per nick, per nick and address, and per
#: address (login.py's).
FAILS = "chat:fails:"

# KEYS: the buckets; ARGV[1]: "take" or "give", then each bucket's burst and
# its period in milliseconds.  Time is Redis's own (one clock for all nodes).
# "take": when every bucket has room for one more failure, adds one to each
# and answers 1; else changes nothing and answers 0 (one script: atomic, so
# of any number of takes at once, at most the room succeed).
# "give": takes one back from each (a bucket that drains to 0 is deleted).
# A bucket expires once it has drained.
_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
for i, key in ipairs(KEYS) do
  local burst = tonumber(ARGV[2 * i])
  local every = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = 0
  if state[1] then
    level = math.max(tonumber(state[1]) - (now - tonumber(state[2])) / every, 0)
  end
  if ARGV[1] == 'take' and level > burst - 1 then
    return 0
  end
  levels[i] = level
end
for i, key in ipairs(KEYS) do
  local every = tonumber(ARGV[2 * i + 1])
  local level = levels[i] + 1
  if ARGV[1] == 'give' then
    level = levels[i] - 1
  end
  if level <= 0 then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', key, math.ceil(level * every))
  end
end
return 1
"""


class RedisFailures:
    """
    L{twisted_chat.server.accounts.loginlimits.SharedFailures} in the cluster's Redis: the
    same leaky buckets as each node's own (L{LoginLimits}), one Redis hash
    each (C{chat:fails:nick:<nick>}, C{chat:fails:nickaddress:<nick>/<key>},
    C{chat:fails:address:<key>}), taken and
    given back by one Lua script on Redis's clock, expiring once drained (so
    they take no memory once a guesser stops).
    """

    def __init__(self, execute: Callable[..., Deferred[Any]], clock: IReactorTime,
                 limits: LoginLimits, timeout: float = TIMEOUT) -> None:
        self._redis = RedisBook(execute, clock, timeout)  # for its command()
        self.limits = limits

    def _buckets(self, nick: str, address: str | None) -> tuple[list[str], list[Any]]:
        limits = self.limits
        keys = [f"{FAILS}nick:{nick}", f"{FAILS}nickaddress:{nick_address_key(nick, address)}"]
        args: list[Any] = [limits.nick_total_burst, int(limits.nick_total_every * 1000),
                           limits.nick_burst, int(limits.nick_every * 1000)]
        if address is not None:
            keys.append(f"{FAILS}address:{address}")
            args += [limits.address_burst, int(limits.address_every * 1000)]
        return keys, args

    def _run(self, what: str, nick: str, address: str | None) -> Deferred[Any]:
        keys, args = self._buckets(nick, address)
        return self._redis.command("EVAL", _BUCKETS, len(keys), *keys, what, *args)

    def take(self, nick: str, address: str | None) -> Deferred[bool]:
        return self._run("take", nick, address).addCallback(lambda room: int(room) == 1)

    def give_back(self, nick: str, address: str | None) -> None:
        self._run("give", nick, address).addErrback(lambda _: None)  # best effort


def _raise_if_full(reply: Any, nick: str) -> Any:
    if int(reply) == -1:
        raise AccountsFull(nick)
    return reply


def _raise_if_changed(reply: Any, nick: str) -> Any:
    if int(reply) == -1:
        raise PasswordChanged(nick)
    return reply


def _raise_unless_set(reply: Any, error: type[Exception], nick: str) -> None:
    """Redis answered 1 (done) or 0 (the account was, or was not, there)."""
    if int(reply) != 1:
        raise error(nick)


async def forgetful(execute: Callable[..., Deferred[Any]]) -> list[str]:
    """
    What in Redis's configuration could lose the accounts, which live
    nowhere else (docs/accounts.md): an eviction policy other than
    C{noeviction}, no persistence at all.  Empty: nothing seen.

    @raise txredisapi.ResponseError: C{CONFIG} is not allowed here.
    """
    found = []
    reply = await execute("CONFIG", "GET", "maxmemory-policy")
    if reply and reply[1] != "noeviction":
        found.append(f"maxmemory-policy is {reply[1]}, not noeviction: Redis may evict "
                     f"{ACCOUNTS}, every account at once")
    aof = await execute("CONFIG", "GET", "appendonly")
    save = await execute("CONFIG", "GET", "save")
    if aof and save and aof[1] == "no" and not save[1]:
        found.append("no persistence (appendonly no, no save points): a Redis restart "
                     "loses every account")
    return found


async def open_book(url: str, reactor: Any,
                    password_file: str | None = None) -> tuple[RedisBook, Callable[[], None]]:
    """
    The operator's tool: a connection of its own to the cluster's Redis at
    C{url} (as C{twistd chat --redis} takes it; the password in
    C{password_file}, if given) and the book on it, with the function that
    closes it.

    @raise ValueError: a malformed URL.
    @raise AccountsUnavailable: Redis cannot be reached.
    """
    target = with_password_file(parse_url(url), password_file)
    try:
        proto = await connect(target, reactor)
    except Exception as e:
        raise AccountsUnavailable(f"cannot reach Redis at {target.display}: {e}") from None
    return RedisBook(proto.execute_command, reactor), proto.transport.loseConnection
