"""Options and helpers of the client's entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from twisted_chat.client.main import (
    DEFAULT_PORT,
    OUTPUT_TIMEOUT,
    build_parser,
    log_observer,
    make_endpoint,
    options_label,
    output_cut,
    parse_options,
    server_label,
    unwritten,
    wait_for_output,
    wants_colour,
    wants_styles,
)


def test_help_gives_both_ways_stdout_ends_a_script_with_status_1() -> None:
    # review of the rev5cli G2 fix: the status table and --help named only
    # stdout taking nothing, not the wait where that cannot be measured.
    text = " ".join(build_parser().format_help().split())
    assert "stdout took none of a script's last output for 60 s" in text
    assert "where that cannot be measured, had not taken it all after 60 s" in text


def test_defaults() -> None:
    options = parse_options(["chat.example.org"])
    assert options.host == "chat.example.org"
    assert options.port == DEFAULT_PORT == 7000
    assert options.nick is None and not options.tls and options.trust is None


def test_all_options() -> None:
    options = parse_options(["--nick", "alice", "--tls", "localhost", "7443"])
    assert (options.nick, options.tls, options.host, options.port) == (
        "alice",
        True,
        "localhost",
        7443,
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["host", "nope"], ["host", "70000"], ["a", "1", "2"], ["--nick", "no way", "host"]],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_ca_file_must_hold_a_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(SystemExit) as exited:
        parse_options(["--ca", str(bad), "host"])
    assert exited.value.code == 2
    assert "no PEM certificate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_options(["--ca", str(tmp_path / "missing.pem"), "host"])


def test_ca_file_implies_tls(tmp_path: Path) -> None:
    from tests.test_e2e_tls import self_signed

    _key, cert = self_signed(tmp_path)
    options = parse_options(["--ca", str(cert), "localhost"])
    assert options.tls and options.trust is not None


def test_server_label() -> None:
    assert server_label("example.org", 7000) == "example.org:7000"
    assert server_label("::1", 7000) == "[::1]:7000"


@pytest.mark.parametrize("host", ["unix:/run/chat/chat.sock", "/run/chat/chat.sock",
                                  "unix:./chat.sock", "./chat.sock"])
def test_a_unix_socket_is_a_path_for_host(host: str) -> None:
    """Review rev12 #8: the server documents --port unix:PATH, and the
    client took unix:/... for a host name ("invalid hostname")."""
    from twisted.internet.endpoints import UNIXClientEndpoint

    options = parse_options(["--nick", "alice", host])
    path = host.removeprefix("unix:")
    assert options.unix == path
    assert options_label(options) == f"unix:{path}"
    endpoint = make_endpoint(MemoryReactorClock(), options)
    assert isinstance(endpoint, UNIXClientEndpoint)
    assert endpoint._path == path


def test_a_host_name_is_not_a_unix_socket() -> None:
    options = parse_options(["chat.example.org", "7001"])
    assert options.unix is None
    assert options_label(options) == "chat.example.org:7001"


@pytest.mark.parametrize(("argv", "said"), [
    (["unix:"], "unix: needs the socket's path, e.g. unix:/tmp/chat.sock"),
    (["unix:/tmp/chat.sock", "7000"], "unix:/tmp/chat.sock is a UNIX socket: it takes no PORT"),
    (["--tls", "unix:/tmp/chat.sock"],
     "--tls and --ca are for TCP: a UNIX socket does not leave this machine"),
])
def test_a_unix_socket_with_what_it_cannot_take_exits_2(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: {said}\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Review rev12 #9: --version was "the following arguments are required: HOST"."""
    import twisted
    import twisted_chat

    with pytest.raises(SystemExit) as exited:
        parse_options(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(
        f"twisted-chat {twisted_chat.__version__} (Twisted {twisted.__version__}, Python ")


@pytest.mark.parametrize(
    ("environ", "colour"),
    [
        ({}, True),
        ({"TERM": "xterm-256color"}, True),
        ({"NO_COLOR": "1"}, False),
        ({"NO_COLOR": "yes", "TERM": "xterm"}, False),
        ({"NO_COLOR": ""}, True),  # https://no-color.org: set and not empty
        ({"TERM": "dumb"}, False),
    ],
)
def test_colour_choice(environ: dict[str, str], colour: bool) -> None:
    assert wants_colour(environ) is colour
    # NO_COLOR drops only the colours: bold and reverse video stay.
    assert wants_styles(environ) is (environ.get("TERM") != "dumb")


def test_importing_the_client_does_not_install_a_reactor() -> None:
    import subprocess
    import sys

    code = (
        "import sys, twisted_chat.client.main, twisted_chat.client.__main__; "
        "print('twisted.internet.reactor' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_importing_the_client_loads_no_server_module() -> None:
    """The client imported the server's address limits for one parser
    (rr21-a 1), which loaded five server modules into every client: what
    both need lives at the package's top level (twisted_chat/ipaddrs.py,
    as tls.py), and no client module loads twisted_chat.server."""
    import subprocess
    import sys

    folder = Path(__file__).resolve().parents[2] / "twisted_chat" / "client"
    modules = sorted(f"twisted_chat.client.{path.stem}" for path in folder.glob("*.py"))
    assert "twisted_chat.client.passwords" in modules
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(sorted(m for m in sys.modules if m.startswith('twisted_chat.server')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_timeout_and_no_history_options() -> None:
    options = parse_options(["host"])
    assert options.timeout == 15.0 and options.no_history is False
    options = parse_options(["--timeout", "2.5", "--no-history", "host"])
    assert options.timeout == 2.5 and options.no_history is True


@pytest.mark.parametrize("value", ["0", "-1", "soon", "1e9"])
def test_bad_timeouts_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options(["--timeout", value, "host"])
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_an_unhandled_error_is_shown_as_one_line_without_its_traceback() -> None:
    """The reactor logs an exception that escaped a protocol as a legacy
    "Unhandled Error" event whose text is the whole traceback."""
    import io
    import sys
    import warnings

    from twisted.logger import LogBeginner, Logger, LogPublisher
    from twisted.python import log as legacy
    from twisted.python.failure import Failure

    shown: list[str] = []
    publisher = LogPublisher(log_observer(shown.append))
    beginner = LogBeginner(publisher, io.StringIO(), sys, warnings)
    old_style = legacy.LogPublisher(
        observerPublisher=publisher, publishPublisher=publisher, logBeginner=beginner
    )
    try:
        raise OverflowError("timestamp out of range for platform time_t")
    except OverflowError:
        failure = Failure()
    old_style.msg(failure=failure, isError=1, why="Unhandled Error")
    Logger(observer=publisher).failure("could not handle a server line", failure)
    Logger(observer=publisher).warn("dropping a server line of {n} bytes", n=5)
    assert shown == [
        "Unhandled Error: timestamp out of range for platform time_t",
        "could not handle a server line: timestamp out of range for platform time_t",
        "dropping a server line of 5 bytes",
    ]


# -- review rev4cli F1: a script's output is not cut silently at the end ----------


def test_a_scripts_output_is_waited_for_while_stdout_takes_some() -> None:
    # `client | less`, read slowly: the session is over, the output is not.
    clock, closing = Clock(), Deferred[None]()
    left = [300_000]
    done: list[int | None] = []
    wait_for_output(clock, closing, lambda: left[0]).addCallback(done.append)
    for _ in range(5):  # stdout takes a little every 50 s: never given up
        clock.advance(OUTPUT_TIMEOUT - 10)
        left[0] -= 1000
    clock.advance(1)
    assert done == [] and not closing.called
    closing.callback(None)  # all written, stdout closed
    assert done == [None]
    assert clock.getDelayedCalls() == []


def test_a_scripts_output_stdout_does_not_take_is_counted() -> None:
    clock, closing = Clock(), Deferred[None]()
    done: list[int | None] = []
    wait_for_output(clock, closing, lambda: 81_920).addCallback(done.append)
    clock.advance(OUTPUT_TIMEOUT - 1)
    assert done == []
    clock.advance(1)
    assert done == [81_920]
    assert closing.called  # cancelled: the process may end
    assert output_cut(81_920) == (
        "81920 bytes of output were not written: stdout took nothing for 60 seconds."
    )
    assert output_cut(1) == "1 byte of output was not written: stdout took nothing for 60 seconds."


def test_a_stdout_that_went_away_is_not_waited_for() -> None:
    # `client | head -1`: head exits, the next write fails (EPIPE), and
    # Twisted drops the writer without closing; nothing is owed any more,
    # so the wait ends at the next look, not after OUTPUT_TIMEOUT (review
    # rev5cli G1: 60 s, and Ctrl-C did nothing meanwhile).
    clock, closing = Clock(), Deferred[None]()
    done: list[int | None] = []
    wait_for_output(clock, closing, lambda: 0).addCallback(done.append)
    clock.advance(1)
    assert done == [None]
    assert closing.called  # cancelled: the process may end
    assert clock.getDelayedCalls() == []


def test_what_stdout_has_not_taken_is_measured() -> None:
    class Stdio:
        _writer: FileDescriptor | None = None

    stdio = Stdio()
    assert unwritten(stdio) == 0  # closed: nothing waits
    writer = FileDescriptor(reactor=MemoryReactorClock())
    writer.connected = True
    writer.write(b"x" * 1000)
    stdio._writer = writer
    assert unwritten(stdio) == 1000
    # Not a StandardIO it can look into (Windows' has no _writer): unknown,
    # not "nothing waits" (review rev5cli G2).
    assert unwritten(object()) is None


def test_output_that_cannot_be_measured_is_waited_for_and_not_said_to_be_lost() -> None:
    # Where the client cannot see stdout's buffer, it can neither see stdout
    # take some nor tell "nothing waits" (stdout gone) from "unknown": it
    # used to end the wait after 1 s as if stdout had gone, the output cut
    # silently; or, with a writer it could not read, to say that stdout
    # "took nothing" and that output "was not written", neither of which it
    # knew (review rev5cli G2).  Now it waits OUTPUT_TIMEOUT in all.
    clock, closing = Clock(), Deferred[None]()
    done: list[int | None] = []
    wait_for_output(clock, closing, lambda: unwritten(object())).addCallback(done.append)
    clock.advance(OUTPUT_TIMEOUT - 1)
    assert done == [] and not closing.called
    clock.advance(1)
    assert done == [-1]
    assert closing.called  # cancelled: the process may end
    assert output_cut(-1) == (
        "Some output may not have been written: stdout had not taken it all after 60 seconds."
    )
    # Closed in time: nothing is said.
    clock, closing, done = Clock(), Deferred[None](), []
    wait_for_output(clock, closing, lambda: unwritten(object())).addCallback(done.append)
    clock.advance(30)
    closing.callback(None)
    assert done == [None]
    assert clock.getDelayedCalls() == []
