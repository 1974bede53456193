"""
C{python -m twisted_chat.client [--nick NICK] [--tls] [--ca FILE] HOST [PORT]}
C{python -m twisted_chat.client [--nick NICK] unix:PATH}

Runs on the Twisted reactor: the server connection is a client endpoint
(TCP, TLS through L{optionsForClientTLS}, or a UNIX socket: the server's
C{--port unix:PATH}), the keyboard and screen are
L{StandardIO}.  No threads, no blocking reads.

On a terminal (stdin and stdout both ttys) the terminal goes into raw mode and
L{ChatTerminal} edits the input line; otherwise lines are read from stdin and
plain text written to stdout.  On a terminal, a restart or a lost connection
is followed by another connection (L{twisted_chat.client.reconnect}).
Diagnostics go to stderr; the exit code is 0
after a normal quit, 1 when the server cannot be reached, refuses TLS, does
not answer in time or drops the connection, or did not accept messages sent,
2 for bad options, and 130 when interrupted (Ctrl-C, SIGINT) before the chat
was joined, with typed lines still waiting to go out, or at any time in a
script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet import defer, task
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import provider

from twisted_chat import version_line
from twisted_chat.client import render
from twisted_chat.client.lobbyview import ShownLobby
from twisted_chat.client.login import NickTries
from twisted_chat.client.pipe import PipeIO
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.reconnect import Reconnecting
from twisted_chat.tcpinfo import buffered
from twisted_chat.tls import load_trust_root
from twisted_chat.wire import DEFAULT_PORT, is_valid_nick

if TYPE_CHECKING:
    from twisted_chat.client.terminal import ChatTerminal

PROGRAM = "twisted-chat"
# At the end, a terminal gets this long to take the last output.
CLOSE_TIMEOUT = 5.0
# A script's output that stdout has not taken when the session ends (a pager,
# a slow pipe) is waited for as long as stdout takes some of it at least this
# often; what is left then is not written, and said on stderr (exit 1).
OUTPUT_TIMEOUT = 60.0
# Seconds to wait for the connection, then again for the server's greeting,
# and for its answer to each nickname or password sent.
DEFAULT_TIMEOUT = 15.0

DESCRIPTION = """\
Chat on a twisted-chat (chat/1) server from a terminal.

Type a line and press Enter to talk to everyone in the lobby. Commands start
with a slash: /users, /pair NICK, /accept NICK, /reject NICK, /unpair (/leave),
/dm NICK TEXT (or @NICK TEXT), /help and /quit (/q).
"""

EPILOG = """\
When stdin is not a terminal, each input line is sent as if typed and output
is plain text; at the end of input the client says goodbye and exits.
Colours are used only on a terminal and never when NO_COLOR is set (bold and
reverse video, which marks a line that names you, stay).

Exit status: 0 after a normal quit, 1 when the server cannot be reached,
refuses TLS, does not answer (or read) in time or drops the connection,
when messages sent were not accepted (the client says how many), or when
stdout took none of a script's last output for 60 s or, where that cannot be
measured, had not taken it all after 60 s (not cut silently: the client says
what was not written), 2 for bad options, 130 when interrupted before the
chat was joined, with typed lines still waiting to go out (the client says
how many), or in a script.
Ctrl-D on an empty line sends the lines still waiting, then leaves.
On a terminal, once joined, a server restart or a lost connection is followed
by a new connection (backoff 1, 2, 4 ... 30 s) under the same nickname, with
the password typed this session (kept in memory only); /reconnect tries at
once, /quit leaves. --no-reconnect (and a script) exits instead.

examples:
  python -m twisted_chat.client chat.example.org
  python -m twisted_chat.client --nick alice --tls chat.example.org 7443
  python -m twisted_chat.client unix:/run/twisted-chat/chat.sock
  echo "hello from cron" | python -m twisted_chat.client --nick robot localhost
"""


def is_terminal() -> bool:
    """Interactive mode needs both ends on a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def wants_colour(environ: Mapping[str, str]) -> bool:
    """Colours (on a terminal) unless NO_COLOR is set and not empty, or TERM=dumb."""
    return environ.get("NO_COLOR", "") == "" and wants_styles(environ)


def wants_styles(environ: Mapping[str, str]) -> bool:
    """Bold and reverse video (a mention) even under NO_COLOR; not for TERM=dumb."""
    return environ.get("TERM", "") != "dumb"


def terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns, size.lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_chat.client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--nick", metavar="NICK", help="the nickname to use (asked for when not given)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS and verify the server's certificate "
        "(against the system's trusted authorities, or --ca)",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="PEM file with the certificate authority (or self-signed server "
        "certificate) to trust for --tls",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help="give up when the connection, the server's greeting, or its answer to a "
        "nickname or password takes longer than this, or when the server takes nothing "
        f"the client sends for this long (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="do not show the lobby's recent messages after joining (for scripts)",
    )
    parser.add_argument(
        "--no-bell",
        action="store_true",
        help="do not ring the terminal bell for a mention, a private message or an "
        "invitation (it never rings in a script)",
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="on a terminal, exit when the server restarts or the connection is lost, "
        "instead of connecting again (a script, whose stdin is not a terminal, always "
        "exits)",
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "host",
        metavar="HOST",
        help="the server's host name or address, or unix:PATH for the UNIX socket a "
        "server listens on (its --port unix:PATH; a HOST with a / in it is a path too)",
    )
    parser.add_argument(
        "port",
        metavar="PORT",
        nargs="?",
        type=_port,
        help=f"the server's port (default {DEFAULT_PORT})",
    )
    return parser


def unix_path(host: str) -> str | None:
    """The socket's path when C{host} names a UNIX socket (C{unix:PATH},
    or a path: no host name has a C{/}), else C{None}."""
    if host.startswith("unix:"):
        return host[len("unix:"):]
    return host if "/" in host else None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"out of range (0 to 86400 seconds): {text}")
    return seconds


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.nick is not None and not is_valid_nick(options.nick):
        parser.error(
            f"--nick {options.nick!r} is not a valid nickname (1-24 letters, digits, "
            "_ or -, starting with a letter)"
        )
    options.unix = unix_path(options.host)
    if options.unix is not None:
        if not options.unix:
            parser.error("unix: needs the socket's path, e.g. unix:/tmp/chat.sock")
        if options.port is not None:
            parser.error(f"{options.host} is a UNIX socket: it takes no PORT")
        if options.tls or options.ca is not None:
            parser.error("--tls and --ca are for TCP: a UNIX socket does not leave "
                         "this machine")
    if options.port is None:
        options.port = DEFAULT_PORT
    if options.ca is not None and not options.tls:
        options.tls = True  # --ca only makes sense with TLS
    if options.ca is not None:
        try:
            options.trust = load_trust_root(options.ca)
        except (OSError, ValueError) as e:
            parser.error(f"cannot use --ca {options.ca}: {e}")
    else:
        options.trust = None
    return options


def server_label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def options_label(options: argparse.Namespace) -> str:
    """The server, as the client's messages name it."""
    if options.unix is not None:
        return f"unix:{options.unix}"
    return server_label(options.host, options.port)


def make_endpoint(reactor: Any, options: argparse.Namespace) -> IStreamClientEndpoint:
    if options.unix is not None:
        return UNIXClientEndpoint(  # type: ignore[no-untyped-call]
            reactor, options.unix, timeout=options.timeout
        )
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, options.host, options.port, timeout=options.timeout
    )
    if options.tls:
        from twisted.internet.ssl import optionsForClientTLS

        creator = optionsForClientTLS(options.host, trustRoot=options.trust)
        endpoint = wrapClientTLS(creator, endpoint)
    return endpoint


def log_observer(show: Callable[[str], None]) -> ILogObserver:
    """An observer that shows each event as one line: never a traceback."""

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        # The reactor's "Unhandled Error" (a legacy event) keeps its failure
        # under "failure"; Logger.failure under "log_failure".
        failure = event.get("log_failure", event.get("failure"))
        if isinstance(failure, Failure) or event.get("isError"):
            # An error's text may carry a whole traceback: its first line only.
            text = text.strip().split("\n", 1)[0]
        if isinstance(failure, Failure):
            text = f"{text}: {failure.getErrorMessage()}" if text else failure.getErrorMessage()
        show(text)

    return observer  # type: ignore[no-any-return]  # @provider loses the type


def start_logging(show: Callable[[str], None], verbose: bool = False) -> None:
    """Send warnings and errors (not Twisted's chatter) to C{show}."""
    level = LogLevel.debug if verbose else LogLevel.warn
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(log_observer(show), [predicate])], redirectStandardIO=False
    )


def _stderr_line(text: str) -> None:
    sys.stderr.write(f"{PROGRAM}: {text}\n")
    sys.stderr.flush()


def _nothing() -> None:
    pass


_NO_WRITER = object()


def unwritten(stdio: object) -> int | None:
    """
    The bytes written to C{stdio} (a L{StandardIO}) that stdout has not taken
    yet, or C{None} when it cannot tell.
    """
    writer = getattr(stdio, "_writer", _NO_WRITER)  # a FileDescriptor; None once closed
    if writer is _NO_WRITER:
        # Not POSIX's StandardIO (Windows' has no _writer): unknown, not
        # "nothing waits", which would end the wait as if stdout went away.
        return None
    if writer is None:
        return 0
    return buffered(writer)


def wait_for_output(
    clock: IReactorTime,
    closing: defer.Deferred[None],
    pending: Callable[[], int | None],
    timeout: float = OUTPUT_TIMEOUT,
    step: float = 1.0,
) -> defer.Deferred[int | None]:
    """
    Wait for C{closing} (stdout flushed and closed) as long as stdout takes
    some of what C{pending} says waits at least every C{timeout} seconds.
    Fires with C{None} once closed, or once nothing waits and still the
    close has not come (stdout went away: C{| head} exited, and Twisted
    dropped the writer without closing), or, when stdout took nothing for
    that long, with the bytes it did not take; in the last two cases after
    cancelling C{closing}.  When C{pending} cannot tell (C{None}), no
    progress can be seen: the wait is C{timeout} seconds in all, and it
    fires with C{-1}.
    """
    result: defer.Deferred[int | None] = defer.Deferred()
    last = pending()
    since = clock.seconds()
    poll: IDelayedCall | None = None

    def check() -> None:
        nonlocal last, since, poll
        poll = None
        now = pending()
        if now is not None and last is not None and now < last:
            since = clock.seconds()  # stdout took some
        last = now
        if now != 0 and clock.seconds() - since < timeout:
            poll = clock.callLater(step, check)
            return
        result.callback(None if now == 0 else -1 if now is None else now)
        closing.cancel()

    def closed(ignored: object) -> None:
        if poll is not None and poll.active():
            poll.cancel()
        if not result.called:
            result.callback(None)

    poll = clock.callLater(step, check)
    closing.addBoth(closed)
    return result


def output_cut(left: int) -> str:
    """
    What is said on stderr when a script's output was not all written
    (C{left} bytes; C{-1}: how much, and whether stdout took any of it
    meanwhile, could not be told).
    """
    if left < 0:
        return (
            "Some output may not have been written: stdout had not taken it all "
            f"after {OUTPUT_TIMEOUT:g} seconds."
        )
    what = "1 byte of output was" if left == 1 else f"{left} bytes of output were"
    return f"{what} not written: stdout took nothing for {OUTPUT_TIMEOUT:g} seconds."


async def run(reactor: Any, options: argparse.Namespace) -> None:
    interactive = is_terminal()
    label = options_label(options)
    ui: ChatTerminal | PipeIO | None = None
    stdio: StandardIO | None = None

    def make_client(
        nick: str | None,
        *,
        joined_as: str | None,
        password: tuple[str, str] | None,
        lobby_shown: ShownLobby,
        nick_tries: NickTries,
    ) -> ChatClient:
        client = ChatClient(
            ui,
            nick=nick,
            interactive=interactive,
            server=label,
            clock=reactor,
            tls=options.tls,
            probe=not options.tls,
            greeting_timeout=options.timeout,
            show_history=not options.no_history,
            environ=os.environ,
            joined_as=joined_as,
            kept_password=password,
            lobby_shown=lobby_shown,
            nick_tries=nick_tries,
        )
        if not interactive:
            # A script's stdin is not read while the client holds QUEUE_MAX lines.
            client.input = ui if isinstance(ui, PipeIO) else None
            # Warnings (a password sent unencrypted) go to stderr, not into the
            # script's output.
            client.warn = lambda text: _stderr_line(render.plain(render.info(text)))
        return client

    registered = False

    def attach(client: ChatClient) -> None:
        nonlocal registered
        assert stdio is not None and ui is not None
        # While stdout cannot take more (a pager, a stalled terminal), the
        # server's connection is not read (twisted_chat.client.flow).
        if registered:
            stdio.unregisterProducer()  # type: ignore[no-untyped-call]
        stdio.registerProducer(client.reading.hand("display"), True)  # type: ignore[no-untyped-call]
        registered = True
        ui.set_prompt(client.prompt())

    def connect(client: ChatClient) -> None:
        connecting = connectProtocol(  # type: ignore[no-untyped-call]
            make_endpoint(reactor, options), client
        )
        client.cancel_connect = connecting.cancel

        def failed(failure: Failure) -> None:
            if not failure.check(defer.CancelledError):  # type: ignore[no-untyped-call]
                client.connect_failed(failure)

        connecting.addErrback(failed)

    session = Reconnecting(
        reactor,
        None,
        make_client,
        connect,
        nick=options.nick,
        enabled=interactive and not options.no_reconnect,
        attach=attach,
    )
    # A SIGINT (Ctrl-C in a script's terminal, kill -INT) leaves like Ctrl-C
    # typed on the client's own terminal, instead of stopping the reactor
    # with exit code 0; the client decides the exit code.
    signal.signal(signal.SIGINT, lambda signum, frame: reactor.callFromThread(session.interrupt))
    restore = _nothing
    if interactive:
        ui, restore, stdio = _start_terminal(reactor, session, bell=not options.no_bell)
        terminal_ui = ui
        if sys.stderr.isatty():
            # stderr is the screen the line editor owns: show warnings there.
            start_logging(lambda text: terminal_ui.show(render.error(text)))
        else:
            start_logging(lambda text: _stderr_line(render.plain(render.info(text))))
    else:
        ui = PipeIO(session.user_line, session.end_of_input)
        stdio = StandardIO(ui, reactor=reactor)  # type: ignore[no-untyped-call]
        start_logging(lambda text: _stderr_line(render.plain(render.info(text))))
    session.display = ui
    if interactive:
        ui.show(render.notice(f"Connecting to {label}..."))
    session.start()
    outcome = await session.finished

    # Else a drained stdout would resume the producer instead of closing.
    stdio.unregisterProducer()  # type: ignore[no-untyped-call]
    closing = ui.close()
    left: int | None = None
    if interactive:
        timeout = reactor.callLater(CLOSE_TIMEOUT, closing.cancel)
        try:
            await closing
        except defer.CancelledError:
            pass
        else:
            timeout.cancel()
    else:
        # A script's output is not cut silently: stdout gets the time it
        # takes, as long as it takes some (docs/client.md, "Scripts and pipes").
        left = await wait_for_output(reactor, closing, lambda: unwritten(stdio))
    restore()
    code = outcome.code
    if outcome.message:
        _stderr_line(render.plain(render.info(outcome.message)))
    if left is not None:
        _stderr_line(output_cut(left))
        code = code or 1
    if code:
        raise SystemExit(code)


def _start_terminal(
    reactor: Any, client: Reconnecting, bell: bool
) -> tuple[ChatTerminal, Callable[[], None], StandardIO]:
    import termios
    import tty

    # Imported here: conch's recvline imports the global reactor.
    from twisted_chat.client import terminal

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    restored = False

    def restore() -> None:
        nonlocal restored
        if not restored:
            restored = True
            # Bracketed paste off (ChatTerminal.close says so too; not if the
            # reactor stopped before it).
            with contextlib.suppress(OSError):
                os.write(sys.stdout.fileno(), terminal.PASTE_MODE_OFF.encode())
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    reactor.addSystemEventTrigger("after", "shutdown", restore)
    tty.setraw(fd)
    ui = terminal.ChatTerminal(
        client.user_line,
        client.interrupt,
        colour=wants_colour(os.environ),
        styles=wants_styles(os.environ),
        on_secret=client.secret_line,
        nicks=client.online_nicks,
        bell=bell,
        on_eof=client.end_of_typing,
        paste_time=client.paste_time,
    )
    ui.width, ui.height = terminal_size(sys.stdout.fileno())
    stdio = StandardIO(terminal.TerminalServer(ui), reactor=reactor)  # type: ignore[no-untyped-call]

    def resized() -> None:
        ui.terminalSize(*terminal_size(sys.stdout.fileno()))

    signal.signal(signal.SIGWINCH, lambda signum, frame: reactor.callFromThread(resized))
    return ui, restore, stdio


def main(argv: Sequence[str] | None = None) -> NoReturn:
    options = parse_options(argv)
    task.react(run, (options,))
