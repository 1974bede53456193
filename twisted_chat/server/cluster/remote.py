"""
The users of other nodes as a node's replica holds them: with a
L{RemoteConn}, whose writes go nowhere (their own node writes to them).

Apart from L{replica} so that the state it keeps after a loss (L{afterloss})
and the index of the node's own users (L{own}) tell them apart without
importing the replica.
"""

from __future__ import annotations

from twisted_chat.server.hub import User
from twisted_chat.wire import nick_key

__all__ = ["Nowhere", "RemoteConn", "stand_in"]


class Nowhere:
    """A connection nothing is written to."""

    __slots__ = ()
    closing = False

    def write(self, data: bytes) -> None:
        pass

    def write_private(self, data: bytes) -> None:
        pass

    def deliver(self, data: bytes) -> None:
        pass


class RemoteConn(Nowhere):
    """
    The connection of a user on another node: nothing is written here (its
    own node writes to it).  A fan-out member (L{fanout.Member}).
    """

    __slots__ = ("node",)

    def __init__(self, node: str) -> None:
        self.node = node


def stand_in(nick: str) -> User:
    """A user no hub holds (gone in events Redis lost), for its nick in a line."""
    return User(nick=nick, key=nick_key(nick), conn=RemoteConn(""), address="-")
