"""
The per-address limits as a pure module: buckets, exemptions, the
handshake pool and the memory bound.  Time is a task.Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twisted_chat.server.limits.addresses import (
    AddressBook,
    AddressPolicy,
    Refused,
    address_key,
    networks,
)
from twisted_chat.server.limits.buckets import Rate
from twisted_chat.server.limits.handshakes import HandshakePool
from twisted_chat.server.logs import Repeats


def book(**kw: object) -> tuple[AddressBook, Clock]:
    clock = Clock()
    clock.advance(1000)
    return AddressBook(AddressPolicy(**kw), clock), clock  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


def test_ipv6_prefix_is_a_setting() -> None:
    assert address_key("2001:db8:1:2:3::1", 48) == "2001:db8:1::/48"
    assert address_key("2001:db8:1:2:3::1", 128) == "2001:db8:1:2:3::1/128"


def test_log_lines_are_limited_per_address_bucket_or_all_unix_ones_together() -> None:
    b, _ = book(v6_prefix=48, exempt=networks(["192.0.2.0/24"]))
    assert b.log_key("2001:db8:1:2:3::1") == "2001:db8:1::/48"
    assert b.log_key("192.0.2.7") == "192.0.2.7"  # exempt from limits, not from this
    assert b.log_key(None) == "-"


def test_max_per_ip_counts_every_connection_of_the_address() -> None:
    b, _ = book(max_per_ip=2, max_handshaking_per_ip=10, connect=Rate(0, 0))
    one = b.admit("2001:db8::1")
    two = b.admit("2001:db8::2")  # same /64: same address
    assert one is two
    with pytest.raises(Refused, match="too many connections from 2001:db8::/64"):
        b.admit("2001:db8::3")
    assert b.admit("2001:db8:0:1::1") is not None  # another /64
    b.closed(one, handshaking=True)
    assert b.admit("2001:db8::3") is one


def test_handshaking_connections_per_address() -> None:
    b, _ = book(max_per_ip=10, max_handshaking_per_ip=2, connect=Rate(0, 0))
    a = b.admit("192.0.2.1")
    b.admit("192.0.2.1")
    with pytest.raises(Refused, match="still choosing a nick"):
        b.admit("192.0.2.1")
    b.registered(a)  # one of them got a nick: room for another
    assert b.admit("192.0.2.1") is a
    assert a is not None and (a.connections, a.handshaking) == (3, 2)


def test_new_connections_per_second_and_refusals_spend_nothing() -> None:
    b, clock = book(connect=Rate(1.0, 3), max_handshaking_per_ip=100, max_per_ip=100)
    for _ in range(3):
        b.admit("192.0.2.1")
    for _ in range(50):
        with pytest.raises(Refused, match="too many new connections"):
            b.admit("192.0.2.1")
    clock.advance(1.0)
    assert b.admit("192.0.2.1") is not None  # the refusals did not push it back


def test_exempt_addresses_have_no_record_and_no_limit() -> None:
    b, _ = book(max_per_ip=1, exempt=networks(["127.0.0.0/8", "2001:db8::/32"]))
    assert all(b.admit("127.0.0.9") is None for _ in range(100))
    assert b.admit("2001:db8:5::1") is None
    assert b.admit("::ffff:127.0.0.1") is None
    assert b.admit("192.0.2.1") is not None
    assert len(b) == 1


def test_an_exempt_address_in_the_mapped_form_is_its_ipv4_address() -> None:
    # A peer of a dual-stack port (::ffff:a.b.c.d) is compared as IPv4, so
    # --exempt ::ffff:127.0.0.1 must name 127.0.0.1 to match it at all.
    b, _ = book(max_per_ip=1, exempt=networks(["::ffff:127.0.0.1", "::ffff:10.0.0.0/104"]))
    assert b.admit("::ffff:127.0.0.1") is None
    assert b.admit("127.0.0.1") is None
    assert b.admit("10.200.0.1") is None
    assert b.admit("192.0.2.1") is not None


def test_nothing_is_exempt_by_default_not_even_loopback() -> None:
    b, _ = book(max_per_ip=1)
    b.admit("127.0.0.1")
    with pytest.raises(Refused):
        b.admit("127.0.0.1")
    b.admit("::1")
    with pytest.raises(Refused):
        b.admit("::1")


def test_no_host_is_not_limited() -> None:
    b, _ = book(max_per_ip=1)
    assert b.admit(None) is None and b.admit(None) is None


def test_registrations_per_second() -> None:
    b, clock = book(register=Rate(0.5, 2))
    record = b.admit("192.0.2.1")
    for _ in range(2):
        assert b.reserve_registration(record) == 0.0  # reserved: spent now
        b.registered(record)
    assert b.reserve_registration(record) == pytest.approx(2.0)
    clock.advance(2.0)
    assert b.reserve_registration(record) == 0.0
    assert b.reserve_registration(None) == 0.0


def test_a_registration_reserved_is_spent_until_given_back() -> None:
    """NICKs of one address under way at once are judged one after the
    other: each reserves its registration, and one that does not happen
    gives it back."""
    b, _ = book(register=Rate(0.5, 1))
    record = b.admit("192.0.2.1")
    assert b.reserve_registration(record) == 0.0
    assert b.reserve_registration(record) == pytest.approx(2.0)
    b.release_registration(record)
    assert b.reserve_registration(record) == 0.0
    b.release_registration(None)


def test_lobby_lines_shared_by_the_connections_of_an_address() -> None:
    b, clock = book(lobby=Rate(10.0, 5))
    first = b.admit("192.0.2.1")
    second = b.admit("192.0.2.1")
    assert [b.lobby_line(first) for _ in range(3)] == [True] * 3
    assert [b.lobby_line(second) for _ in range(3)] == [True, True, False]
    clock.advance(0.1)
    assert b.lobby_line(second)
    assert b.lobby_line(None)


def _held_lines(b: AddressBook, clock: Clock, gap: float, n: int, held: bool) -> int:
    """C{n} lobby lines from one address, C{gap} seconds apart: the first
    is handled as it comes and waits (for Redis, in an outage), the others
    are held behind it and judged one after the other when it is answered;
    C{held}: told when each came (ChatProtocol.held_at).  How many go
    through."""
    record = b.admit("192.0.2.1")
    start = clock.seconds()
    first = b.lobby_line(record)  # the command they wait behind
    clock.advance(gap * (n - 1))
    return (first is True) + sum(
        b.lobby_line(record, start + i * gap if held else None) is True for i in range(1, n))


def test_lobby_lines_held_through_an_outage_are_judged_as_of_when_they_came() -> None:
    """100 lines at 5 a second (a quarter of --ip-lobby-rate) through a
    20 s outage all go through; judged as they are handled, only a burst's
    worth and what came back meanwhile did (41: rev11-clu2 #1, the lobby
    budget); 100 lines that came at once are still cut at the burst."""
    b, clock = book(lobby=Rate(20.0, 40))
    assert _held_lines(b, clock, 0.2, 100, held=True) == 100
    b, clock = book(lobby=Rate(20.0, 40))
    assert _held_lines(b, clock, 0.2, 100, held=False) == 41
    b, clock = book(lobby=Rate(20.0, 40))
    assert _held_lines(b, clock, 0.0, 100, held=True) == 40


def test_the_record_outlives_its_connections_until_it_is_quiet() -> None:
    b, clock = book(lobby=Rate(10.0, 5), flood_burst=20)
    record = b.admit("192.0.2.1")
    assert record is not None
    record.penalty.add(clock.seconds())
    b.closed(record, handshaking=True)
    # Back within the penalty's drain time: the same record, penalty kept.
    clock.advance(0.2)
    again = b.admit("192.0.2.1")
    assert again is record and record.penalty.value > 0
    b.closed(again, handshaking=True)
    clock.advance(60)
    b.record("192.0.2.99")  # any activity forgets quiet records
    assert b.record("192.0.2.1") is not record


def test_tracked_records_are_capped() -> None:
    b, _ = book(max_tracked=100, connect=Rate(0.001, 1))
    held = b.admit("198.51.100.1")
    for i in range(1000):
        b.closed(b.admit(f"10.{i // 250}.{i % 250}.1"), handshaking=True)
    assert len(b) <= 101
    assert b.record("198.51.100.1") is held  # one with a connection is never forgotten


def test_handshake_pool_evicts_the_oldest_of_the_biggest_address() -> None:
    pool: HandshakePool[str] = HandshakePool(limit=4)
    for item in ("a1", "a2", "a3"):
        pool.add("A", item)
    pool.add("B", "b1")
    assert pool.make_room() == ["a1"]
    pool.discard("A", "a1")
    pool.add("C", "c1")
    assert len(pool) == 4
    assert pool.make_room() == ["a2"]
    pool.discard("A", "a2")
    pool.discard("A", "a2")  # twice is harmless
    assert len(pool) == 3
    assert pool.make_room() == []


def test_repeats_are_limited_per_address_and_kind() -> None:
    clock = Clock()
    repeats = Repeats(clock, window=10.0, burst=2)
    assert [repeats.allow("a", "refused") for _ in range(5)] == [0, 0, None, None, None]
    assert repeats.allow("b", "refused") == 0
    assert repeats.allow("a", "sendq") == 0
    clock.advance(10)
    assert repeats.allow("a", "refused") == 3  # says how many were left out


def test_repeats_remember_a_bounded_number_of_keys() -> None:
    repeats = Repeats(Clock(), max_keys=10)
    for i in range(100):
        repeats.allow(str(i), "x")
    assert len(repeats._seen) == 10


def test_handshake_pool_finds_the_biggest_address_among_many() -> None:
    pool: HandshakePool[str] = HandshakePool(limit=1001)
    for i in range(997):
        pool.add(f"single{i}", f"s{i}")
    for item in ("b1", "b2", "b3", "b4"):
        pool.add("big", item)
    assert pool.make_room() == ["b1"]
    pool.discard("big", "b1")
    pool.add("other", "o1")
    assert pool.make_room() == ["b2"]
    for item in ("b2", "b3", "b4"):
        pool.discard("big", item)
    for item in ("x1", "x2", "x3"):
        pool.add("x", item)
    assert len(pool) == 1001
    assert pool.make_room() == ["x1"]


def test_handshake_pool_keeps_a_newcomer_while_many_addresses_churn_it() -> None:
    # rev13-attack 2: 40 addresses each open one connection a second into a
    # pool of 20 (each holding one: all tied as "the address holding the
    # most"); a user from elsewhere, typing its nick, stays in the pool.
    clock = Clock()
    pool: HandshakePool[str] = HandshakePool(limit=20)
    held: dict[str, str] = {}  # item -> key, what is in the pool
    serial = [0]

    def join(key: str) -> str:
        serial[0] += 1
        item = f"{key}#{serial[0]}"
        for victim in pool.make_room():
            pool.discard(held.pop(victim), victim)
        pool.add(key, item)
        held[item] = key
        return item

    def attacker(i: int) -> None:
        join(f"attacker{i}")
        clock.callLater(1.0, attacker, i)

    for i in range(40):
        clock.callLater(i / 40, attacker, i)
    clock.advance(3.0)
    assert len(pool) == 20
    newcomer = join("human")
    for _ in range(60):
        clock.advance(0.1)
        assert newcomer in held
    assert len(pool) == 20
    # The addresses churning it still get in, each pushing out another.
    assert sum(1 for key in held.values() if key != "human") == 19


def test_handshake_pool_remembers_a_bounded_number_of_evicted_keys() -> None:
    pool: HandshakePool[str] = HandshakePool(limit=1, memory=3)
    pool.add("k0", "i0")
    for i in range(1, 10):
        assert pool.make_room() == [f"i{i - 1}"]
        pool.discard(f"k{i - 1}", f"i{i - 1}")
        pool.add(f"k{i}", f"i{i}")
    assert list(pool._evicted) == ["k6", "k7", "k8"]


def test_handshake_pool_remembers_the_addresses_it_evicted_from_last() -> None:
    """The tie-break's memory is of the addresses evicted from *last*
    (docs/security.md, --max-handshaking): one evicted from again is
    remembered anew.  Memory 2 here: A is evicted from, then B, then A
    again, then C; A is remembered (B is forgotten), so when the pool is
    full of addresses holding one each, A's connection goes, not N's, a
    newcomer older than it.  Kept in the order of first eviction (mutation
    audit F12), A was forgotten behind B and C, and N, the oldest, went:
    an address churning the pool all along is forgotten once 8 x the pool
    of others were evicted from once, however long ago."""
    pool: HandshakePool[str] = HandshakePool(limit=4, memory=2)

    def evict(key: str, item: str) -> None:
        assert pool.make_room() == [item]
        pool.discard(key, item)

    pool.add("N", "n1")
    pool.add("A", "a1")
    pool.add("A", "a2")
    pool.add("B", "b1")
    evict("A", "a1")  # the biggest address each time: here A, holding 2
    pool.add("B", "b2")
    evict("B", "b1")
    pool.add("A", "a3")
    evict("A", "a2")
    pool.discard("B", "b2")  # it chose its nick
    pool.add("C", "c1")
    pool.add("C", "c2")
    evict("C", "c1")
    pool.discard("C", "c2")
    pool.add("D", "d1")
    pool.add("E", "e1")
    # Full, each holding one: N (the oldest), A, D, E.
    assert pool.make_room() == ["a3"]
