"""
The HTTP side of the web client, on C{twisted.web}: the page at C{/}, its
files under C{/static/}, and the WebSocket at C{/chat}, all on one port.

Every response carries the security headers (L{security_headers}): a
Content-Security-Policy that lets the page run only its own scripts and
styles and connect only to its own WebSocket, C{nosniff}, and no framing.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import ServerFactory
from twisted.web import pages, resource, server, static

from twisted_chat.web.config import WebConfig
from twisted_chat.web.gateway import ChatWebSocketFactory

STATIC = Path(str(resources.files("twisted_chat.web") / "static"))

# What the page may load: its own files, and the WebSocket it came with.
# 'self' covers ws:/wss: on the same host in CSP 3 browsers; the explicit
# ws://host and wss://host are for those that predate it.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'{sockets}; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}


def security_headers(host: str | None) -> dict[str, str]:
    """The headers every response carries, for a page served to C{host}."""
    sockets = ""
    if host and _HOST.fullmatch(host):
        sockets = f" ws://{host} wss://{host}"
    return {
        "Content-Security-Policy": _CSP.format(sockets=sockets),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


class _Request(server.Request):
    """A request whose response, whatever it is (404s included), is secured."""

    def process(self) -> None:
        host = self.getHeader(b"host")
        for name, value in security_headers(host.decode("latin-1") if host else None).items():
            self.setHeader(name, value)
        super().process()


class _Files(static.File):
    """The static directory: files only, no listings."""

    contentTypes = _CONTENT_TYPES

    def directoryListing(self) -> resource.IResource:
        return pages.notFound()

    def createSimilarFile(self, path: str) -> static.File:
        f = _Files(path, self.defaultType, self.ignoredExts, self.registry)
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        return f


class _Root(resource.Resource):
    """C{/} is the page; C{/chat} the WebSocket; C{/static/...} its files."""

    def __init__(self, page: resource.Resource, files: resource.Resource,
                 socket: Any) -> None:
        super().__init__()
        self._page = page
        self.putChild(b"static", files)
        self.putChild(b"chat", socket)

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if path == b"":
            return self._page
        return pages.notFound()


class WebSite(server.Site):
    requestFactory = _Request

    def __init__(self, root: resource.Resource, gateway: ChatWebSocketFactory) -> None:
        super().__init__(root)
        self.gateway = gateway


def web_site(chat: ServerFactory, web: WebConfig, reactor: Any = None,
             static_dir: Path = STATIC) -> WebSite:
    """The site for C{--web}: the page and a WebSocket into C{chat}."""
    gateway = ChatWebSocketFactory(
        chat, web, headers=security_headers(None), reactor=reactor
    )
    files = _Files(str(static_dir), defaultType="application/octet-stream")
    page = _Files(str(static_dir / "index.html"))
    root = _Root(page, files, WebSocketResource(gateway))
    site = WebSite(root, gateway)
    if reactor is not None:
        site.reactor = reactor
    return site
