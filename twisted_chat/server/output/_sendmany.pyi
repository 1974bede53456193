# The C extension _sendmany.c (optional: sendqueue.py falls back without it).
import socket
from collections.abc import Sequence

def send_many(sockets: Sequence[socket.socket], data: bytes, /) -> list[int] | None: ...
