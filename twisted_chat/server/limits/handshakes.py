"""
The connections still in the handshake (no nick yet), overall: the pool
C{--max-handshaking} bounds, which makes room rather than refuse
(L{HandshakePool}), and the key a connection is held under in it
(L{handshake_key}).  Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar
from typing import Protocol as Structural

if TYPE_CHECKING:
    from twisted_chat.server.limits.addresses import Address

__all__ = ["EVICTION_LOOK", "HandshakePool", "Handshaking", "handshake_key"]


class Handshaking(Structural):
    """What the handshake pool holds: a connection that has no nick yet."""

    pool_key: str

    def __hash__(self) -> int: ...

    def evict(self) -> None:
        """Close it, to make room in the pool."""


def handshake_key(record: Address | None, host: str | None) -> str:
    """The key a connection from C{host} is held under in the handshake
    pool (L{HandshakePool}): its address record's (C{record}, from
    L{addresses.AddressBook.record} or C{admit}); with none (exempt, or
    a trusted proxy's), the host itself; C{"-"} with no host (a UNIX
    socket)."""
    return record.key if record is not None else (host or "-")


T = TypeVar("T", bound=Hashable)


#: How many keys at the front of the biggest class L{HandshakePool.make_room}
#: looks at for one it has evicted before.
EVICTION_LOOK = 8


@dataclass(eq=False, slots=True)
class HandshakePool(Generic[T]):
    """
    Connections still in the handshake, overall.  When the pool is full, a
    newcomer does not wait or get refused: a connection of the address
    holding the most of the pool makes room (L{make_room}).  An address
    that fills the pool so evicts its own connections, while a user from
    anywhere else gets in.

    Many addresses holding one connection each are all "the address
    holding the most": among them, an address the pool has evicted from
    before (one of the last C{memory} it evicted from) goes first, so that
    addresses churning the pool push out each other and not a newcomer
    that is still choosing its nick; otherwise the oldest goes.  Every
    operation is O(1): addresses are kept in classes by how many they
    hold, and only the first L{EVICTION_LOOK} of the biggest class are
    looked at.
    """

    limit: int
    # How many evicted-from keys are remembered (the least recent are
    # forgotten first); by default 8 x limit.
    memory: int = 0
    _by_key: dict[str, dict[T, None]] = field(default_factory=dict)
    # size -> the addresses holding that many (insertion-ordered)
    _by_size: dict[int, dict[str, None]] = field(default_factory=dict)
    _largest: int = 0
    _count: int = 0
    # The keys evicted from, least recently first.
    _evicted: dict[str, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory <= 0:
            self.memory = 8 * max(self.limit, 1)

    def __len__(self) -> int:
        return self._count

    def _move(self, key: str, old: int, new: int) -> None:
        if old:
            keys = self._by_size[old]
            del keys[key]
            if not keys:
                del self._by_size[old]
        if new:
            self._by_size.setdefault(new, {})[key] = None
            if new > self._largest:
                self._largest = new

    def add(self, key: str, item: T) -> None:
        items = self._by_key.setdefault(key, {})
        if item in items:
            return
        items[item] = None
        self._count += 1
        self._move(key, len(items) - 1, len(items))

    def discard(self, key: str, item: T) -> None:
        items = self._by_key.get(key)
        if items is None or item not in items:
            return
        del items[item]
        self._count -= 1
        self._move(key, len(items) + 1, len(items))
        if not items:
            del self._by_key[key]

    def make_room(self) -> list[T]:
        """The items to evict so that one more fits (the oldest of the
        biggest address, one evicted from before first); the caller
        discards them."""
        if self._count + 1 <= self.limit:
            return []
        while self._largest > 0 and self._largest not in self._by_size:
            self._largest -= 1
        if self._largest == 0:
            return []
        biggest = self._by_size[self._largest]
        key = next(iter(biggest))
        evicted = self._evicted
        for _, candidate in zip(range(EVICTION_LOOK), biggest, strict=False):
            if candidate in evicted:
                key = candidate
                break
        evicted.pop(key, None)
        evicted[key] = None
        if len(evicted) > self.memory:
            del evicted[next(iter(evicted))]
        return [next(iter(self._by_key[key]))]
