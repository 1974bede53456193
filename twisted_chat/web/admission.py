"""
The web port's HTTP connections, from accept until they are chat
connections (the WebSocket upgrade) or close.

A chat connection is counted by the chat server's factory from the moment
it is accepted.  A connection to C{--web} becomes one only at the WebSocket
upgrade; until then it is counted here:

  - C{--max-clients}: the chat connections and these, together;
  - per address, by their own cap, L{HTTP_PER_BROWSER} times
    C{--max-per-ip} (what that many browsers may open at once), and by the
    address's connection rate (the chat's own L{AddressBook}, shared with
    its chat connections);
  - the handshake pool (C{--max-handshaking}): when it is full, the oldest
    connection of the address holding most of it makes room, an HTTP one
    or a chat one.

They are not counted in C{--max-per-ip} or C{--max-handshaking-per-ip}:
those count chat connections (users), and a browser holds several HTTP
connections besides its WebSocket (the page's files, then idle keep-alive
connections), so that counting them there refused a second browser behind
the same address.  What bounds one address's HTTP connections instead is
the cap, the rate, C{--web-timeout} (each lasts at most that long) and the
keep-alive idle close (twisted_chat.web.site).

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

from twisted_chat.server.factory import FULL, ChatFactory
from twisted_chat.server.limits.addresses import Network, Refused
from twisted_chat.server.limits.handshakes import Handshaking, handshake_key
from twisted_chat.web.config import trusted

# The HTTP/1.1 connections a browser opens to one host at most (Chromium's
# and Firefox's limit): an address may hold this many per user that
# --max-per-ip allows it.
HTTP_PER_BROWSER = 6


class WebGate:
    """The web port's connections that are not chat connections (yet)."""

    def __init__(self, chat: ChatFactory, proxies: Sequence[Network] = ()) -> None:
        self.chat = chat
        self.proxies = proxies
        self.per_address = HTTP_PER_BROWSER * chat.config.max_per_ip
        # The address key each is counted under (None: not counted per address).
        self._held: dict[Handshaking, str | None] = {}
        # Per address key: how many it holds.
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held_by(self, key: str) -> int:
        return self._counts.get(key, 0)

    def admit(self, connection: Handshaking, host: str | None) -> None:
        """
        Count C{connection}, just accepted from C{host}, and set its
        C{pool_key}; or raise L{Refused}, counting nothing.
        """
        chat = self.chat
        if chat.is_full():
            raise Refused(FULL, "max_clients")
        record = None if trusted(host, self.proxies) else chat.addresses.record(host)
        key = None
        if record is not None:
            key = record.key
            if self.held_by(key) >= self.per_address:
                raise Refused(f"too many HTTP connections from {key}", "web_per_ip")
            chat.addresses.spend_connect(record)
            self._counts[key] = self.held_by(key) + 1
        connection.pool_key = handshake_key(record, host)
        chat.hold_other(connection)
        self._held[connection] = key

    def release(self, connection: Handshaking) -> None:
        """C{connection} closed, or is being upgraded: it counts no more here."""
        if connection not in self._held:
            return
        key = self._held.pop(connection)
        if key is not None:
            left = self.held_by(key) - 1
            if left > 0:
                self._counts[key] = left
            else:
                self._counts.pop(key, None)
        self.chat.release_other(connection)
