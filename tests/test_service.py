"""Options and makeService, without binding a port (MemoryReactor)."""

from __future__ import annotations

import inspect
import platform
import queue
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage

from twisted_chat.server.accounts.store import AccountStore
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.config import ClusterConfig, ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.history import Entry
from twisted_chat.server.hub import HubSettings
from twisted_chat.server.output import sendqueue
from twisted_chat.server.ports.listening import PortService, StartupError
from twisted_chat.server.ports.reloading import Reloader
from twisted_chat.server.ports.rotating import Rotator
from twisted_chat.server.service import ChatService, Options, makeService
from twisted_chat.web.config import WebConfig, max_message_for


def options(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_the_cluster_options_fill_cluster_config() -> None:
    """Each cluster option reaches its ClusterConfig field (0 for a byte
    bound is no bound)."""
    opts = options("--redis", "redis://127.0.0.1:6390/2", "--redis-password-file", "pw",
                   "--node-timeout", "7", "--redis-wait", "3", "--redis-queue", "12345",
                   "--retain-bytes", "0", "--set-retention", "--stream-bytes", "999")
    cluster = opts.cluster_config()
    assert cluster == ClusterConfig(redis="redis://127.0.0.1:6390/2", redis_password_file="pw",
                                    node_timeout=7.0, wait=3.0, max_waiting=12345,
                                    retain_bytes=None, set_retention=True, stream_bytes=999)


def test_defaults() -> None:
    config = options().config()
    assert config.ports == ("tcp:7000",)
    assert (config.history, config.max_line, config.invite_timeout) == (100, 4096, 60.0)
    assert (config.max_clients, config.max_per_ip) == (10000, 20)
    assert (config.flood_rate, config.flood_burst, config.sendq) == (10.0, 20, 1048576)
    assert (config.idle_timeout, config.ping_timeout, config.nick_timeout) == (120, 60, 30)
    assert config.show_addresses is False
    assert config.server_name == "twisted-chat"
    assert (config.db, config.retain_days) == ("chat.sqlite3", None)
    assert config.fanout_delay == pytest.approx(0.010)
    assert config.direct_send is True
    assert config.tcp_nodelay is False
    assert config.log_messages is False


def test_no_direct_send_turns_the_direct_path_off() -> None:
    assert options("--no-direct-send").config().direct_send is False


def test_tcp_nodelay_option() -> None:
    assert options("--tcp-nodelay").config().tcp_nodelay is True


def test_ports_repeatable_and_bare_number_is_tcp() -> None:
    config = options("--port", "7001", "-p", "unix:/tmp/x.sock",
                     "--port", "tcp:7002:interface=127.0.0.1").config()
    assert config.ports == ("tcp:7001", "unix:/tmp/x.sock", "tcp:7002:interface=127.0.0.1")


def test_values() -> None:
    config = options("--history", "5", "--max-line", "100", "--invite-timeout", "2.5",
                     "--max-clients", "3", "--show-addresses", "--server-name", "home",
                     "--flood-rate", "0", "--fanout-delay", "0.5").config()
    assert (config.history, config.max_line, config.invite_timeout) == (5, 100, 2.5)
    assert config.fanout_delay == pytest.approx(0.0005)  # given in milliseconds
    assert (config.max_clients, config.show_addresses, config.server_name) == (3, True, "home")
    assert config.flood_rate == 0


@pytest.mark.parametrize("argv", [["--history", "-1"], ["--max-line", "0"],
                                  ["--history", "many"], ["--max-clients", "0"],
                                  ["--fanout-delay", "-1"]])
def test_bad_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        options(*argv)


def test_the_options_defaults_are_the_config_objects() -> None:
    """
    What --help gives as each default, a server started without options,
    and the config objects tests and the cluster build without arguments
    agree: every default is written once, in the config objects
    (ServerConfig, ClusterConfig, WebConfig); a second copy that drifts
    fails here.
    """
    defaults = options()
    assert defaults.config() == ServerConfig()
    assert defaults.cluster_config() == ClusterConfig()
    helped = {p[0]: p[2] for p in Options.optParameters}
    cluster = ClusterConfig()
    assert helped["node-timeout"] == cluster.node_timeout
    assert helped["redis-wait"] == cluster.wait
    assert helped["redis-queue"] == cluster.max_waiting
    assert helped["retain-bytes"] == cluster.retain_bytes
    assert helped["stream-bytes"] == cluster.stream_bytes
    assert helped["web-timeout"] == WebConfig().timeout
    text = str(Options())
    for name in ("node-timeout", "redis-wait", "redis-queue", "retain-bytes",
                 "stream-bytes", "web-timeout", "invite-timeout", "max-line"):
        assert f"[default: {helped[name]}]" in " ".join(text.split()), name
    # The copies the options do not fill take theirs from the same objects.
    node = inspect.signature(ClusterState.__init__).parameters
    assert (node["wait"].default, node["max_waiting"].default) == (cluster.wait,
                                                                   cluster.max_waiting)
    held = inspect.signature(ChatFactory.__init__).parameters["held_input_limit"]
    assert held.default == cluster.max_waiting
    assert HubSettings().invite_timeout == ServerConfig().invite_timeout
    assert WebConfig().max_line == ServerConfig().max_line
    assert WebConfig().max_message == max_message_for(ServerConfig().max_line)


def _options_of(kind: type) -> list[str]:
    """The options whose coercer takes a number of C{kind}, found from the
    Options class itself: an option added later is covered too."""
    return [p[0] for p in Options.optParameters
            if len(p) > 4 and getattr(p[4], "kind", None) is kind]


FLOAT_OPTIONS = _options_of(float)
INT_OPTIONS = _options_of(int)


def test_the_number_options_are_found() -> None:
    assert {"invite-timeout", "flood-rate", "sendq-timeout", "fanout-delay", "retain-days",
            "ip-connect-rate", "node-timeout", "redis-wait", "web-timeout"} <= set(
        FLOAT_OPTIONS)
    assert {"max-clients", "sendq", "history", "max-accounts"} <= set(INT_OPTIONS)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "-1"])
@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_every_float_option_refuses_what_is_not_a_finite_non_negative_number(
    name: str, value: str
) -> None:
    """nan passed every comparison: a traceback on each connection
    (--sendq-timeout), each PAIR (--invite-timeout), every line dropped
    (--flood-rate).  One usage line naming the option instead."""
    with pytest.raises(usage.UsageError) as e:
        options(f"--{name}", value)
    assert str(e.value).startswith(f"--{name}: "), str(e.value)
    assert "\n" not in str(e.value)
    assert repr(value) in str(e.value)


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_every_float_option_takes_a_plain_number(name: str) -> None:
    value = options(f"--{name}", "2.5")[name]
    assert value == 2.5 and isinstance(value, float)


@pytest.mark.parametrize(("argv", "message"), [
    (["--sendq", "x"], "--sendq: not an integer: 'x'"),
    (["--max-clients", "1.5"], "--max-clients: not an integer: '1.5'"),
    (["--max-clients", "inf"], "--max-clients: not an integer: 'inf'"),
    (["--flood-rate", "fast"], "--flood-rate: not a number: 'fast'"),
    (["--retain-days", "0"], "--retain-days: must be positive: '0'"),
    (["--history", "-1"], "--history: must not be negative: '-1'"),
    (["--ipv6-prefix", "129"], "--ipv6-prefix: must be 1 to 128: 129"),
])
def test_a_bad_value_names_its_option(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        options(*argv)
    assert str(e.value) == message


def test_every_coerced_option_names_itself_when_it_refuses() -> None:
    for parameter in Options.optParameters:
        if len(parameter) > 4 and parameter[4] is not None:
            with pytest.raises(usage.UsageError, match=f"^--{parameter[0]}: "):
                options(f"--{parameter[0]}", "\x00")


def test_help_lists_every_option() -> None:
    text = str(Options())
    for name in ["--port", "--history", "--max-line", "--invite-timeout", "--max-clients",
                 "--max-per-ip", "--show-addresses", "--server-name", "--flood-rate",
                 "--flood-burst", "--sendq", "--idle-timeout", "--ping-timeout",
                 "--nick-timeout", "--db", "--retain-days", "--fanout-delay",
                 "--no-direct-send", "--tcp-nodelay", "--log-messages"]:
        assert name in text


class ThreadedMemoryReactor(MemoryReactorClock):
    """A MemoryReactor that runs callFromThread calls when the test pumps them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.from_threads.put((f, args, kwargs))

    def pump_until(self, d: Any, timeout: float = 10.0) -> None:
        while not d.called:
            f, args, kwargs = self.from_threads.get(timeout=timeout)
            f(*args, **kwargs)


def test_make_service_listens_on_every_port_and_keeps_history(tmp_path: Path) -> None:
    db = str(tmp_path / "chat.sqlite3")
    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "7001", "--port", "tcp:7002", "--db", db), reactor)
    services = list(top)  # type: ignore[call-overload]
    assert [type(s) for s in services] == [
        Rotator, ChatService, PortService, PortService, Reloader]
    assert all(isinstance(s, StreamServerEndpointService) for s in services[2:4])
    top.startService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [7001, 7002]
    services[1].factory.history.record(Entry(1.0, "alice", "kept"))
    stopped = top.stopService()
    reactor.pump_until(stopped)

    # Started again on the same file, the history is back.
    again = makeService(options("--db", db), reactor)
    again.startService()
    assert list(again)[1].factory.history.recent() == [  # type: ignore[call-overload]
        Entry(1.0, "alice", "kept")]
    reactor.pump_until(again.stopService())


def test_unusable_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database\n")
    with pytest.raises(SystemExit) as e:
        makeService(options("--db", str(bogus)), ThreadedMemoryReactor())
    assert str(e.value).startswith("twistd chat: ")
    assert str(bogus) in str(e.value)
    assert bogus.read_text() == "not a database\n"


# -- hardening options (issue 14) ------------------------------------------------


def test_hardening_defaults() -> None:
    config = options().config()
    assert config.exempt == ()
    assert config.ipv6_prefix == 64
    assert (config.ip_connect_rate, config.ip_connect_burst) == (1.0, 20)
    assert (config.ip_register_rate, config.ip_register_burst) == (0.5, 10)
    assert (config.ip_lobby_rate, config.ip_lobby_burst) == (20.0, 40)
    assert (config.max_handshaking_per_ip, config.handshake_limit) == (5, 2500)
    assert (config.history_bytes, config.max_invites, config.max_invites_per_ip) == (
        65536, 10, 10)
    assert (config.sndbuf, config.sendq) == (131072, 1 << 20)
    assert (config.retain_messages, config.db_backlog, config.log_level) == (
        1_000_000, 10_000, "info")


def test_hardening_values() -> None:
    config = options("--exempt", "127.0.0.1", "--exempt", "2001:db8::1/48",
                     "--ipv6-prefix", "56", "--max-handshaking", "7",
                     "--retain-messages", "0", "--log-level", "debug").config()
    assert config.exempt == ("127.0.0.1/32", "2001:db8::/48")
    assert (config.ipv6_prefix, config.handshake_limit) == (56, 7)
    assert (config.retain_messages, config.log_level) == (None, "debug")


@pytest.mark.parametrize("argv", [["--exempt", "nowhere"], ["--ipv6-prefix", "129"],
                                  ["--log-level", "loud"], ["--db-backlog", "0"]])
def test_bad_hardening_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        options(*argv)


def test_a_max_clients_that_cannot_fit_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        makeService(options("--max-clients", str(10**9), "--db", ":memory:"),
                    ThreadedMemoryReactor())
    assert str(e.value).startswith("twistd chat: --max-clients 1000000000 needs")


def test_shutdown_with_a_database_that_cannot_be_written_has_no_unhandled_error(
        tmp_path: Path) -> None:
    """Issue 14.5: SIGTERM while the disk is full: the store reports what it
    lost, and the service's stop still succeeds."""
    import sqlite3

    from twisted_chat.server.store import SQLiteStore

    reactor = ThreadedMemoryReactor()
    top = makeService(options("--db", str(tmp_path / "chat.sqlite3")), reactor)
    top.startService()
    service = list(top)[1]  # type: ignore[call-overload]
    store = service.factory.history._store
    assert isinstance(store, SQLiteStore)

    def full(rows: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    store._insert = full  # type: ignore[method-assign]
    service.factory.history.record(Entry(1.0, "alice", "lost"))
    # The service itself: a MultiService's DeferredList would hide the
    # failure from the test (and leave it unhandled).
    outcome: list[Any] = []
    service.stopService().addBoth(outcome.append)
    while not outcome:  # called is true while it waits for the store
        f, args, kwargs = reactor.from_threads.get(timeout=10)
        f(*args, **kwargs)
    assert outcome == [None]


def test_log_messages_is_a_flag() -> None:
    assert options("--log-messages").config().log_messages is True


def start_log(*argv: str) -> list[str]:
    """The lines makeService logs (twisted_chat.server.service's) for C{argv}."""
    return [line for _, line in start_events(*argv)]


def start_events(*argv: str) -> list[tuple[LogLevel, str]]:
    """L{start_log}'s lines, each with its level."""
    events: list[tuple[LogLevel, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twisted_chat.server.service":
            events.append((event["log_level"], str(formatEvent(event))))

    globalLogPublisher.addObserver(observe)
    try:
        makeService(options(*argv), ThreadedMemoryReactor())
    finally:
        globalLogPublisher.removeObserver(observe)
    return events


OPEN = ("accounts: open (a nick with an account needs its password; anyone may "
        "REGISTER the nick they hold), ")
REQUIRED = ("accounts: required (only nicks with an account may log in; the operator "
            "makes them), ")


@pytest.mark.parametrize(("argv", "said"), [
    ([], OPEN + "in the file {tmp}/chat.accounts.sqlite3"),
    (["--db", "data/team.sqlite3", "--accounts", "required"],
     REQUIRED + "in the file {tmp}/data/team.accounts.sqlite3"),
    (["--db", ":memory:"],
     OPEN + "in memory (lost at exit; python -m twisted_chat.accounts cannot reach them)"),
    (["--accounts", "off"], "accounts: off (--accounts off): no nick is protected by a "
     "password; PASS, REGISTER and PASSWD are refused"),
    (["--redis", "redis://:secret@127.0.0.1:1/0", "--accounts", "required"],
     REQUIRED + "in the cluster's Redis at redis://127.0.0.1:1/0, shared by every node"),
    (["--redis", "redis://127.0.0.1:1/2", "--accounts", "off"], "accounts: off (--accounts "
     "off): no nick is protected by a password; PASS, REGISTER and PASSWD are refused"),
])
def test_the_log_at_start_says_whether_and_where_nicks_are_protected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], said: str) -> None:
    """Review rev-ops F8.5: the log never said which accounts mode the
    server runs in (the default, open, lets strangers REGISTER), nor which
    file holds them (a relative --db: named in full), nor that in a cluster
    they are Redis's.  One line, never a Redis password."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    lines = start_log("--port", "tcp:0", *argv)
    told = [line for line in lines if line.startswith("accounts: ")]
    assert told == [said.format(tmp=tmp_path)], lines
    assert not [line for line in lines if "secret" in line]


@pytest.mark.parametrize(("mode", "accounts", "made", "warned"), [
    ("required", [], "made an empty one", True),
    ("required", ["alice"], None, False),
    ("open", [], "made an empty one (no nick is protected yet)", False),
])
def test_required_with_no_account_warns_at_start_that_nobody_can_log_in(
        tmp_path: Path, mode: str, accounts: list[str], made: str | None,
        warned: bool) -> None:
    """Review rev17-user #5: --accounts required with no account yet started
    with "no nick is protected yet" (open mode's words) and no warning,
    though nobody could log in.  Now a warning says so, and how to add one."""
    db = tmp_path / "my chat.sqlite3"
    if accounts:
        store = AccountStore.for_db(str(db))
        store.check()
        for nick in accounts:
            store.add(nick, "scrypt$not-checked-here")
    events = start_events("--port", "tcp:0", "--db", str(db), "--accounts", mode)
    path = tmp_path / "my chat.accounts.sqlite3"
    assert [line for _, line in events if line.startswith("no accounts file")] == (
        [f"no accounts file at {path}: {made}"] if made else [])
    warnings = [line for level, line in events if level is LogLevel.warn]
    assert warnings == ([
        "nobody can log in: --accounts required, and there is no account yet; add one "
        f"with: python -m twisted_chat.accounts add --db '{db}' NICK"] if warned else []), events


@pytest.mark.parametrize(("argv", "built", "said"), [
    ([], True, "C (twisted_chat.server.output._sendmany)"),
    ([], False, "Python (the C extension twisted_chat.server.output._sendmany was not built: "),
    (["--no-direct-send"], True, "none (--no-direct-send: "),
])
def test_the_log_at_start_says_which_send_loop_the_fan_out_uses(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], built: bool, said: str) -> None:
    """An install hides whether it built the C send loop (pip shows a
    build's output only when it fails): the log says, once."""
    monkeypatch.setattr(sendqueue, "send_many",
                        (lambda socks, data: None) if built else sendqueue.send_each)
    lines = start_log("--db", ":memory:", *argv)
    loops = [line for line in lines if line.startswith("fan-out send loop: ")]
    assert len(loops) == 1, lines
    assert loops[0].removeprefix("fan-out send loop: ").startswith(said), loops


def test_the_log_at_start_names_the_version() -> None:
    """Review rev12 #9: after an upgrade, the log says which twisted-chat
    (and Twisted, and Python) started, once."""
    import twisted
    import twisted_chat

    lines = start_log("--db", ":memory:")
    said = [line for line in lines if line.startswith("twisted-chat ")]
    assert said == [f"twisted-chat {twisted_chat.__version__} (Twisted {twisted.__version__}, "
                    f"Python {platform.python_version()})"], lines


@pytest.mark.parametrize("port", ["70x0", "tcp:seven", "ssl:7443:privateKey=/nonexistent.pem"])
def test_bad_endpoint_stops_start_up_with_one_line(port: str) -> None:
    with pytest.raises(SystemExit) as e:
        makeService(options("--port", port, "--db", ":memory:"), ThreadedMemoryReactor())
    message = str(e.value)
    assert message.startswith("twistd chat: bad --port ") and port in message
    assert "\n" not in message


def test_a_port_that_cannot_listen_is_a_startup_error() -> None:
    class BusyReactor(ThreadedMemoryReactor):
        def listenTCP(self, port: int, *args: Any, **kwargs: Any) -> Any:
            from twisted.internet.error import CannotListenError
            raise CannotListenError("", port, OSError(98, "Address already in use"))

    top = makeService(options("--port", "7001", "--db", ":memory:"), BusyReactor())
    with pytest.raises(StartupError) as e:
        top.privilegedStartService()
    assert str(e.value) == "cannot listen on --port tcp:7001: Address already in use"


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--port", "99999"], "--port 'tcp:99999': port 99999"),
        (["--port", "tcp6:70000:interface=\\:\\:1"], "port 70000"),
        (["--port", "tcp:port=65536"], "port 65536"),
        (["--web", "99999"], "--web 'tcp:99999': port 99999"),
        (["--metrics", "99999"], "--metrics 'tcp:99999': port 99999"),
    ],
)
def test_a_port_number_out_of_range_stops_start_up_with_one_line(
    tmp_path: Path, argv: list[str], shown: str
) -> None:
    """Before anything is made (not even the accounts file beside --db), not
    at the bind, where it would be an OverflowError's traceback."""
    db = tmp_path / "chat.sqlite3"
    with pytest.raises(SystemExit) as e:
        makeService(options(*argv, "--db", str(db)), ThreadedMemoryReactor())
    message = str(e.value)
    assert message.startswith("twistd chat: bad --") and shown in message
    assert message.endswith(" is out of range (0-65535)") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_the_highest_and_lowest_port_numbers_are_accepted() -> None:
    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "65535", "--port", "tcp:0", "--db", ":memory:"), reactor)
    assert [type(s) for s in list(top)] == [  # type: ignore[call-overload]
        Rotator, ChatService, PortService, PortService, Reloader]


def test_an_overflow_at_the_bind_is_a_startup_error() -> None:
    """An endpoint type the option check does not know, binding a port out of
    range: one line too, as for a busy port."""
    from twisted.internet import defer

    class Overflowing:
        def listen(self, factory: Any) -> Any:
            return defer.fail(OverflowError("bind(): port must be 0-65535."))

    service = PortService("other:99999", Overflowing(), object())
    with pytest.raises(StartupError) as e:
        service.privilegedStartService()
    assert str(e.value) == "cannot listen on --port other:99999: bind(): port must be 0-65535."


# -- the password threads' lifecycle (both top services share it) -------------------


class RecordingWork:
    """Stands in for PasswordWork: what was done to the threads, in order."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def start(self) -> None:
        self.events.append("threads start")

    def stop(self) -> None:
        self.events.append("threads stop")


def test_a_servers_password_threads_stop_after_its_last_connection() -> None:
    """Not before: a check still running would have no thread to finish on."""
    from twisted.internet.defer import Deferred

    from tests.harness import Harness

    h = Harness()
    events: list[str] = []
    chat = ChatService(h.factory, RecordingWork(events))  # type: ignore[arg-type]
    closed: Deferred[None] = Deferred()
    h.factory.shutdown = lambda: closed  # type: ignore[method-assign]
    outcome: list[Any] = []
    chat.stopService().addBoth(outcome.append)
    assert events == [] and outcome == []
    closed.callback(None)
    assert events == ["threads stop"] and outcome == [None]


def test_a_cluster_nodes_password_threads_start_with_it_and_stop_after_its_connections(
) -> None:
    """Started by startService (after twistd's fork), not when built; stopped
    once the connections are gone, before the node leaves Redis."""
    from twisted.internet import defer
    from twisted.internet.defer import Deferred

    from tests.harness import Harness
    from twisted_chat.server.cluster.service import ClusterService

    events: list[str] = []

    class Redis:
        class state:
            @staticmethod
            def stopping() -> None:
                events.append("node stopping")

        class target:
            display = "redis://fake"

        def start(self) -> Deferred[None]:
            events.append("redis start")
            return Deferred()

        def stop(self) -> Deferred[None]:
            events.append("redis stop")
            return defer.succeed(None)

    h = Harness()
    node = ClusterService(h.factory, Redis(), RecordingWork(events))  # type: ignore[arg-type]
    assert events == []
    node.startService()
    assert events == ["threads start", "redis start"]
    closed: Deferred[None] = Deferred()
    h.factory.shutdown = lambda: closed  # type: ignore[method-assign]
    outcome: list[Any] = []
    node.stopService().addBoth(outcome.append)
    assert events[2:] == ["node stopping"] and outcome == []
    closed.callback(None)
    assert events[3:] == ["threads stop", "redis stop"] and outcome == [None]


def test_log_keep_s_help_says_it_applies_with_n_too() -> None:
    """It said "Daemon mode (twistd's --logfile FILE)", but rotation and
    --log-keep work under -n --logfile FILE too (a nit of rev14-ops)."""
    [help_text] = [p[3] for p in Options.optParameters if p[0] == "log-keep"]
    assert help_text.startswith("With twistd's --logfile FILE (as a daemon or with -n):")


@pytest.mark.parametrize(("name", "reason"), [
    ("Team\nChat", "control characters (a newline, a CR) are not allowed: 'Team\\nChat'"),
    ("Team\r\nBYE x", "control characters (a newline, a CR) are not allowed: 'Team\\r\\nBYE x'"),
    ("Caf\udce9", "not UTF-8 text"),
    ("é" * 51, "at most 100 bytes (UTF-8), not 102"),
    ("", "a name is needed, not an empty or blank one: ''"),
    (" ", "a name is needed, not an empty or blank one: ' '"),
    (" \t ", "a name is needed, not an empty or blank one: ' \\t '"),
])
def test_a_server_name_the_greeting_cannot_carry_is_a_usage_error(
    name: str, reason: str
) -> None:
    """rev20-ops F1, F2: a newline split every HELLO in two (a line of the
    operator's on the wire); a name that is not UTF-8 was a traceback.
    rev21-attack F3: an empty or blank name made the greeting
    C{HELLO chat/1  (twisted-chat ...)}, which the page showed as the
    server's name "(twisted-chat ...)"."""
    with pytest.raises(usage.UsageError) as e:
        options("--server-name", name)
    assert str(e.value) == f"--server-name: {reason}"


def test_a_server_name_of_printable_text_is_taken() -> None:
    name = "Café\tchat " + "x" * 88  # 100 bytes: TAB is allowed, as on the wire
    assert options("--server-name", name).config().server_name == name


class _Twistd(dict[str, Any]):
    """twistd's options, as the plugin's C{parent} holds them."""


def _with_pidfile(pidfile: str, *argv: str) -> Options:
    chat = options(*argv)
    chat.parent = _Twistd(pidfile=pidfile, chroot=None)  # type: ignore[attr-defined]
    return chat


def test_a_pidfile_in_a_missing_folder_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """rev20-ops F4: twistd wrote it after start-up, a FileNotFoundError's
    traceback; now it is one line before any file is made."""
    pidfile = tmp_path / "run" / "chat" / "chat.pid"
    db = tmp_path / "chat.sqlite3"
    with pytest.raises(SystemExit) as e:
        makeService(_with_pidfile(str(pidfile), "--db", str(db)), ThreadedMemoryReactor())
    assert str(e.value) == (f"twistd chat: cannot write --pidfile {pidfile}: No such file or "
                            f"directory (its folder {pidfile.parent} must exist first)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_pidfile_that_cannot_be_written_stops_start_up_with_one_line(
    tmp_path: Path, where: str
) -> None:
    pidfile = tmp_path / "chat.pid"
    if where == "folder":
        pidfile.mkdir()
        reason = "Is a directory"
    else:
        (tmp_path / "file").write_text("")
        pidfile = tmp_path / "file" / "chat.pid"
        reason = f"Not a directory (its folder {pidfile.parent} must exist first)"
    with pytest.raises(SystemExit) as e:
        makeService(_with_pidfile(str(pidfile), "--db", ":memory:"), ThreadedMemoryReactor())
    assert str(e.value) == f"twistd chat: cannot write --pidfile {pidfile}: {reason}"


def test_a_pidfile_in_a_folder_that_is_there_is_left_to_twistd(tmp_path: Path) -> None:
    top = makeService(_with_pidfile(str(tmp_path / "chat.pid"), "--db", ":memory:"),
                      ThreadedMemoryReactor())
    assert top is not None
    assert list(tmp_path.iterdir()) == []


def test_a_unix_socket_another_server_holds_says_so() -> None:
    """rev20-ops note: Twisted's own "Cannot acquire lock" (of the socket's
    lock file) did not say that another process is listening there."""
    class HeldReactor(ThreadedMemoryReactor):
        def listenUNIX(self, address: str, *args: Any, **kwargs: Any) -> Any:
            from twisted.internet.error import CannotListenError
            raise CannotListenError(None, address.encode(), "Cannot acquire lock")

    top = makeService(options("--port", "unix:/tmp/chat.sock", "--db", ":memory:"),
                      HeldReactor())
    with pytest.raises(StartupError) as e:
        top.privilegedStartService()
    assert str(e.value) == ("cannot listen on --port unix:/tmp/chat.sock: "
                            "another process is already listening there")


def test_start_and_stop_lines_count_in_words(tmp_path: Path) -> None:
    """An operator reads "1 message loaded", "1 connection", not "1 messages"."""
    db = str(tmp_path / "chat.sqlite3")
    reactor = ThreadedMemoryReactor()
    first = makeService(options("--db", db), reactor)
    first.startService()
    list(first)[1].factory.history.record(Entry(1.0, "alice", "kept"))  # type: ignore[call-overload]
    reactor.pump_until(first.stopService())

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twisted_chat.server.service.ChatService":
            lines.append(str(formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        again = makeService(options("--db", db), reactor)
        again.startService()
        reactor.pump_until(again.stopService())
    finally:
        globalLogPublisher.removeObserver(observe)
    assert f"lobby history: 1 message loaded from {db}" in lines
    assert "saying BYE to 0 connections" in lines
