"""
The web port's HTTP connections, from accept until they are chat
connections (the WebSocket upgrade) or close.

A chat connection is counted by the chat server's factory from the moment
it is accepted.  A connection to C{--web} becomes one only at the WebSocket
upgrade; until then it is counted here, against the same limits and the
same counters, so that TCP and web connections from one address are counted
together from the start:

  - C{--max-clients}: the chat connections and these, together;
  - the address's limits (C{--max-per-ip}, C{--max-handshaking-per-ip}, the
    connection rate), in the chat's own L{AddressBook}: until it upgrades,
    an HTTP connection is a connection that has not chosen a nick;
  - the handshake pool (C{--max-handshaking}): when it is full, the oldest
    connection of the address holding most of it makes room, an HTTP one
    or a chat one.

A trusted proxy's connections (C{--trust-proxy}) are many users', whose
addresses are known only from the upgrade's C{X-Forwarded-For}: they are
not counted against the proxy's address (only in the total and the pool);
each user's address is counted by the chat connection, at the upgrade.

At the upgrade the connection leaves these counts, and the chat connection
made for it is counted from then on (so a WebSocket spends two tokens of
its address's connection rate: one at accept, one at the upgrade).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted_chat.server.addresses import Address, Network, Refused
from twisted_chat.server.factory import FULL, ChatFactory, Handshaking
from twisted_chat.web.config import trusted


class WebGate:
    """The web port's connections that are not chat connections (yet)."""

    def __init__(self, chat: ChatFactory, proxies: Sequence[Network] = ()) -> None:
        self.chat = chat
        self.proxies = proxies
        # What each holds of its address's limits (None: not counted there).
        self._held: dict[Handshaking, Address | None] = {}

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, connection: Handshaking, host: str | None) -> None:
        """
        Count C{connection}, just accepted from C{host}, and set its
        C{pool_key}; or raise L{Refused}, counting nothing.
        """
        chat = self.chat
        if len(chat.connections) + chat.other_connections >= chat.config.max_clients:
            raise Refused(FULL)
        record = None if trusted(host, self.proxies) else chat.addresses.admit(host)
        connection.pool_key = record.key if record is not None else (host or "-")
        chat.make_room()
        chat.handshaking.add(connection.pool_key, connection)
        chat.other_connections += 1
        self._held[connection] = record

    def release(self, connection: Handshaking) -> None:
        """C{connection} closed, or is being upgraded: it counts no more here."""
        if connection not in self._held:
            return
        record = self._held.pop(connection)
        chat = self.chat
        chat.handshaking.discard(connection.pool_key, connection)
        chat.addresses.closed(record, handshaking=True)
        chat.other_connections -= 1
