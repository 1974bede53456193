"""
What the server's two HTTP ports (C{--metrics} and C{--web}) share: neither
takes a request body, so a request that announces one is refused before any
of it is read or spooled, and its connection closed (docs/security.md, "The
web port (`--web`)" and "The metrics port (`--metrics`)"); and neither says
what software answers (no C{Server} header).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request


class RefusingChannel(HTTPChannel):
    """
    An HTTP connection that can refuse the request being received
    (L{refuse}); it reads nothing more after that.
    """

    _refused = False

    def refuse(self, response: bytes) -> None:
        """Answer C{response} (a whole HTTP response) and close (L{close_refused})."""
        transport: Any = self.transport
        if self._refused or transport is None:
            return
        self._refused = True
        self.persistent = False
        transport.write(response)
        self.close_refused()

    def close_refused(self) -> None:
        """The close after a refusal: by default the transport's."""
        transport: Any = self.transport
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # under TLS, reading goes on until the peer's close_notify
        super().dataReceived(data)
        if self._refused:
            self.clearLineBuffer()  # the rest of the read the refused request came in


class BodilessRequest(Request):
    """
    A request that may have no body: one that announces one (a length other
    than 0, or chunked) is refused with L{body_refusal} once its headers are
    in, before any of it is read (Twisted would otherwise spool it to a file).
    """

    def setHeader(self, name: str | bytes, value: str | bytes) -> None:
        """Every header but C{Server}: Twisted's names itself and its
        version (C{TwistedWeb/26.10.0}), which tells a scanner which of its
        flaws to try; a self-hosted server has no reason to say it."""
        if (name if isinstance(name, bytes) else name.encode("ascii")).lower() == b"server":
            return
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        if length == 0:
            super().gotLength(length)
            return
        self.content = BytesIO()  # stays empty
        response = self.body_refusal()
        channel = self.channel
        if isinstance(channel, RefusingChannel):
            channel.refuse(response)

    def body_refusal(self) -> bytes:
        """The whole response that refuses this request."""
        raise NotImplementedError
