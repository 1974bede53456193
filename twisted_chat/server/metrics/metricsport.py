"""
The metrics port (C{--metrics ENDPOINT}): a C{twisted.web} site that serves
the registry L{twisted_chat.server.metrics.counters} makes at C{/metrics}, within the
port's limits (docs/security.md), and the warning at start when it listens
on every interface.

See docs/metrics.md for what each metric means.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from twisted_chat.server.config import ServerConfig
from twisted_chat.server.limits.addresses import address_key
from twisted_chat.server.limits.buckets import Rate, TokenBucket
from twisted_chat.server.ports import listening
from twisted_chat.tcpinfo import unsent

# The metrics port's limits (docs/security.md).  A scraper needs one
# connection, kept alive or not; whoever else can reach the port gets no more
# than these, so the chat port's descriptors and the reactor stay the chat's.
#: Connections served at once; one more is closed as soon as it is accepted.
MAX_METRICS_CONNECTIONS = 8
#: Seconds a connection may last from its accept, however it sends (Twisted's
#: own idle timeout is reset by every byte); a scrape takes milliseconds, and
#: a scraper that keeps its connection alive opens another.  Also the idle
#: timeout: Twisted's is off, as it logged "Timing out client" for each
#: connection silent that long.  An answer under way at
#: its end is let finish, within L{METRICS_LIFE_LIMIT}.
METRICS_TIMEOUT = 10.0
#: Seconds from its accept at which a connection is aborted, whatever it
#: does: one whose L{METRICS_TIMEOUT} ends with an answer under way (being
#: rendered, or its peer still taking it) is given until then to finish it,
#: looked at every L{METRICS_TAKEN_LOOK} s, and closed once its peer has
#: taken it.  A 10 KB answer asked for at the last moment is taken in time
#: at 500 B/s; a peer that takes it slower than L{METRICS_DRAIN} allows
#: still gives way to a newcomer the port has no room for (L{METRICS_IDLE}).
METRICS_LIFE_LIMIT = 30.0
#: Seconds between two looks at whether an answer let finish past
#: L{METRICS_TIMEOUT} is done and taken.
METRICS_TAKEN_LOOK = 1.0
#: Of those, the connections one address may hold (an IPv6 address's is
#: its network of C{--ipv6-prefix} bits, as on the chat ports): one peer
#: cannot take them all and leave the scraper none.  A UNIX socket's
#: connections have no address: its file's permissions decide who connects.
#: On loopback every 127.x address is an address of its own, which any local
#: account may use as its source: there L{METRICS_IDLE} is what keeps a
#: scraper's way open.
MAX_METRICS_PER_ADDRESS = 2
#: Seconds a connection may be idle (since its accept or its last answer;
#: a request it has only started counts as idle) before a newcomer takes
#: its place when the port, or the newcomer's address's share, is full: the
#: oldest such connection (of that address, if its share is full) is
#: aborted.  A scrape takes milliseconds; connections held with a partial
#: request (from four 127.x addresses, two each) kept every scrape out.  An
#: answer on its way is not cut: one its peer is taking (L{unsent}) fast
#: enough to have it within L{METRICS_DRAIN} is not idle.
METRICS_IDLE = 1.0
#: Seconds from its writing within which an answer its peer is taking must
#: be taken whole, at the pace the peer has taken it so far, to keep its
#: connection from giving way (L{METRICS_IDLE}); past them, or at a pace
#: too slow for them, the connection is idle since that answer.  A whole
#: answer (about 10 KB in the text format, less gzipped, as Prometheus
#: asks) takes 2 s at 5 KB/s, a slow link's scrape (one was cut
#: 1 s after its answer): 3 s is that and half again, so a peer taking
#: 3.3 KB/s or more gets it.  Without the bound, eight peers each taking
#: 1.3 KB/s of theirs held the port for good (4 scrapes of 40).
METRICS_DRAIN = 3.0
#: Requests one connection may send; the answer to the last says
#: C{Connection: close}.  A scraper's keep-alive connection opens another.
MAX_METRICS_REQUESTS = 4
#: Renderings of the registry per second, and at once, for the whole port,
#: in the ordinary forms (L{answer_form}; a scrape renders it: milliseconds
#: of CPU).  Past them, a request gets the last answer rendered in the same
#: form, or C{503} if there is none: scrapes back to back cost twisted.web's
#: parsing, not a rendering each.  Prometheus scrapes every few seconds.
METRICS_RENDERS = Rate(4.0, 8)
#: The renderings of the forms that are not ordinary (C{name[]} filters, odd
#: C{Accept}s), apart: they do not spend the ordinary forms' (one peer asking
#: for a new filter 20 times a second took every rendering, and a scraper's
#: answer stayed as it was for as long as it went on).
METRICS_OTHER_RENDERS = Rate(1.0, 2)
#: Seconds an ordinary form's kept answer is served past the rate: one
#: older is rendered again, whatever the rate says (at most once in that
#: time for each of the L{ORDINARY_FORMS}), so however the renderings are
#: spent, a scrape's answer is never older than this.
METRICS_FRESH = 5.0
#: How many answers in forms that are not ordinary (L{answer_form}) are
#: kept, the least recent going first.  Every ordinary form's is kept.
METRICS_FORMS = 4
#: Descriptors the metrics port may hold, for the budget of
#: L{twisted_chat.server.limits.descriptors}: its connections, the one it has just
#: accepted to close, and the one aborted to make room (L{METRICS_IDLE}:
#: one at a time, until its descriptor is closed).
METRICS_DESCRIPTORS = MAX_METRICS_CONNECTIONS + 2


# The answer to a scrape that announces a body (see metrics_site).
_REFUSAL_TEXT = b"The metrics port takes no request body.\n"
_BODY_REFUSED = (b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                 b"Content-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_TEXT), _REFUSAL_TEXT))


#: What the metrics port's C{/metrics} takes, for the C{Allow} header.
ALLOWED_METHODS = "GET, HEAD, OPTIONS"


def head_as_get(app: Any) -> Any:
    """
    The WSGI app C{app} (prometheus_client's, which answers only C{GET} and
    C{OPTIONS}, and C{HEAD} with C{405}), answering C{HEAD} as C{GET}:
    twisted.web sends a C{HEAD}'s status and headers and drops its body, as
    it does for any resource.  Health checks and uptime probes often use
    C{HEAD} (C{curl -I}); before, they saw C{405} and took the port for down.
    The C{Allow} header the app sends names C{HEAD} too.
    """

    def app_with_head(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "HEAD":
            environ = {**environ, "REQUEST_METHOD": "GET"}

        def respond(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers = [(name, ALLOWED_METHODS if name.lower() == "allow" else value)
                       for name, value in headers]
            return start_response(status, headers, *exc_info)

        return app(environ, respond)

    return app_with_head


_BUSY = ("503 Service Unavailable",
         [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "1")],
         b"The metrics port is rendering too often; try again in a second.\n")


def _ordinary_types() -> frozenset[str]:
    """The content types prometheus_client answers the standard C{Accept}
    headers with: the text format 0.0.4 (no C{Accept}, or C{*/*}) and
    1.0.0, OpenMetrics 1.0.0 and 2.0.0, with each escaping they name."""
    # The escapings prometheus_client 0.26 reads from Accept (as strings: not
    # every release has names for them).
    escapings = ("allow-utf-8", "underscores", "dots", "values")
    accepts = ["", "application/openmetrics-text"] + [
        f"{kind};version={version};escaping={escaping}"
        for kind, version in (("text/plain", "1.0.0"), ("application/openmetrics-text", "1.0.0"),
                              ("application/openmetrics-text", "2.0.0"))
        for escaping in escapings]
    return frozenset(choose_encoder(accept)[1] for accept in accepts)


_ORDINARY_TYPES = _ordinary_types()

#: The most ordinary forms there are: each of those content types, gzipped
#: or not (28 with prometheus_client 0.26).
ORDINARY_FORMS = 2 * len(_ORDINARY_TYPES)

#: An answer's form: its content type, gzipped or not, the metrics a filter keeps.
Form = tuple[str, bool, tuple[str, ...]]
_Answer = tuple[str, list[tuple[str, str]], bytes]


def answer_form(environ: dict[str, Any]) -> tuple[bool, Form] | None:
    """
    The form of the answer prometheus_client's app makes to the request
    C{environ}, decided as the app decides it: the content type it chooses
    for the C{Accept} header, gzipped or not (C{Accept-Encoding}), and the
    metrics a C{name[]} filter in the query keeps; or None for a request
    that renders nothing (C{OPTIONS}, a method other than C{GET} and
    C{HEAD}, C{/favicon.ico}).  Said first: whether the form is ordinary,
    with no filter and a content type the standard C{Accept} headers get
    (at most L{ORDINARY_FORMS} of them).  Nothing else in a request (other
    query parameters, the rest of C{Accept} or C{Accept-Encoding}, C{GET}
    or C{HEAD}, the path under C{/metrics}) changes the answer, so none of
    it makes another form.
    """
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or (
            environ.get("PATH_INFO") == "/favicon.ico"):
        return None
    query = parse_qs(str(environ.get("QUERY_STRING") or ""))
    names = tuple(sorted(set(query.get("name[]", ()))))
    content_type = choose_encoder(str(environ.get("HTTP_ACCEPT") or ""))[1]
    gzipped = gzip_accepted(str(environ.get("HTTP_ACCEPT_ENCODING") or ""))
    return not names and content_type in _ORDINARY_TYPES, (content_type, gzipped, names)


def renders_bounded(app: Any, seconds: Callable[[], float],
                    rate: Rate = METRICS_RENDERS, forms: int = METRICS_FORMS,
                    other_rate: Rate = METRICS_OTHER_RENDERS,
                    fresh: float = METRICS_FRESH) -> Any:
    """
    The WSGI app C{app}, rendering the registry in the ordinary forms
    (L{answer_form}) at C{rate} at most, and in the others at C{other_rate}
    (by the clock C{seconds}); past it, a request gets the last answer
    rendered in its form, or C{503}.  Every ordinary form's answer is kept
    (there are at most L{ORDINARY_FORMS}), and an ordinary form is rendered
    past the rate when no rendering of it was started in the last C{fresh}
    seconds (one with no answer yet included); the other forms' answers are
    kept for C{forms} of them.  So a peer that varies its requests (their
    query, C{Accept}) takes renderings, but cannot push an ordinary
    scrape's answer out and leave it a C{503}, nor keep it older than
    C{fresh}.  A request that renders nothing is answered by C{app} as it
    comes.  Called on the thread pool: the buckets and the answers are
    behind a lock; the rendering is not.
    """
    lock = threading.Lock()
    bucket = TokenBucket(rate, seconds())
    other_bucket = TokenBucket(other_rate, seconds())
    ordinary: dict[Form, _Answer] = {}
    others: dict[Form, _Answer] = {}
    # When the last rendering of each ordinary form was started.
    started: dict[Form, float] = {}

    def bounded_app(environ: dict[str, Any], start_response: Any) -> Any:
        found = answer_form(environ)
        if found is None:
            return app(environ, start_response)  # a constant answer
        usual, form = found
        kept = ordinary if usual else others
        with lock:
            now = seconds()
            answer: _Answer | None = None
            if usual:
                last = started.get(form)
                if bucket.take(now) or last is None or now - last >= fresh:
                    started[form] = now
                else:  # (a first rendering still under way: no answer yet)
                    answer = kept.get(form, _BUSY)
            elif not other_bucket.take(now):
                answer = kept.get(form, _BUSY)
        if answer is None:
            got: list[tuple[str, list[tuple[str, str]]]] = []
            written: list[bytes] = []

            def respond(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                got.append((status, list(headers)))
                return written.append

            body = b"".join(app(environ, respond))
            answer = (got[0][0], got[0][1], b"".join(written) + body)
            with lock:
                kept.pop(form, None)
                kept[form] = answer
                while len(others) > forms:
                    del others[next(iter(others))]
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    return bounded_app



class _Shut(Protocol):
    """What a connection over the metrics port's limits talks to: closed at
    once, as Twisted closes one refused with C{None} over TCP (a FIN, so
    that the peer's connect does not meet a reset), and aborted under TLS,
    where its wrapper wrapped the C{None}, logged a traceback and left the
    socket open (a TLS close would wait for a peer that may never speak)."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport):
            transport.abortConnection()
        else:
            transport.loseConnection()


def metrics_site(registry: CollectorRegistry, reactor: Any = None,
                 max_connections: int = MAX_METRICS_CONNECTIONS,
                 timeout: float = METRICS_TIMEOUT, config: ServerConfig | None = None) -> Any:
    """
    A C{twisted.web} site serving C{registry} at C{/metrics}, with
    prometheus_client's WSGI app (as its Twisted resource does, and C{HEAD}
    answered: L{head_as_get}; rendered at L{METRICS_RENDERS} at most:
    L{renders_bounded}), and no access log (a scrape
    every 15 seconds would be most of the server's log); at most
    C{max_connections} at once (L{MAX_METRICS_PER_ADDRESS} of them from
    one address, IPv6 grouped by C{config}'s C{--ipv6-prefix}; one idle for
    L{METRICS_IDLE} gives way to a newcomer with no room), each for at most
    C{timeout} seconds (an answer under way then let finish, within
    L{METRICS_LIFE_LIMIT}) and L{MAX_METRICS_REQUESTS} requests; its
    connections' send buffer and close grace are C{config}'s (the chat
    server's: L{RefusingChannel}).
    """
    # Imported here: the scrape runs on the global reactor's thread pool.
    from prometheus_client.exposition import make_wsgi_app
    from twisted.internet import reactor as global_reactor
    from twisted.web import pages
    from twisted.web.resource import IResource, Resource
    from twisted.web.server import Site
    from twisted.web.wsgi import WSGIResource

    from twisted_chat.server.ports.httpports import BodilessRequest, RefusingChannel

    class MetricsRoot(Resource):
        """C{/metrics} and nothing else: another path is a plain 404, not
        the deprecated C{NoResource} a bare L{Resource} answers with."""

        def getChild(self, path: bytes, request: Any) -> IResource:
            return pages.notFound()

    class MetricsRequest(BodilessRequest):
        """A scrape has no body: one announced is refused unread, as on the
        web port."""

        def body_refusal(self) -> bytes:
            return _BODY_REFUSED

    class MetricsChannel(RefusingChannel):
        """One metrics connection: counted by its site while it is open,
        aborted C{timeout} seconds after its accept unless an answer is
        under way or its close has started (the close grace ends that one),
        or to make room for a newcomer once idle for L{METRICS_IDLE}."""

        site: MetricsSite
        _deadline: Any = None
        host: str | None = None
        served = 0
        accepted_at = 0.0
        # Whether its life has ended with an answer under way (L{_expired}).
        finishing = False
        # When it was accepted or last answered.
        active_at = 0.0
        # What its peer had not taken of its answers at its last answer.
        unsent_at_answer = 0

        def checkPersistence(self, request: Any, version: bytes) -> bool:
            self.served += 1
            if self.served >= MAX_METRICS_REQUESTS:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                return False
            return bool(super().checkPersistence(request, version))

        def connectionMade(self) -> None:
            super().connectionMade()
            self.accepted_at = self.site.clock.seconds()
            self._deadline = self.callLater(self.site.lifetime, self._expired)

        def requestDone(self, request: Any) -> None:
            self.active_at = self.site.clock.seconds()
            self.unsent_at_answer = unsent(self.transport)  # the answer, just written
            super().requestDone(request)

        def idle_since(self, now: float) -> float | None:
            """Since when it has been idle (its accept or last answer), if
            for L{METRICS_IDLE} at least, else None: no request being
            answered, and no answer on its way, one its peer takes at a
            pace that has it whole within L{METRICS_DRAIN} of its writing.
            A peer that takes none of its answer, or takes it too slowly,
            holds the connection as a partial request does."""
            if self._handlingRequest and not self.close_started:
                return None  # (a close under way has answered all it will)
            waited = now - self.active_at
            if waited < METRICS_IDLE:
                return None
            left = unsent(self.transport)
            taken = self.unsent_at_answer - left
            # left / (METRICS_DRAIN - waited) <= taken / waited, the pace so far
            if left > 0 and left * waited <= taken * (METRICS_DRAIN - waited):
                return None
            return self.active_at

        def _expired(self) -> None:
            """
            Its life is over: aborted, unless an answer is under way (being
            rendered, or its peer still taking it: L{unsent}).  That one is
            let finish, looked at every L{METRICS_TAKEN_LOOK} s, and the
            connection closed once its peer has taken it (a FIN: nothing is
            cut); it is aborted L{METRICS_LIFE_LIMIT} s after its accept,
            whatever it does.  Before, the abort at the life's end cut
            (reset) the answer of a scraper reading slower than about
            1 KB/s, and any scrape asked for near that end.  An answer
            whose close has started (C{Connection: close}, HTTP/1.0, the
            last request) is its close's: the close grace ends it.
            """
            self._deadline = None
            transport: Any = self.transport
            if transport is None:
                return
            left = self.accepted_at + METRICS_LIFE_LIMIT - self.site.clock.seconds()
            if left > 0 and self.close_started:
                # An answer ending with a close (Connection: close, HTTP/1.0,
                # the last request): the close's own grace ends it.
                self._deadline = self.callLater(left, self._expired)
                return
            if left > 0:
                if self._handlingRequest or unsent(transport) > 0:
                    self.finishing = True
                    self._deadline = self.callLater(min(METRICS_TAKEN_LOOK, left), self._expired)
                    return
                if self.finishing:
                    self.loseConnection()  # its answer taken
                    self._deadline = self.callLater(left, self._expired)  # its close's bound
                    return
            transport.abortConnection()

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            deadline, self._deadline = self._deadline, None
            if deadline is not None and deadline.active():
                deadline.cancel()
            self.site.open.pop(self, None)
            if self.site.evicted is self:
                self.site.evicted = None
            super().connectionLost(reason)

    class MetricsSite(Site):
        noisy = False
        protocol = MetricsChannel  # type: ignore[assignment]  # HTTP/1.1 only
        requestFactory = MetricsRequest

        def __init__(self) -> None:
            root = MetricsRoot()
            # prometheus_client.twisted.MetricsResource (the app on the global
            # reactor's thread pool), with HEAD answered (head_as_get).
            threads = cast(Any, global_reactor)
            clock = reactor if reactor is not None else threads
            root.putChild(b"metrics", WSGIResource(
                threads, threads.getThreadPool(), renders_bounded(
                    head_as_get(make_wsgi_app(registry)), clock.seconds)))
            super().__init__(root, timeout=None, **(  # (the lifetime ends idle ones)
                {"reactor": reactor} if reactor is not None else {}))
            self.lifetime: float = timeout
            self.clock: Any = clock
            self.config = config if config is not None else ServerConfig()  # PortSite
            # In the order accepted: of two idle as long, the older goes.
            self.open: dict[MetricsChannel, None] = {}
            # The connection aborted to make room, until it is closed.
            self.evicted: MetricsChannel | None = None

        def buildProtocol(self, addr: Any) -> Any:
            host: str | None = getattr(addr, "host", None)
            if host is not None:
                # An IPv6 network of --ipv6-prefix bits is one address, as
                # on the chat ports.
                host = address_key(host, self.config.ipv6_prefix)
            # Counted over the open channels (at most max_connections) but
            # those whose close is made: a client that reconnects at once
            # after a "Connection: close" is not refused for the one it left.
            for channel in [c for c in self.open if c.close_made()]:
                self.open.pop(channel, None)
            own = [c for c in self.open if host is not None and c.host == host]
            full = (own if len(own) >= MAX_METRICS_PER_ADDRESS
                    else self.open if len(self.open) >= max_connections else None)
            if full is not None and not self._make_room(full):
                return _Shut()
            channel = super().buildProtocol(addr)
            channel.host = host
            channel.active_at = self.clock.seconds()
            self.open[channel] = None
            return channel

        def _make_room(self, among: Any) -> bool:
            """Abort the connection of C{among} idle the longest, if one has
            been idle for L{METRICS_IDLE}; one at a time (its descriptor
            stays open until it is closed)."""
            if self.evicted is not None:
                return False
            now = self.clock.seconds()
            idle = [(since, c) for c in among if (since := c.idle_since(now)) is not None]
            if not idle:
                return False
            # min keeps the first of equals: the first accepted (self.open's order).
            _, oldest = min(idle, key=lambda entry: entry[0])
            self.open.pop(oldest, None)
            transport: Any = oldest.transport
            if transport is not None:
                self.evicted = oldest
                transport.abortConnection()
            return True

        def log(self, request: Any) -> None:
            pass

    return MetricsSite()


def exposed(endpoint: Any) -> str | None:
    """
    The warning to log at start if the metrics port's C{endpoint} listens
    on every interface (a bare C{--metrics PORT}, C{tcp:PORT} without
    C{interface=}, or an unspecified address however spelt: C{::0}): anyone
    who can reach the host may read the metrics.
    """
    if not isinstance(endpoint, listening.TCP_ENDPOINTS):
        return None  # a UNIX socket: its file's permissions decide
    address = listening.tcp_address(endpoint)
    if address is not None and not listening.every_interface(address[0]):
        return None  # one interface (with None, it cannot tell: it warns)
    return ("--metrics listens on every interface: anyone who can reach this host may "
            "read the metrics; bind it to loopback (tcp:PORT:interface=127.0.0.1) or "
            "firewall it (docs/security.md)")
