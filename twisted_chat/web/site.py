"""
The HTTP side of the web client, on C{twisted.web}: the page at C{/}, its
files under C{/static/}, and the WebSocket at C{/chat}, all on one port.

Every response of the site carries the security headers (L{security_headers}):
a Content-Security-Policy that lets the page run only its own scripts and
styles and connect only to its own WebSocket, C{nosniff}, and no framing.
autobahn's answers to an upgrade carry the Host-less set (the 101) or none
(its refusals): no browser applies them there (docs/web.md, "Security").

Each HTTP connection is counted against the chat server's connection limits
from the moment it is accepted, until its WebSocket upgrade or its close
(L{twisted_chat.web.admission}), and lasts at most C{--web-timeout} seconds
before the upgrade, whatever it sends (L{_Channel}).

What one connection may make the server do is bounded too: a request with
a body is refused before its body is read (the site needs only C{GET} and
C{HEAD}; Twisted spooled any body over 100 kB to a temporary file), a
connection answers at most L{MAX_REQUESTS} requests, requests are not
written to the log, and C{Range} is ignored (L{_Request}).  Nor does a
request make Twisted log its URL (L{_Page}, L{_Files}): a C{HEAD} of the
page was answered with a body, which Twisted left out with a line
quoting the request (8 KB a line, 20 a connection), as it still did for a
C{HEAD} of a 404 (L{_Headless}); a name under C{/static/} that is not UTF-8
got an error and a traceback quoting it, and one with a NUL a 500 and a
traceback at critical level.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import MultiService
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http, pages, resource, server, static

from twisted_chat.server import logs
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.limits.addresses import Refused
from twisted_chat.server.ports.httpports import BodilessRequest, RefusingChannel
from twisted_chat.server.ports.listening import PortService
from twisted_chat.tcpinfo import unsent
from twisted_chat.web.admission import WebGate
from twisted_chat.web.config import WebConfig, host_allowed, max_message_for, parse_proxies
from twisted_chat.web.gateway import ChatWebSocketFactory

STATIC = Path(str(resources.files("twisted_chat.web") / "static"))
PAGE = "index.html"  # the page's template, in STATIC; served at / only (render_page)

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


_log = logs.logger()

# What an HTTP connection over a limit is told before the close.
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n\r\n"
           b"Server is full.\n")


# Requests one HTTP connection is answered; the last is answered with
# "Connection: close" and the connection closed after it.  A page load makes
# about 4, spread over the browser's connections; a pipeliner that does not
# read gets no more than this many responses held for it.
MAX_REQUESTS = 20


def _refusal(status: bytes, host: str | None, allow: bool, head: bool = False) -> bytes:
    """The whole response to a request refused before its body is read (to
    a C{HEAD}, C{head}: the same headers, and no body, as HTTP requires)."""
    body = b"This server takes no request body.\n"
    headers = {**security_headers(host), "Connection": "close",
               "Content-Type": "text/plain; charset=utf-8",
               "Content-Length": str(len(body))}
    if head:
        body = b""
    if allow:
        headers["Allow"] = "GET, HEAD"
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return b"HTTP/1.1 " + status + b"\r\n" + lines.encode("latin-1") + b"\r\n" + body


# Seconds a kept-alive HTTP connection may wait for its next request after a
# response (a browser's page load makes its requests back to back).
KEEPALIVE_IDLE = 5.0
# Seconds between two looks at whether a slow peer has taken its response
# yet: the KEEPALIVE_IDLE it may then wait starts from the look that sees it.
TAKEN_LOOK = 1.0


class _Channel(RefusingChannel):
    """
    One HTTP connection to the web port: counted by the site's L{WebGate}
    from its accept until it closes or upgrades to the WebSocket, and
    aborted C{timeout} seconds after its accept if it has not upgraded by
    then, however it sends (Twisted's own timeout is reset by every byte
    received: one header byte every 50 s held a socket for days); closed
    L{KEEPALIVE_IDLE} seconds after its peer has taken a response if no
    request follows; closed after its L{MAX_REQUESTS}th response.
    """

    site: WebSite
    pool_key = "-"
    _deadline: IDelayedCall | None = None
    _idle: IDelayedCall | None = None
    _requests = 0
    # The transport the WebSocket took over (the channel's own is None then).
    taken: Any = None
    # The WebSocket (autobahn's protocol) its upgrade request was handed to,
    # during the read that carried the request.
    websocket: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        timeout = self.site.web.timeout
        if timeout > 0:
            self._deadline = self.callLater(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        self.site.gate.release(self)
        transport: Any = self.transport or self.taken
        if transport is not None:
            self.site.chat.stats.count_http_closed("timeout")
            # At most a few lines per address and 10 s (a slowloris is many).
            self.site.chat.repeats.log(
                _log, LogLevel.info, self.pool_key, "web-timeout",
                "HTTP connection from {peer} closed: not upgraded to the WebSocket "
                "within {timeout:g} s", peer=transport.getPeer(), timeout=self.site.web.timeout)
            transport.abortConnection()

    def upgrading(self) -> None:
        """Its WebSocket upgrade succeeded (the chat connection made for it
        is counted and timed from now on), or it closed."""
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        self.site.gate.release(self)

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            self._stop_idle()
        super().dataReceived(data)
        # Later reads go to the WebSocket itself: the channel, cyclic garbage
        # once its transport is taken over, kept the closed WebSocket alive
        # until a full collection.
        self.websocket = None

    def rawDataReceived(self, data: bytes) -> None:
        """
        What follows a WebSocket upgrade request in the same read is the
        WebSocket's, handed to it as a later read is.  twisted.web held it
        as a pipelined request, which nothing read: frames sent right
        behind the request were lost, and more than 16 KiB of them stopped
        the reading for good, until a timeout ended the connection.
        RFC 6455 (4.1) has a client wait for the 101 before it sends, as
        browsers do; one that does not had its frames read or lost by
        where the reads fell: now they are read either way.
        """
        websocket = self.websocket
        if websocket is not None:
            websocket.dataReceived(data)
            return
        super().rawDataReceived(data)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Kept alive for at most L{MAX_REQUESTS} requests."""
        self._requests += 1
        persistent: bool = super().checkPersistence(request, version)
        if persistent and self._requests >= MAX_REQUESTS:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return persistent

    def requestDone(self, request: Any) -> None:
        """A response is complete: a kept-alive connection that then waits,
        with nothing to answer, is closed L{KEEPALIVE_IDLE} seconds later
        (a browser keeps its idle ones open; each is counted)."""
        super().requestDone(request)
        if (self.transport is not None and self.persistent and not self._handlingRequest
                and not self.requests and self._idle is None):
            self._idle = self.callLater(KEEPALIVE_IDLE, self._idle_expired)

    def _idle_expired(self) -> None:
        """Closed, unless its peer is still taking the response: the
        response is done when Twisted or the kernel has it, not the peer (a
        reader at 8 KB/s was reset with a third of app.js unread)."""
        self._idle = None
        if unsent(self.transport) > 0:
            self._idle = self.callLater(TAKEN_LOOK, self._idle_once_taken)
            return
        self.loseConnection()

    def _idle_once_taken(self) -> None:
        """The idle time starts once the peer has taken the response;
        C{--web-timeout} bounds the wait."""
        self._idle = None
        if unsent(self.transport) > 0:
            self._idle = self.callLater(TAKEN_LOOK, self._idle_once_taken)
        else:
            self._idle = self.callLater(KEEPALIVE_IDLE, self._idle_expired)

    def _stop_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle.active():
            idle.cancel()

    def evict(self) -> None:
        """Make room in a full handshake pool."""
        self.upgrading()
        transport: Any = self.transport or self.taken
        if transport is not None:
            self.site.chat.stats.count_http_closed("evicted")
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_idle()
        self.upgrading()
        super().connectionLost(reason)


class _Handover:
    """The gateway as one upgrade's C{_Socket} sees it: the socket it builds
    ends C{channel}'s count when its upgrade succeeds, or when it closes."""

    def __init__(self, gateway: ChatWebSocketFactory, channel: _Channel) -> None:
        self._gateway = gateway
        self._channel = channel

    def buildProtocol(self, addr: Any) -> Any:
        socket: Any = self._gateway.buildProtocol(addr)
        if socket is not None:
            socket.handover = self._channel.upgrading
            self._channel.websocket = socket
        return socket


def _asks_for_websocket(request: server.Request) -> bool:
    """Whether C{request} asks to upgrade to a WebSocket (C{Upgrade:
    websocket}, among other protocols or not); autobahn checks the rest."""
    raw = request.getHeader(b"upgrade")
    return raw is not None and b"websocket" in (
        token.strip().lower() for token in raw.split(b","))


class _Socket(WebSocketResource):
    """
    The WebSocket at C{/chat}.  autobahn takes the connection over from
    the HTTP channel here, before it has looked at the request: the channel
    keeps counting it, and its deadline keeps running (on the taken-over
    transport), until the upgrade succeeds or the socket closes.  A request
    autobahn refuses (no C{Upgrade}, a bad key, a disallowed origin) is
    therefore still counted, and aborted at C{--web-timeout} at the latest.
    """

    def __init__(self, gateway: ChatWebSocketFactory) -> None:
        super().__init__(gateway)
        self._gateway = gateway

    def render(self, request: server.Request) -> Any:
        if not _asks_for_websocket(request):
            # Answered here, through the secured request (the security
            # headers), not by autobahn: its answer to a plain GET was its
            # own status page, without them and naming its version.
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"Upgrade", b"websocket")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"This is the chat's WebSocket: open the page at / instead.\n"
        channel = request.channel
        if not isinstance(channel, _Channel):
            return super().render(request)
        channel.taken = channel.transport
        return WebSocketResource(_Handover(self._gateway, channel)).render(request)


class _Headless:
    """A resource as a C{HEAD} renders it: the body it returns to a C{HEAD}
    is left out here, its length kept as C{Content-Length}.  Twisted left
    it out itself, with a line quoting the request, URL and all, for every
    C{HEAD} of a 404 under C{/static/} (and of C{/static}, then a redirect)
    and of C{/chat} (a 426)."""

    def __init__(self, inner: resource.IResource) -> None:
        self._inner = inner

    def render(self, request: server.Request) -> Any:
        body = self._inner.render(request)
        # Twisted answers a resource without render_HEAD with its GET
        # (its method GET meanwhile): that path logs nothing.
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


class _Request(BodilessRequest):
    """
    A request whose response, whatever it is (404s included), is secured;
    one whose C{Host} is not one of C{--web-host}'s gets C{421}, whatever
    its path (the WebSocket's included).  One with a body is refused before
    the body is read: C{405} for a method other than C{GET} and C{HEAD},
    else C{413}.  C{Range} is ignored: the files are small, and Twisted
    answered each range of a multi-range request with its own copy (300
    ranges of C{0-} were 12 MB for a 1 kB request).
    """

    def body_refusal(self) -> bytes:
        """C{405} for a method other than C{GET} and C{HEAD}, else C{413}."""
        # allHeadersReceived answers this after gotLength: no "100 Continue"
        # after the refusal.
        self.requestHeaders.removeHeader(b"expect")
        method = getattr(self.channel, "_command", None)  # not given to the request yet
        allowed = method in (b"GET", b"HEAD")
        status = b"413 Content Too Large" if allowed else b"405 Method Not Allowed"
        raw = self.getHeader(b"host")
        return _refusal(status, raw.decode("latin-1") if raw else None, not allowed,
                        head=method == b"HEAD")

    def process(self) -> None:
        self.requestHeaders.removeHeader(b"range")
        raw = self.getHeader(b"host")
        host = raw.decode("latin-1") if raw else None
        for name, value in security_headers(host).items():
            self.setHeader(name, value)
        site: Any = getattr(self.channel, "site", None)
        if site is not None and not host_allowed(host, site.web.hosts):
            self.setResponseCode(421, b"Misdirected Request")
            self.setHeader("Content-Type", "text/plain; charset=utf-8")
            self.write(b"This server does not answer to that host name.\n")
            self.finish()
            return
        super().process()

    def render(self, resrc: resource.IResource) -> None:
        """A C{HEAD}'s body is left out before Twisted sees it (L{_Headless})."""
        super().render(_Headless(resrc) if self.method == b"HEAD" else resrc)


class _Files(static.File):
    """The static directory: files only, no listings, no ranges (L{_Request}).
    Each file is revalidated on every use (C{no-cache}: a 304 while it is
    unchanged): without it a browser reused them for a tenth of their age
    without asking, so an upgraded server kept serving the old script, or
    a new page with an old script.

    The directory itself is no page: C{/static} and C{/static/} are not
    found, as any path the site does not serve, nor is the page's template
    (C{/static/index.html}).  static.File redirected the first to the
    second and answered that with the raw template, the page without the
    server's flood rule (which C{/} serves, rendered: L{render_page})."""

    contentTypes = _CONTENT_TYPES
    indexNames: list[str] = []  # no index page: getChild(b"") lists, and lists are 404s

    def render_GET(self, request: server.Request) -> Any:
        if self.isdir():
            return self.childNotFound.render(request)  # not a redirect to the listing
        request.setHeader(b"Cache-Control", b"no-cache")
        result = super().render_GET(request)
        if request.responseHeaders.hasHeader(b"accept-ranges"):
            request.responseHeaders.setRawHeaders(b"accept-ranges", [b"none"])
        return result

    render_HEAD = render_GET

    def directoryListing(self) -> resource.IResource:
        return pages.notFound()

    def getChild(self, path: bytes, request: server.Request) -> Any:
        """Not found, for a name that is not UTF-8 (Twisted's logged an
        error and a traceback, quoting the name, as long as the request
        line, for each such request), that has a NUL (valid UTF-8, but
        C{os.stat} raised C{ValueError}: a 500, and a traceback logged at
        critical level for each request), or that the file system refuses
        in any other way."""
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        if name == PAGE:
            return self.childNotFound  # the template: / serves it rendered
        try:
            return super().getChild(path, request)
        except (ValueError, OSError):
            return self.childNotFound

    def createSimilarFile(self, path: str) -> static.File:
        f = _Files(path, self.defaultType, self.ignoredExts, self.registry)
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        return f


# The server's flood rule, written into the page's <html> element: the page
# paces its own lines by it (docs/web.md, "Flood control and the user list").
# Its --max-line too: the page does not send a longer line (a paste far
# over it would close the WebSocket, 1009).
_FLOOD_RULE = re.compile(
    rb'<html([^>]*?) data-flood-rate="[^"]*" data-flood-burst="[^"]*" data-max-line="[^"]*"')


def render_page(html: bytes, flood_rate: float, flood_burst: int, max_line: int) -> bytes:
    """C{index.html} with the chat server's C{--flood-rate},
    C{--flood-burst} and C{--max-line} in its C{data-flood-rate},
    C{data-flood-burst} and C{data-max-line} (the file has the defaults,
    so the defaults serve it byte for byte)."""
    rule = (f' data-flood-rate="{flood_rate:g}" data-flood-burst="{flood_burst:d}"'
            f' data-max-line="{max_line:d}"').encode()
    page, found = _FLOOD_RULE.subn(lambda m: b"<html" + m.group(1) + rule, html, count=1)
    if not found:
        raise ValueError("index.html has no data-flood-rate, data-flood-burst and"
                         " data-max-line on <html>")
    return page


class _Page(resource.Resource):
    """C{/}: the page, rendered once (L{render_page})."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", _CONTENT_TYPES[".html"].encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._body

    render_HEAD = render_GET  # the body left out by _Headless


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
    noisy = False  # twistd says where it listens; "Starting factory <...>" adds nothing
    # HTTP/1.1 only (a WebSocket upgrade is one), on a channel that counts
    # and times its connection.
    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, root: resource.Resource, gateway: ChatWebSocketFactory,
                 chat: ChatFactory, web: WebConfig) -> None:
        super().__init__(root)
        self.gateway = gateway
        self.chat = chat
        self.config = chat.config  # what its channels read (PortSite)
        self.web = web
        self.gate = WebGate(chat, web.trusted_proxies)

    def log(self, request: http.Request) -> None:
        """No access log: each request wrote a line, its User-Agent
        included, and one pipelining connection filled the disk."""

    def buildProtocol(self, addr: Any) -> Any:
        """A connection to the web port, counted from now (or refused: a
        503 and the close, as the chat port refuses)."""
        host: str | None = getattr(addr, "host", None)
        channel = super().buildProtocol(addr)
        try:
            self.gate.admit(channel, host)
        except Refused as e:
            refusal: Protocol = self.chat.refusal(host, str(e), REFUSED, "refused_http",
                                                  e.limit)
            return refusal
        return channel


def web_site(chat: ChatFactory, web: WebConfig, reactor: Any = None,
             static_dir: Path = STATIC) -> WebSite:
    """The site for C{--web}: the page and a WebSocket into C{chat}."""
    gateway = ChatWebSocketFactory(
        chat, web, headers=security_headers(None), reactor=reactor,
        close_grace=chat.config.close_grace,
    )
    files = _Files(str(static_dir), defaultType="application/octet-stream")
    config = chat.config
    page = _Page(render_page((static_dir / PAGE).read_bytes(),
                             config.flood_rate, config.flood_burst, config.max_line))
    root = _Root(page, files, _Socket(gateway))
    site = WebSite(root, gateway, chat, web)
    if reactor is not None:
        site.reactor = reactor
    return site


def add_web(top: MultiService, options: Mapping[str, Any], factory: ChatFactory,
            reactor: Any, listening: list[tuple[str, Any]]) -> None:
    """C{--web}: the page and its WebSocket, into the same hub, one
    L{PortService} into C{top} for each endpoint of C{listening}; the
    C{--web-*} options and C{--trust-proxy} of C{options} (C{twistd chat}'s)
    make its L{WebConfig}."""
    proxies, trust_unix = parse_proxies(options["trust-proxy"])
    web = WebConfig(
        origins=tuple(options["web-origins"]),
        trusted_proxies=proxies,
        trust_unix=trust_unix,
        max_line=factory.config.max_line,
        max_message=max_message_for(factory.config.max_line),
        timeout=options["web-timeout"],
        hosts=tuple(options["web-hosts"]),
    )
    site = web_site(factory, web, reactor=reactor)
    for description, endpoint in listening:
        PortService(description, endpoint, site, "--web").setServiceParent(top)
