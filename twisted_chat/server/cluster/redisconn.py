"""
One connection to Redis, and the C{--redis} URL that says where it is.

L{parse_url} checks the whole URL (C{redis://}, C{rediss://}, C{unix://})
and L{connect} opens one txredisapi connection, authenticated and on its
database, through a Twisted endpoint.  Nothing here knows about the
cluster's keys or the node: the node's log (L{redislog}) builds its
connections and their reconnection on this, and so does the operator's tool
(C{python -m twisted_chat.accounts --redis}, L{twisted_chat.server.cluster.accounts}),
which must not load the node to open a connection.  The URL's forms:
docs/cluster.md, "Running three nodes" (C{--redis URL}).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, ssl
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from twisted_chat.server import logs
from twisted_chat.tls import load_trust_root

__all__ = ["PasswordRefused", "RedisTarget", "connect", "parse_url", "read_password_file",
           "timed_out", "tls_failure", "with_password_file"]

_log = logs.logger()


@dataclass(frozen=True, slots=True)
class RedisTarget:
    endpoint: str  # a Twisted client endpoint description (TCP or UNIX)
    password: str | None
    username: str | None
    db: int
    display: str  # the URL without its password, for the log
    tls_host: str | None = None  # rediss://: the name the certificate must carry
    # rediss://...?ca=FILE: trust its certificates (every one of a bundle),
    # not the system's; read once by parse_url, not again on the reactor at
    # each reconnection.
    trust: Any = field(default=None, compare=False, repr=False)

    def connect_to(self, reactor: Any) -> Any:
        """The endpoint to Redis (with TLS around it for rediss://)."""
        endpoint = endpoints.clientFromString(reactor, self.endpoint)  # type: ignore[no-untyped-call]
        if self.tls_host is None:
            return endpoint
        options = ssl.optionsForClientTLS(self.tls_host, trustRoot=self.trust)
        return endpoints.wrapClientTLS(options, endpoint)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


_URL_PARAMETERS = ("password", "ca", "db")
# Redis's SELECT takes an int; its databases are numbered from 0.
_DB = re.compile(r"[0-9]{1,9}")


def with_password_file(target: RedisTarget, path: str | None) -> RedisTarget:
    """
    C{target} with the password in the file C{path} (C{None}: as it is):
    C{--redis-password-file}, which keeps the password out of the command
    line, where every local user can read it (C{/proc/PID/cmdline}, C{ps}).

    @raise ValueError: the URL gives a password too, or the file cannot be
        read, or holds none (L{read_password_file}).
    """
    if path is None:
        return target
    if target.password is not None:
        raise ValueError("the URL gives a password too: give it in one place")
    return replace(target, password=read_password_file(path))


def read_password_file(path: str) -> str:
    """
    The password in the file C{path}: its first line, without the line
    break (a file written with C{echo} or an editor ends with one).

    @raise ValueError: the file cannot be read, or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except OSError as e:
        raise ValueError(f"cannot read the password file {path}: "
                         f"{e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the password file {path} is not UTF-8 text") from None
    password = line.rstrip("\r\n")
    if not password:
        raise ValueError(f"the password file {path} is empty (the password is its "
                         "first line)")
    return password


# Everything after password=: an '&' in the password not written %26 makes
# what follows look like more parameters, but it is the password's too.
_QUERY_PASSWORD = re.compile(r"([?&]password=).*", re.IGNORECASE | re.DOTALL)
# Said where an error may come from an '&' in a password= value.
_AMPERSAND = " (in a password, write & as %26)"


def redacted(url: str) -> str:
    """
    C{url} as an error message may quote it: without its password, in the
    userinfo (all of it, up to the last C{@}, goes) or in a C{password=}
    parameter (all that follows it goes).  Done on the text as given, so
    that a malformed URL (a C{#} or C{&} in the password splits it) shows
    none of it either.
    """
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        rest = "***" + rest[at:]
    return f"{scheme}{sep}{rest}"


def parse_url(url: str) -> RedisTarget:
    """
    C{redis://[[user]:password@]host[:port][/db]}, C{rediss://...} (TLS,
    the server's certificate checked against the system's trust store), or
    C{unix://[[user]:password@]/path/to/socket[?db=N]}.  A C{password=} query
    parameter works too; C{ca=FILE} (PEM) makes a rediss:// connection trust
    the certificate authorities in it (every one of a bundle) instead of the
    system's: the file is read here, once.

    The whole URL is checked here, so that a mistake stops the start rather
    than leaving a node that retries for ever: a database number from 0
    on, a port from 1, known query parameters (each once), no fragment, a
    C{ca=} file that holds certificates.

    @raise ValueError: with a sentence saying what is wrong; one that quotes
        the URL quotes it without its password (L{redacted}).
    """
    try:
        return _parse_url(url)
    except _BadURL as e:
        raise ValueError(f"{redacted(url)!r}{e}") from None


class _BadURL(ValueError):
    """What is wrong with a URL: the text after the (redacted) URL quoted."""


def _parse_url(url: str) -> RedisTarget:
    """L{parse_url}, raising L{_BadURL}."""
    parts = urllib.parse.urlsplit(url)
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                       strict_parsing=bool(parts.query))
    except ValueError:
        hint = _AMPERSAND if "password=" in parts.query.lower() else ""
        raise _BadURL(f" has a malformed query{hint}") from None
    names = [name for name, _ in pairs]
    # A name after the first password= may be a piece of the password (an
    # '&' in it): an error does not quote it (redacted() hides it too).
    first = next((i for i, name in enumerate(names) if name.lower() == "password"),
                 len(names))
    late = set(names[first + 1:])
    for i, name in enumerate(names):
        if name not in _URL_PARAMETERS:
            if i > first:
                raise _BadURL(f": unknown parameter after password= (known: "
                              f"{', '.join(_URL_PARAMETERS)}){_AMPERSAND}")
            raise _BadURL(f": unknown parameter {name!r} (known: "
                          f"{', '.join(_URL_PARAMETERS)})")
        if names.count(name) > 1:
            if name in late:
                raise _BadURL(f": a parameter after password= is given twice{_AMPERSAND}")
            raise _BadURL(f": {name}= is given twice")
    if parts.fragment:
        raise _BadURL(" has a '#' (in a password, write it %23)")
    query = {name: [value] for name, value in pairs}
    password = parts.password or (query.get("password") or [""])[0] or None
    if password is not None:
        password = urllib.parse.unquote(password)
    username = urllib.parse.unquote(parts.username) if parts.username else None
    db_text = (query.get("db") or [""])[0]
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise _BadURL(" has no host")
        path = parts.path[1:]
        if path and db_text:
            hint = _AMPERSAND if "db" in late else ""
            raise _BadURL(f": the database is given twice (path and db=){hint}")
        db_text = path or db_text
        try:
            port = parts.port
        except ValueError:
            raise _BadURL(" has a bad port") from None
        if port == 0:
            raise _BadURL(" has a bad port")
        port = port or 6379
        endpoint = f"tcp:{_escape(parts.hostname)}:{port}"
        shown = f"{scheme}://{parts.hostname}:{port}"
    elif scheme == "unix":
        if not parts.path:
            raise _BadURL(" has no socket path")
        if parts.hostname:
            raise _BadURL(": unix:// takes no host (unix:///path/to/socket)")
        endpoint = f"unix:{_escape(parts.path)}"
        shown = f"unix://{parts.path}"
    else:
        raise _BadURL(": the scheme must be redis://, rediss:// or unix://")
    if not _DB.fullmatch(db_text or "0"):
        raise _BadURL(": the database must be a number from 0 (Redis has "
                      "0 to 15 unless configured otherwise)")
    db = int(db_text or 0)
    tls = scheme == "rediss"
    ca = (query.get("ca") or [""])[0] or None
    trust = None
    if ca is not None:
        if not tls:
            raise _BadURL(f": ca= is for rediss:// only{_AMPERSAND if 'ca' in late else ''}")
        try:
            trust = load_trust_root(ca)
        except (OSError, ValueError) as e:
            if "ca" not in late:
                raise ValueError(f"cannot use ca={ca}: {e}") from None
            # The path may be a piece of the password: not quoted (nor is
            # the OSError's text, which names it).
            why = (e.strerror or "cannot be read") if isinstance(e, OSError) else str(e)
            raise ValueError(f"cannot use the ca= file given after "
                             f"password={_AMPERSAND}: {why}") from None
    return RedisTarget(endpoint, password, username, db, f"{shown}/{db}",
                       tls_host=parts.hostname if tls else None, trust=trust)


class PasswordRefused(ConnectionError):
    """Redis refused the password given (C{WRONGPASS}; C{ERR invalid
    password} before Redis 6): no retry makes it right (docs/cluster.md,
    "How Redis must be configured").  Its text is txredisapi's line;
    L{reply}, Redis's own."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


# txredisapi's text when AUTH failed, before Redis's reply.
_AUTH_FAILED = "Redis error: could not auth: "
# Redis's replies to a wrong password (6 and later; before 6).
_WRONG_PASSWORD = ("WRONGPASS", "ERR invalid password")


def _setup_failed(error: str | None) -> ConnectionError:
    """The error of a connection whose AUTH or SELECT failed (txredisapi's
    C{error}, or none: it closed first)."""
    if error is None:
        return ConnectionError("the connection closed during set-up")
    reply = error.removeprefix(_AUTH_FAILED)
    if reply != error and reply.startswith(_WRONG_PASSWORD):
        return PasswordRefused(error, reply)
    return ConnectionError(error)


class _NoFactory:
    """What txredisapi's protocol asks of its factory when AUTH or SELECT fails."""

    isLazy = False

    def __init__(self) -> None:
        self.error: str | None = None

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.error = message


class _OneConnection(Factory):
    """Hands out one protocol; quiet (no "Starting factory" line per retry)."""

    noisy = False

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Any:
        return self.proto


class _KeepsLoss:
    """Keeps why its connection was lost (L{lost_reason}, Twisted's
    reason: the TLS layer's error when the handshake failed), which
    txredisapi drops (its waiting commands fail as "Lost connection"), and
    whether its reply timeout failed a command (L{reply_timed_out})."""

    lost_reason: Failure | None = None
    reply_timed_out = False

    def connectionLost(self, why: Failure) -> None:
        self.lost_reason = why
        super().connectionLost(why)  # type: ignore[misc]

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        d = super().execute_command(*args, **kwargs)  # type: ignore[misc]
        d.addErrback(self._note_timeout)
        return d

    def _note_timeout(self, why: Failure) -> Failure:
        """txredisapi fails a command with its C{TimeoutError} just before
        its reply timeout aborts the connection: noted here, as the loss's
        reason does not say it over TLS (C{ConnectionLost}, not
        C{ConnectionAborted})."""
        if isinstance(why.value, txredisapi.TimeoutError):
            self.reply_timed_out = True
        return why


def timed_out(proto: Any) -> bool:
    """Whether C{proto}'s connection was ended by txredisapi's reply
    timeout (its abort), not by Redis nor the network."""
    return bool(getattr(proto, "reply_timed_out", False))


class _WholeReads:
    """
    Hands on all of a read's replies in the turn it came.
    txredisapi's C{LineReceiver} hands the rest of a read back through
    C{callLater(0)} after every bulk string, its transport paused meanwhile
    (C{setLineMode}): a pub/sub message (three bulk strings) took three
    reactor turns, and the lobby's fan-out, which sends what a turn
    gathered at its end, wrote each event's lines alone.  Here the rest is
    handled at once, in a loop (not by recursion), unless C{due} (set by
    the node's log: the fan-out's C{LobbyFanout.due}; none, a read is
    handed on whole), asked between two bulk strings, says the waiting
    lines (the lobby's, or the paired users' beside them) are due: then
    the rest waits one turn, as txredisapi had it, and the fan-out's turn
    ends first.

    A reply or event whose handling raises (L{replyReceived}) is logged,
    and the rest of the read is still handed on, in order.
    """

    # Asked between two bulk strings of a read: whether the rest waits a turn.
    due: Callable[[], bool] | None = None
    _rest: bytes = b""
    # What came while the rest waited (Twisted's TLS layer hands
    # on every record of one socket read, paused or not; txredisapi would
    # put it before the rest).  At most what is left of that one read (64
    # KiB and a record): the transport under TLS is paused.
    _held: bytes = b""
    # txredisapi's (LineReceiver's), typed for the methods below.
    line_mode: int
    paused: bool
    transport: Any
    callLater: Any
    pauseProducing: Callable[[], None]

    def setLineMode(self, extra: bytes = b"") -> None:
        self.line_mode = 1
        self._rest = extra  # handed on by dataReceived's loop

    def replyReceived(self, reply: Any) -> None:
        """txredisapi's: a whole reply (a command's answer, or an event on
        the channel: C{heard}), handed on from inside its parse of a read.
        One whose handling raised took the rest of that read with it
        (the parse stopped before C{setLineMode} was given it, the events
        after it lost), and the error ended the connection or, on a read
        put off a turn, was only the reactor's to log."""
        try:
            super().replyReceived(reply)  # type: ignore[misc]
        except Exception:
            _log.failure("cluster: handling a reply from Redis failed; the rest of "
                         "its read is handed on")

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        if unpause:  # the rest of a read put off (below), then what came meanwhile
            self.paused = False
            self.transport.resumeProducing()
            data, self._held = data + self._held, b""
        elif self.paused:  # TLS hands on a read's later records while its rest waits
            self._held += data
            return
        super().dataReceived(data)  # type: ignore[misc]
        while self._rest:
            rest, self._rest = self._rest, b""
            due = self.due
            if due is not None and due():
                self.pauseProducing()
                self.callLater(0, self.dataReceived, rest, True)
                return
            super().dataReceived(rest)  # type: ignore[misc]


# txredisapi's SubscriberProtocol on its line parser, BaseRedisProtocol:
# its RedisProtocol (SubscriberProtocol's base) is HiredisProtocol when
# hiredis is importable, which parses a read in its own dataReceived and
# skips _WholeReads and due.  SubscriberProtocol's methods are its
# own (tests/test_third_party.py checks); not its __module__ (this class is
# ours, not txredisapi's, in reprs and tracebacks) nor its __doc__.
_LineSubscriber = type("_LineSubscriber", (txredisapi.BaseRedisProtocol,), {
    name: value for name, value in vars(txredisapi.SubscriberProtocol).items()
    if name not in ("__dict__", "__weakref__", "__module__", "__doc__")})


class _Commands(_KeepsLoss, _WholeReads, txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """A connection for commands."""


class _Subscriber(_KeepsLoss, _WholeReads, _LineSubscriber):  # type: ignore[misc,valid-type]
    """A subscribed connection: hands each message's text to C{heard}."""

    def heard(self, message: str) -> None:
        pass

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.heard(message)


async def connect(target: RedisTarget, reactor: Any, reply_timeout: float | None = None,
                  opening: list[Any] | None = None, subscriber: bool = False) -> Any:
    """
    One txredisapi connection to C{target}, authenticated and on its
    database; fails with C{ConnectionError} (L{PasswordRefused}: a wrong
    password), or the endpoint's error.

    @param reply_timeout: txredisapi's: a reply that takes longer fails, and
        the connection is dropped.
    @param opening: the protocol is appended to it before it connects.
    @param subscriber: for C{SUBSCRIBE} (a L{_Subscriber}; it can then run
        only C{PING} and the pub/sub commands).

    txredisapi internals used here (it pins nothing: C{>=1.4.10} in
    pyproject; tests/test_third_party.py checks both on the installed
    version, and fails at an upgrade that drops one):
      - C{callLater}, a class attribute its reply timer is looked up on: set
        to C{reactor}'s, so the timeout runs on the node's reactor (renamed:
        it would run on the global reactor);
      - C{_ready}, its flag for AUTH and SELECT having succeeded (its public
        C{connected} is set before they are sent).  There is no fallback:
        renamed, every connection fails (AttributeError) and the node never
        joins the cluster;
      - C{LineReceiver.setLineMode(extra)}, called with the rest of a read
        after each bulk string, C{dataReceived(data)}, and
        C{replyReceived(reply)}, called with each whole reply before that
        rest (L{_WholeReads});
      - C{BaseRedisProtocol}, its line parser, and C{SubscriberProtocol}'s
        own methods, put on it (L{_LineSubscriber});
      - C{TimeoutError}, failing a command just before the reply timeout
        aborts the connection (L{_KeepsLoss}).
    """
    factory = _NoFactory()
    kind = _Subscriber if subscriber else _Commands
    proto = kind(
        charset="utf-8", password=target.password, dbid=target.db or None,
        convertNumbers=False, username=target.username, replyTimeout=reply_timeout,
    )
    proto.callLater = reactor.callLater  # its reply timer, on our reactor
    proto.factory = factory
    if opening is not None:
        opening.append(proto)
    endpoint = target.connect_to(reactor)
    connected = proto.whenConnected()
    await endpoint.connect(_OneConnection(proto))
    lost = proto.whenDisconnected()
    await defer.DeferredList([connected, lost], fireOnOneCallback=True)
    if not proto._ready:  # txredisapi's: AUTH and SELECT succeeded (see above)
        raise _setup_failed(factory.error)
    return proto


def tls_failure(proto: Any, target: RedisTarget) -> str | None:
    """
    Why TLS ended C{proto}'s connection to C{target}, if it did (its
    handshake: a certificate not trusted, or not for the host; Redis not
    speaking TLS there), in words for the log; else C{None}
    (before, it was logged as txredisapi's "Not connected").
    """
    why = getattr(proto, "lost_reason", None)
    if why is None:
        return None
    if why.check(VerificationError):
        return f"TLS: Redis's certificate is not for {target.tls_host}"
    if not why.check(SSL.Error):
        return None
    errors = why.value.args[0] if why.value.args else []
    text = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple) and e) or str(why.value)
    if "certificate verify failed" in text:
        trusted = "the ca= file's" if target.trust is not None else "the system's"
        return f"TLS: Redis's certificate is not trusted ({text}; this node trusts {trusted} CAs)"
    return f"TLS handshake failed: {text}"
