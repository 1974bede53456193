"""
The cluster's accounts in Redis (L{RedisBook}): against a real, private
redis-server (tests/redisproc.py), each "node" on a connection of its own,
as the nodes of a cluster are; and, without Redis, what an unreachable or
silent Redis turns into (task.Clock, no sleeps).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from tests.redisproc import REDIS_SERVER, RedisServer
from twisted_chat.server.accounts.loginlimits import LoginLimits
from twisted_chat.server.accounts.records import (
    Account,
    AccountExists,
    AccountsFull,
    AccountStoreError,
    AccountsUnavailable,
    NoSuchAccount,
    PasswordChanged,
)
from twisted_chat.server.accounts.store import AccountStore, SQLiteBook
from twisted_chat.server.cluster.accounts import (
    ACCOUNTS,
    FAILS,
    RedisBook,
    RedisFailures,
    forgetful,
    open_book,
)

Nodes = Callable[[int], Awaitable[list[RedisBook]]]
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[Nodes]:
    """C{await nodes(n)}: n books, each on a connection of its own (as n
    nodes), closed after the test."""
    from twisted.internet import reactor

    closes: list[Callable[[], None]] = []

    async def open_books(n: int) -> list[RedisBook]:
        books = []
        for _ in range(n):
            book, close = await open_book(redis.url, reactor)
            books.append(book)
            closes.append(close)
        return books

    yield open_books
    for close in closes:
        close()


async def outcome(d: defer.Deferred[Any]) -> Any:
    """The result, or the exception a failure carries."""
    try:
        return await d
    except Exception as e:
        return e


@needs_redis
@pytest_twisted.ensureDeferred
async def test_add_get_list_set_remove(redis: RedisServer, nodes: Nodes) -> None:
    [book] = await nodes(1)
    assert await book.get("alice") is None
    await book.add("Alice", "hash-1")
    account = await book.get("ALICE")  # without regard to case
    assert account is not None
    assert (account.nick, account.password_hash) == ("Alice", "hash-1")
    assert account.created == account.changed
    with pytest.raises(AccountExists):
        await book.add("alice", "hash-2")
    await book.add("bob", "hash-b")
    await book.set_hash("ALICE", "hash-3")
    changed = await book.get("alice")
    assert changed is not None
    # The script keeps the nick as spelled and the creation time.
    assert (changed.nick, changed.password_hash) == ("Alice", "hash-3")
    assert changed.created == account.created and changed.changed >= account.changed
    assert [a.nick for a in await book.list()] == ["Alice", "bob"]
    await book.remove("alice")
    with pytest.raises(NoSuchAccount):
        await book.remove("alice")
    with pytest.raises(NoSuchAccount):
        await book.set_hash("alice", "hash-4")
    assert await book.get("alice") is None  # PASSWD did not re-create it
    assert [a.nick for a in await book.list()] == ["bob"]
    # One hash of JSON records, keyed by the nick in lower case; no password in it.
    record = json.loads(redis.command("HGET", ACCOUNTS, "bob").split("\r\n")[1])
    assert record["nick"] == "bob" and record["hash"] == "hash-b"


@needs_redis
@pytest_twisted.ensureDeferred
async def test_copy_keeps_hash_and_times_and_never_overwrites(nodes: Nodes) -> None:
    [book] = await nodes(1)
    old = Account("Alice", "scrypt$old", 1_700_000_000.123, 1_700_000_500.456)
    assert await book.copy(old) is True
    assert await book.get("alice") == old
    await book.add("bob", "bob-hash")
    assert await book.copy(Account("BOB", "other", 1.0, 2.0)) is False
    bob = await book.get("bob")
    assert bob is not None and (bob.nick, bob.password_hash) == ("bob", "bob-hash")


@needs_redis
@pytest_twisted.ensureDeferred
async def test_add_bounded_by_most_even_racing(nodes: Nodes) -> None:
    """REGISTER's bound on the accounts, counted in the same step as the
    creation: nodes racing for the last places make no more than the bound."""
    books = await nodes(3)
    await books[0].add("alice", "scrypt$h")  # the tool's: no bound
    results = await defer.DeferredList(
        [book.add(f"n{i}{j}", "scrypt$h", most=4) for i, book in enumerate(books)
         for j in range(3)], consumeErrors=True)
    made = [ok for ok, _ in results]
    assert sum(made) == 3
    assert all(isinstance(r.value, AccountsFull) for ok, r in results if not ok)
    assert len(await books[1].list()) == 4
    assert isinstance(await outcome(books[2].add("ALICE", "scrypt$h", most=4)), AccountExists)
    await books[2].add("extra", "scrypt$h")  # the tool's: no bound


@needs_redis
@pytest_twisted.ensureDeferred
async def test_register_race_between_nodes_exactly_one_wins(nodes: Nodes) -> None:
    """Every node sends its REGISTER before any answer comes back: one wins."""
    books = await nodes(3)
    for round_ in range(5):
        nick = f"race{round_}"
        attempts = [book.add(nick if i % 2 else nick.upper(), f"hash-{i}")
                    for i, book in enumerate(books * 4)]
        results = [await outcome(d) for d in attempts]
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, AccountExists) for i, r in enumerate(results)
                   if i != winners[0])
        account = await books[0].get(nick)
        assert account is not None and account.password_hash == f"hash-{winners[0]}"


@needs_redis
@pytest_twisted.ensureDeferred
async def test_passwd_racing_a_remove_never_brings_the_account_back(nodes: Nodes) -> None:
    """A password change sent before a removal is applied before it, whole:
    after both, the account is gone (a read-then-write change would have
    written the account back after the removal)."""
    [node, tool] = await nodes(2)
    for round_ in range(5):
        nick = f"gone{round_}"
        await node.add(nick, "old-hash")
        changed = node.set_hash(nick, "new-hash")
        removed = node.remove(nick)
        assert await outcome(changed) is None
        assert await outcome(removed) is None
        assert await tool.get(nick) is None
    # And the other way round: removed first, the change finds nothing.
    await node.add("late", "old-hash")
    removed = node.remove("late")
    changed = node.set_hash("late", "new-hash")
    assert await outcome(removed) is None
    assert isinstance(await outcome(changed), NoSuchAccount)
    assert await tool.get("late") is None


@needs_redis
@pytest_twisted.ensureDeferred
async def test_passwd_only_while_the_password_is_the_one_proved(nodes: Nodes) -> None:
    """A PASSWD (expected: the hash its connection proved) after the
    operator's reset on another node, or a remove and add, changes nothing:
    compared in the same script as the change."""
    [node, tool] = await nodes(2)
    await tool.add("alice", "stolen")
    await node.set_hash("alice", "thiefs", expected="stolen")  # its own change
    await tool.set_hash("alice", "operators")  # the tool: whatever it was
    with pytest.raises(PasswordChanged):
        await node.set_hash("ALICE", "thiefs-2", expected="thiefs")
    account = await tool.get("alice")
    assert account is not None and account.password_hash == "operators"
    await tool.remove("alice")
    with pytest.raises(NoSuchAccount):
        await node.set_hash("alice", "thiefs-2", expected="operators")
    await tool.add("alice", "new-owners")
    with pytest.raises(PasswordChanged):
        await node.set_hash("alice", "thiefs-2", expected="operators")
    account = await tool.get("alice")
    assert account is not None and account.password_hash == "new-owners"


@needs_redis
@pytest_twisted.ensureDeferred
async def test_concurrent_passwd_applied_whole_one_after_the_other(nodes: Nodes) -> None:
    books = await nodes(2)
    await books[0].add("carol", "hash-0")
    before = await books[0].get("carol")
    changes = [book.set_hash("carol", f"hash-{i}") for i, book in enumerate(books * 5)]
    assert [await outcome(d) for d in changes] == [None] * 10
    after = await books[1].get("carol")
    assert before is not None and after is not None
    assert after.password_hash in {f"hash-{i}" for i in range(10)}
    assert (after.nick, after.created) == ("carol", before.created)


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_refusing_is_a_store_error_and_gone_is_unavailable(
    redis: RedisServer, nodes: Nodes,
) -> None:
    [book] = await nodes(1)
    redis.command("SET", ACCOUNTS, "not a hash")
    refused = await outcome(book.get("alice"))
    assert isinstance(refused, AccountStoreError)
    assert not isinstance(refused, AccountsUnavailable)
    assert "WRONGTYPE" in str(refused)
    redis.command("DEL", ACCOUNTS)
    redis.command("HSET", ACCOUNTS, "bad", "{not json")
    assert isinstance(await outcome(book.get("bad")), AccountStoreError)
    redis.stop()
    gone = await outcome(book.get("alice"))
    assert isinstance(gone, AccountsUnavailable)
    from twisted.internet import reactor

    with pytest.raises(AccountsUnavailable, match="cannot reach Redis"):
        await open_book(redis.url, reactor)


@needs_redis
@pytest_twisted.ensureDeferred
async def test_forgetful_redis_is_named(tmp_path: Path) -> None:
    from twisted.internet import reactor

    for persist in (True, False):
        (tmp_path / str(persist)).mkdir()
        server = RedisServer(tmp_path / str(persist), persist=persist).start()
        try:
            book, close = await open_book(server.url, reactor)
            try:
                execute = book.execute
                found = await forgetful(execute)
                assert found == ([] if persist else [
                    "no persistence (appendonly no, no save points): a Redis restart "
                    "loses every account"])
                server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
                found = await forgetful(execute)
                assert found[0].startswith("maxmemory-policy is allkeys-lru, not noeviction")
            finally:
                close()
        finally:
            server.stop()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_failed_logins_are_counted_by_the_whole_cluster(
    redis: RedisServer, nodes: Nodes,
) -> None:
    """Failures on one node count on another: the same buckets, in Redis,
    taken before the check and given back when it was no failure."""
    books = await nodes(2)
    limits = LoginLimits()
    a, b = (RedisFailures(book.execute, Clock(), limits) for book in books)
    for _ in range(limits.nick_burst):
        assert await a.take("alice", None)
    assert await a.take("bob", None)  # after the failures, on that connection
    assert not await b.take("alice", None)  # full, seen from the other node
    assert await b.take("bob", None)
    # A drained bucket lets one more in, and expires by itself.
    ttl = int(redis.command("PTTL", f"{FAILS}nick:alice").split(":")[1])
    assert 0 < ttl <= limits.nick_burst * limits.nick_every * 1000
    level, at = redis.command("HMGET", f"{FAILS}nick:alice", "level", "at").split("\r\n")[2::2]
    redis.command("HSET", f"{FAILS}nick:alice", "at", str(int(at) - 60_000))
    assert not await b.take("alice", None)  # alice from that address: still full
    redis.command("HSET", f"{FAILS}nickaddress:alice/-", "at", str(int(at) - 60_000))
    assert await b.take("alice", None)
    assert not await a.take("alice", None)
    # The address bucket: many nicks from one address.
    for i in range(limits.address_burst):
        assert await b.take(f"n{i}", "198.51.100.7")
    assert await b.take("zed", "203.0.113.9")
    assert not await a.take("zed", "198.51.100.7")
    assert limits.nick_burst - 0.01 < float(level) <= limits.nick_burst
    # A take refused by one bucket counts in none.
    assert redis.command("EXISTS", f"{FAILS}nick:zed").strip() == ":1"  # from 203.0.113.9
    assert not await a.take("yann", "198.51.100.7")
    assert redis.command("EXISTS", f"{FAILS}nick:yann").strip() == ":0"
    # Given back: a bucket drained to nothing is gone.
    b.give_back("bob", None)
    a.give_back("bob", None)
    await b.take("carl", None)  # the gives were sent before it on the same connections
    await a.take("carl", None)
    assert redis.command("EXISTS", f"{FAILS}nick:bob").strip() == ":0"


@needs_redis
@pytest_twisted.ensureDeferred
async def test_parallel_takes_on_many_nodes_get_at_most_the_room(nodes: Nodes) -> None:
    """PASS lines racing on several nodes: at most the nick's room is taken
    (from one address, and from all)."""
    books = await nodes(4)
    limits = LoginLimits()
    failures = [RedisFailures(book.execute, Clock(), limits) for book in books]
    taken = await defer.gatherResults(
        [f.take("alice", "198.51.100.1") for _ in range(5) for f in failures])
    assert sum(taken) == limits.nick_burst  # from one address
    taken = await defer.gatherResults(
        [f.take("bob", f"198.51.{i}.{j}") for i in range(15) for j in range(2)
         for f in failures])
    assert sum(taken) == limits.nick_total_burst  # from many


# -- without Redis: what the node's connection gives the book ----------------------


def test_out_of_reach_is_unavailable_at_once() -> None:
    def down(*args: Any) -> defer.Deferred[Any]:
        return defer.fail(ConnectionError("Redis is out of reach"))

    book = RedisBook(down, Clock())
    failures: list[Any] = []
    for d in (book.get("a"), book.add("a", "h"), book.set_hash("a", "h"), book.remove("a"),
              book.list()):
        d.addErrback(failures.append)
    assert [f.check(AccountsUnavailable) for f in failures] == [AccountsUnavailable] * 5


def test_no_answer_within_the_timeout_is_unavailable() -> None:
    clock = Clock()
    sent: list[tuple[Any, ...]] = []
    answers: list[defer.Deferred[Any]] = []

    def silent(*args: Any) -> defer.Deferred[Any]:
        sent.append(args)
        answers.append(defer.Deferred())
        return answers[-1]

    book = RedisBook(silent, clock, timeout=5.0)
    results: list[Any] = []
    book.get("alice").addBoth(results.append)
    assert sent == [("HGET", ACCOUNTS, "alice")]
    clock.advance(4.9)
    assert results == []
    clock.advance(0.1)
    assert len(results) == 1 and results[0].check(AccountsUnavailable)
    # Said in words (it was Twisted's "(5.0, 'Deferred')").
    assert str(results[0].value) == ("the cluster's Redis is out of reach (no answer within "
                                     "5 seconds)")
    answers[0].callback(None)  # a late answer changes nothing
    assert len(results) == 1


def test_an_invalid_nick_is_never_sent() -> None:
    sent: list[Any] = []
    book = RedisBook(lambda *a: sent.append(a) or defer.succeed(1), Clock())
    failures: list[Any] = []
    book.add("1bad", "h").addErrback(failures.append)
    assert sent == [] and failures[0].check(ValueError)


# What the node brings with it (the replica, the hub, the fan-out, the
# metrics with prometheus_client): the operator's tool needs none of it.
NODE_MODULES = {
    "twisted_chat.server.cluster.node",
    "twisted_chat.server.cluster.replica",
    "twisted_chat.server.cluster.redislog",
    "twisted_chat.server.hub",
    "twisted_chat.server.output.fanout",
    "twisted_chat.server.metrics.counters",
    "prometheus_client",
}


@needs_redis
def test_the_accounts_tool_on_redis_loads_no_node(redis: RedisServer, tmp_path: Path) -> None:
    """C{twisted-chat-accounts list --redis URL}, run whole in a fresh
    interpreter, opens its connection through L{redisconn} alone: it does
    not import the node, its replica and hub, or prometheus (an import-time
    change there must not break the operator's tool).  The modules it did
    use are checked too, so that the run is known to have gone through the
    Redis path."""
    script = (
        "import json, sys\n"
        "from twisted_chat.accounts import main\n"
        "status = main(['list', '--redis', sys.argv[1]])\n"
        "print(json.dumps([status, sorted(sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, redis.url], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    status, loaded = json.loads(done.stdout.splitlines()[-1])
    assert status == 0, done.stderr
    assert {"twisted_chat.server.cluster.accounts",
            "twisted_chat.server.cluster.redisconn"} <= set(loaded)
    assert sorted(NODE_MODULES & set(loaded)) == []


def test_the_accounts_tool_says_which_redis_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As it names the file it changed: "added an account for gina" alone
    did not say where.  Redis's password is not shown."""
    from twisted_chat import accounts as tool

    book = SQLiteBook(AccountStore(str(tmp_path / "stand-in.sqlite3")), defer.execute)

    def on_redis(url: str, password_file: str | None,
                 work: Callable[[Any], Awaitable[None]]) -> None:
        done = defer.ensureDeferred(work(book))  # the stand-in answers inline
        assert done.called and done.result is None

    monkeypatch.setattr(tool, "_on_redis", on_redis)
    url = "redis://:s3cret@db.example:6380/2"
    where = "the Redis at redis://***@db.example:6380/2"
    for argv, said in [
        (["add", "--redis", url, "gina"], f"added an account for gina in {where}"),
        (["passwd", "--redis", url, "GINA"], f"changed the password of gina in {where}"),
        (["remove", "--redis", url, "gina"], f"removed the account of gina from {where}"),
    ]:
        out = io.StringIO()
        tool.run(argv, io.StringIO("a long password\n"), out, io.StringIO())
        assert out.getvalue() == said + "\n"
