"""Issue 14.10: the server's log level (info by default, --log-level)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.failure import Failure

import twisted_chat.server
import twisted_chat.web
from tests.test_cluster_outage import redis_log
from tests.test_cluster_refused import applied, connected, heartbeat
from twisted_chat.server import logs

PACKAGES = (twisted_chat.server, twisted_chat.web)


@pytest.fixture
def seen() -> Iterator[list[str]]:
    events: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "test.logs":
            events.append(event["log_level"].name)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
    logs.set_level(logs.DEFAULT_LEVEL)


def emit_all() -> None:
    log = logs.logger("test.logs")
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")


def test_debug_lines_are_not_logged_by_default(seen: list[str]) -> None:
    assert logs.level() == "info"
    emit_all()
    assert seen == ["info", "warn", "error"]


def test_the_level_is_a_setting(seen: list[str]) -> None:
    logs.set_level("warn")
    emit_all()
    logs.set_level("debug")
    emit_all()
    assert seen == ["warn", "error", "debug", "info", "warn", "error"]


def test_a_class_logger_keeps_the_filter() -> None:
    class Thing:
        log = logs.logger()

    assert Thing().log.observer is logs.observer


def test_a_module_logger_is_named_after_its_module() -> None:
    assert logs.logger().namespace == __name__
    assert logs.logger("x.y").namespace == "x.y"


def test_no_server_or_web_module_makes_a_logger_of_its_own() -> None:
    """Only logs.py calls Logger(): any other logger would skip --log-level."""
    calls = []
    for package in PACKAGES:
        for path in Path(package.__path__[0]).rglob("*.py"):
            if path.name == "logs.py" and path.parent.name == "server":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if name == "Logger":
                        calls.append(f"{path}:{node.lineno}")
    assert calls == []


def test_every_module_and_class_logger_goes_through_the_filter() -> None:
    loggers = {}
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if isinstance(value, Logger):
                    loggers[f"{info.name}.{name}"] = value
                elif isinstance(value, type) and value.__module__ == info.name:
                    for attr, member in vars(value).items():
                        if isinstance(member, Logger):
                            loggers[f"{info.name}.{name}.{attr}"] = member
    assert "twisted_chat.server.cluster.redislog.RedisLog.log" in loggers
    assert "twisted_chat.web.gateway._log" in loggers
    assert {name for name, log in loggers.items() if log.observer is not logs.observer} == set()


def test_a_cluster_debug_line_is_left_out_by_default() -> None:
    events: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("twisted_chat.server.cluster"):
            events.append((event["log_level"].name, event["log_format"]))

    log, _ = redis_log()
    unreachable = Failure(ConnectionError("Redis is unreachable"))
    globalLogPublisher.addObserver(observe)
    try:
        log.doubts._end_failed(unreachable, log._generation)
        assert events == []
        logs.set_level("debug")
        log.doubts._end_failed(unreachable, log._generation)
    finally:
        globalLogPublisher.removeObserver(observe)
        logs.set_level(logs.DEFAULT_LEVEL)
    assert events == [("debug", "the stream's end: {e}")]


def test_the_lines_moved_out_of_redislog_keep_its_namespace() -> None:
    """The dead-node warning moved from RedisLog to leases.py with the
    split, and took the new class's namespace with it: operators saw
    [...leases.Leases#warn] where their filters matched
    [...redislog.RedisLog#warn] (reread12 #1).  The lines that moved out of
    RedisLog (leases, pruning, kept history, doubts, reading) keep its namespace."""
    from twisted_chat.server.cluster import doubts, kepthistory, leases, pruning, redisread
    from twisted_chat.server.cluster.redislog import RedisLog

    old = "twisted_chat.server.cluster.redislog.RedisLog"
    assert RedisLog.log.namespace == old
    moved = (leases, pruning, kepthistory, doubts, redisread)
    assert [m._log.namespace for m in moved] == [old] * 5
    events: list[dict[str, Any]] = []
    log, state, redis = connected(node_timeout=3.0)
    applied(state, {"t": "tick", "n": "x", "k": 1})  # x is known; its lease is missing
    log.leases.up_since = log.reactor.seconds() - 60.0  # long enough to judge
    globalLogPublisher.addObserver(events.append)
    try:
        (dead,) = heartbeat(log, redis)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (dead["t"], dead["node"]) == ("dead", "x")
    lines = [formatEventAsClassicLogText(event) or "" for event in events
             if "missed its lease" in event.get("log_format", "")]
    assert len(lines) == 1
    assert (f"[{old}#warn] cluster: node x missed its lease; it is dead") in lines[0]


# -- quoting what a peer sent ----------------------------------------------------


def test_a_short_text_is_quoted_whole() -> None:
    assert logs.quote("http://chat.example") == "'http://chat.example'"
    assert logs.quote("x" * (logs.QUOTE_LIMIT - 2)) == repr("x" * (logs.QUOTE_LIMIT - 2))


def test_line_breaks_and_control_characters_are_escaped() -> None:
    assert logs.quote("a\r\nb\x1b[2J\u202e") == "'a\\r\\nb\\x1b[2J\\u202e'"


def test_a_long_text_is_clipped_and_says_its_length() -> None:
    text = "x" * 15_000
    quoted = logs.quote(text)
    assert quoted == "'" + "x" * (logs.QUOTE_LIMIT - 1) + "... (15000 characters)"
    assert logs.quote("x" * (logs.QUOTE_LIMIT - 1)).endswith("... (99 characters)")
    assert logs.quote(text, limit=10) == "'xxxxxxxxx... (15000 characters)"


def test_escapes_count_towards_the_limit() -> None:
    """Four characters of the quote per control character: still at most the limit."""
    quoted = logs.quote("\x00" * 1000)
    assert len(quoted) == logs.QUOTE_LIMIT + len("... (1000 characters)")
    assert "\x00" not in quoted


# -- daemon mode's log files are bounded (--log-keep) -------------------------


def twistd_options(**given: Any) -> dict[str, Any]:
    """The options twistd parsed, as the subcommand's C{parent} holds them."""
    return {"logfile": None, "nodaemon": False, "syslog": False, "logger": None,
            "prefix": "twistd", **given}


def test_rotated_log_files_are_bounded(tmp_path: Path) -> None:
    """twistd's own kept every rotated file for ever (rev12 newuser #12)."""
    from twisted.logger import Logger, textFileLogObserver

    path = tmp_path / "chat.log"
    log_file = logs.rotated_log_file(str(path), keep=3)
    log_file.rotateLength = 200  # twistd's is 1,000,000 bytes
    log = Logger(observer=textFileLogObserver(log_file))
    for i in range(60):
        log.info("line {i} " + "x" * 40, i=i)
    log_file.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat.log", "chat.log.1", "chat.log.2", "chat.log.3"]
    assert "line 59 " in path.read_text()


#: twistd's options, and what it logs to: its log file, its stdout, syslog
#: (the server gives twistd that observer, behind the level filter), or
#: C{None}: the server leaves it to twistd.
TWISTDS_LOGS = [
    ({"logfile": "chat.log"}, "chat.log"),
    ({"logfile": "chat.log", "nodaemon": True}, "chat.log"),
    ({}, "twistd.log"),  # a daemon without --logfile: twistd's default
    ({"nodaemon": True}, "stdout"),  # -n
    ({"logfile": "-", "nodaemon": True}, "stdout"),
    ({"logfile": "chat.log", "syslog": True}, "syslog"),
    ({"logfile": "-", "syslog": True, "nodaemon": True}, "syslog"),
    # twistd refuses to daemonize onto stdout: nothing must take that away.
    ({"logfile": "-"}, None),
    # The operator's observer takes precedence anyway.
    ({"logfile": "chat.log", "logger": "my.observer"}, None),
    ({"nodaemon": True, "logger": "my.observer"}, None),
]


@pytest.fixture
def syslogged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What goes to syslog (through Twisted's SyslogObserver) instead.
    Not a real receiver: --syslog is twistd's, whose observer writes with
    the stdlib's syslog module, i.e. libc's syslog(3), to /dev/log, a fixed
    path with no option to move it; listening there takes root, and the
    machine's own logger (or another test run) owns it."""
    from twisted.python import syslog

    lines: list[str] = []
    monkeypatch.setattr(syslog.SyslogObserver, "openlog", staticmethod(lambda *args: None))
    monkeypatch.setattr(syslog.SyslogObserver, "syslog",
                        staticmethod(lambda priority, line: lines.append(line)))
    return lines


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The log files the server opens (Twisted's LogFile, watched where it
    is made), closed after the test."""
    from twisted.python import logfile

    files: list[Any] = []
    make = logfile.LogFile.fromFullPath

    def watched(path: str, **kwargs: Any) -> Any:
        made = make(path, **kwargs)
        files.append(made)
        return made

    monkeypatch.setattr(logfile.LogFile, "fromFullPath", watched)
    yield files
    for made in files:
        if not made.closed:
            made.close()


def twistds_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      given: dict[str, Any], *args: str) -> tuple[Any, Any]:
    """The top service makeService makes with twistd's options C{given},
    and the C{ILogObserver} component it gives twistd's application."""
    from twisted.application.service import Application
    from twisted.internet.testing import MemoryReactor
    from twisted.logger import ILogObserver

    from twisted_chat.server.service import Options, makeService

    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(["--db", ":memory:", "--port", "tcp:0", *args])
    options.parent = twistd_options(**given)
    top = makeService(options, MemoryReactor())
    application = Application("chat")
    top.setServiceParent(application)
    return top, application.getComponent(ILogObserver, None)


@pytest.mark.parametrize(("given", "where"), TWISTDS_LOGS)
def test_the_log_file_is_the_one_twistd_would_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        syslogged: list[str], opened: list[Any], given: dict[str, Any],
        where: str | None) -> None:
    _, observer = twistds_component(tmp_path, monkeypatch, given, "--log-keep", "4")
    if where is None:
        assert observer is None
    else:
        assert observer is not None
    if where in (None, "stdout", "syslog"):
        assert opened == []
        return
    [log_file] = opened
    assert log_file.path == str(tmp_path / where)
    assert log_file.maxRotatedFiles == 4


@pytest.mark.parametrize(("given", "where"), [
    (given, where) for given, where in TWISTDS_LOGS if where is not None])
def test_the_level_applies_to_what_twistd_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        syslogged: list[str], opened: list[Any], given: dict[str, Any], where: str) -> None:
    """twistd logs Twisted's own lines and its own (a factory's "Starting
    factory", "Received SIGTERM", "twistd ... starting up") to the
    application's observer: with --log-level warn, none of them, through
    twistd's supported hook (no patched Twisted global)."""
    import io
    import sys

    from twisted.logger import globalLogBeginner

    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        _, observer = twistds_component(tmp_path, monkeypatch, given,
                                        "--log-level", "warn")
        twisted = Logger(namespace="twisted.internet.base", observer=observer)
        twisted.info("Received SIGTERM, shutting down.")
        Logger(namespace="twisted.application.app.AppLogger",
               observer=observer).info("twistd 26 starting up.")
        twisted.warn("a warning of Twisted's")
    finally:
        logs.set_level(logs.DEFAULT_LEVEL)
    if where == "stdout":
        written = stdout.getvalue()
    elif where == "syslog":
        written = "\n".join(syslogged)
    else:
        opened[0].close()
        written = (tmp_path / where).read_text()
    assert "a warning of Twisted's" in written
    assert "SIGTERM" not in written and "starting up" not in written
    assert "beginLoggingTo" not in vars(globalLogBeginner)


def test_log_keep_0_keeps_every_file(tmp_path: Path) -> None:
    log_file = logs.rotated_log_file(str(tmp_path / "c.log"), keep=0)
    assert log_file.maxRotatedFiles is None
    log_file.close()


@pytest.mark.parametrize("given", [{"logfile": "chat.log"}, {},
                                   {"logfile": "chat.log", "nodaemon": True}])
def test_the_log_files_are_readable_by_the_server_s_user_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        opened: list[Any], given: dict[str, Any]) -> None:
    """rev13-attack 1: the log file (daemon mode's twistd.log, the first
    made before twistd's own umask 077, and -n --logfile's) was made 0644,
    and with --log-messages it holds every DM.  Under umask 022 it is 0600,
    as the file a rotation makes and the rotated one are."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        _, observer = twistds_component(tmp_path, monkeypatch, given)
        assert observer is not None and len(opened) == 1
        path = Path(opened[0].path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        opened[0].rotate()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{path}.1").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_existing_log_file_is_made_private(tmp_path: Path) -> None:
    """A log file an earlier version made 0644 becomes 0600 at start."""
    import stat

    path = tmp_path / "chat.log"
    path.write_text("old line\n")
    path.chmod(0o644)
    log_file = logs.rotated_log_file(str(path), keep=3)
    log_file.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "old line" in path.read_text()


def not_a_file(path: Path, kind: str) -> None:
    """A node of C{kind} at C{path}, mode 0666 as /dev/null's: a character
    device of its own, the null device's numbers (mknod: the tests run as
    root), or a FIFO; so that a failure changes nothing outside tmp_path."""
    import os
    import stat

    if kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        os.mkfifo(path)
    path.chmod(0o666)  # past the umask


class Drained:
    """Everything written to the FIFO C{path}, read as it comes (a thread:
    a writer blocks once its 64 KiB are full), opened before the server
    opens it for writing (which waits for a reader)."""

    def __init__(self, path: Path) -> None:
        import os
        import threading

        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.read = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        import os
        import select

        while not self.done.is_set():
            if select.select([self.fd], [], [], 0.05)[0]:
                self.read += os.read(self.fd, 1 << 16)

    def text(self) -> str:
        import os

        self.done.set()
        self.thread.join(5)
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.read += chunk
        except BlockingIOError:
            pass
        os.close(self.fd)
        return self.read.decode()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_log_path_that_is_not_a_regular_file_is_never_rotated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        opened: list[Any], kind: str) -> None:
    """
    rev18-docs 1 (HIGH): --logfile /dev/null was rotated like a file, on
    SIGUSR1 or after 1,000,000 bytes of log: the device renamed to
    NAME.1, and a regular file, mode 0666 (the device's), holding the log
    (addresses, with --log-messages every DM) in its place; a FIFO was an
    "Illegal seek" at start.  Now a path that is not a regular file is
    written as it is: over 1,000,000 bytes and a SIGUSR1 leave the node
    where it is, its mode unchanged, and nothing else is made.
    """
    import stat

    from twisted_chat.server.ports.rotating import Rotator

    node = tmp_path / "null"
    not_a_file(node, kind)
    drained = Drained(node) if kind == "fifo" else None
    try:
        top, observer = twistds_component(tmp_path, monkeypatch,
                                          {"logfile": str(node), "nodaemon": True})
        log = Logger(namespace="twisted_chat.server.hub", observer=observer)
        for i in range(260):
            log.info("line {i} " + "x" * 4000, i=i)  # 1,040,000 bytes and more
        [rotator] = [service for service in top if isinstance(service, Rotator)]
        rotator.usr1()  # what SIGUSR1 does (tests/test_rotating.py)
        log.info("after SIGUSR1")
    finally:
        written = drained.text() if drained is not None else ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    mode = node.lstat().st_mode
    assert (stat.S_ISCHR(mode) if kind == "device" else stat.S_ISFIFO(mode))
    assert stat.S_IMODE(mode) == 0o666
    assert opened == []  # no rotating LogFile
    assert rotator.log_file is None
    assert rotator.where == f"{node}, not a regular file"
    if kind == "fifo":
        assert "line 259 " in written and written.rstrip().endswith("after SIGUSR1")
        assert written.count("\n") == 261


def test_a_rotation_removed_while_the_log_starts_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotated file listed at start but removed before its mode is set
    (a log cleaner running meanwhile) is skipped, not a failed start; the
    others are still made private."""
    import stat

    from twisted.python import logfile

    for name in ("chat.log", "chat.log.1"):
        (tmp_path / name).write_text("old\n")
        (tmp_path / name).chmod(0o644)
    listed = logfile.LogFile.listLogs

    def list_a_gone_one(self: logfile.LogFile) -> list[int]:
        return [*listed(self), 7]  # chat.log.7: listed, then gone

    monkeypatch.setattr(logfile.LogFile, "listLogs", list_a_gone_one)
    log_file = logs.rotated_log_file(str(tmp_path / "chat.log"), keep=10)
    log_file.close()
    assert stat.S_IMODE((tmp_path / "chat.log.1").stat().st_mode) == 0o600


def test_rotated_files_an_earlier_version_left_are_made_private(
        tmp_path: Path) -> None:
    """reread13 server 1: Twisted's LogFile changes only the live file's
    mode, so the rotations made before the upgrade (the same addresses and
    DMs) stayed 0644 until --log-keep rotations pushed them out.  At start
    they become 0600 too; a device or a link among them keeps its mode."""
    import os
    import stat

    path = tmp_path / "chat.log"
    for name in ("chat.log", "chat.log.1", "chat.log.2"):
        (tmp_path / name).write_text(f"old {name}\n")
        (tmp_path / name).chmod(0o644)
    device = tmp_path / "chat.log.3"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    device.chmod(0o666)  # past the umask
    target = tmp_path / "elsewhere"
    target.write_text("not a log\n")
    target.chmod(0o644)
    (tmp_path / "chat.log.4").symlink_to(target)
    log_file = logs.rotated_log_file(str(path), keep=10)
    log_file.close()
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in tmp_path.iterdir()
             if not p.is_symlink()}
    assert modes == {"chat.log": 0o600, "chat.log.1": 0o600, "chat.log.2": 0o600,
                     "chat.log.3": 0o666, "elsewhere": 0o644}
    assert (tmp_path / "chat.log.1").read_text() == "old chat.log.1\n"


@pytest.mark.parametrize("daemon", [False, True])
def test_a_log_file_in_a_missing_folder_is_one_line_before_any_other_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        daemon: bool) -> None:
    """It was a 30-line FileNotFoundError traceback, after the database and
    accounts files were made (rev14-ops LOW 2)."""
    missing = tmp_path / "missing" / "chat.log"
    with pytest.raises(SystemExit) as stopped:
        twistds_component(tmp_path, monkeypatch,
                          {"logfile": str(missing), "nodaemon": not daemon},
                          "--db", "chat.sqlite3")
    assert str(stopped.value.code) == (
        f"twistd chat: cannot open --logfile {missing}: No such file or directory")
    assert list(tmp_path.iterdir()) == []


def test_a_throttled_line_is_written_at_most_once_in_its_interval() -> None:
    """logs.Throttle: the first line is due; within C{every} seconds of it
    none is (each counted); at C{every} the next is, with how many were left
    out; then the count starts again."""
    throttle = logs.Throttle(60.0)
    assert throttle.allow(1000.0) == 0
    assert throttle.allow(1000.0) is None
    assert throttle.allow(1059.9) is None
    assert throttle.allow(1060.0) == 2
    assert throttle.allow(1119.0) is None
    assert throttle.allow(1200.0) == 1
    assert throttle.allow(1300.0) == 0


def test_a_log_file_through_a_link_is_rotated_where_the_link_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Any]) -> None:
    """
    /dev/stderr onto a file (`twistd -n --logfile=/dev/stderr chat 2>out`)
    is a link to a regular file: it was rotated by renaming the link, i.e.
    as root a rename in /dev, and a regular file made there in its place.
    Now the file the link names is rotated; the link stays, naming the new
    file.
    """
    out, link = tmp_path / "out.txt", tmp_path / "stderr"
    out.write_text("before\n")
    link.symlink_to(out)
    _, observer = twistds_component(tmp_path, monkeypatch,
                                    {"logfile": str(link), "nodaemon": True})
    [log_file] = opened
    log_file.rotate()
    Logger(namespace="twisted_chat.server.hub", observer=observer).info("after")
    log_file.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out.txt.1", "stderr"]
    assert link.is_symlink() and link.readlink() == out
    assert "after" in out.read_text() and (tmp_path / "out.txt.1").read_text() == "before\n"


def test_a_file_no_path_names_is_not_rotated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Any]) -> None:
    """/dev/stderr onto a file deleted since: its real path ("out.txt
    (deleted)") names no file, so rotating it would make one; it is
    written to as it is, like a device."""
    import os

    out = tmp_path / "out.txt"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        out.unlink()
        _, observer = twistds_component(tmp_path, monkeypatch,
                                        {"logfile": f"/proc/self/fd/{fd}", "nodaemon": True})
        Logger(namespace="twisted_chat.server.hub", observer=observer).info("to the deleted file")
        assert opened == []
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        assert b"to the deleted file" in Path(f"/proc/self/fd/{fd}").read_bytes()
    finally:
        os.close(fd)


def test_counted_says_one_in_the_singular() -> None:
    assert [logs.counted(n, "port") for n in (0, 1, 2)] == ["0 ports", "1 port", "2 ports"]
