"""
End-to-end tests of the durable lobby history: the real C{twistd -n chat}
with C{--db}, real sockets, SIGTERM and SIGKILL; and the lobby on a real
reactor with a store whose write is stuck.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet import threads

from tests.serverproc import LOOPBACK, TWISTD, LineClient, ServerProcess, wait_until
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.history import History
from twisted_chat.server.store import SQLiteStore
from twisted_chat.server.storefile import APPLICATION_ID, SCHEMA_VERSION

pytestmark = pytest.mark.e2e
reactor: Any = _reactor
Gen = Generator[Any, Any, None]
Start = Callable[..., ServerProcess]
Connect = Callable[..., LineClient]

#: What docs/history.md promises: after a SIGKILL, only messages accepted in
#: the last commit interval (0.1 s) plus one commit can be missing.  The test
#: allows 0.5 s so that a loaded machine's slow fsync does not make it flaky.
CRASH_BOUND = 0.5

#: The tests send messages as fast as the server echoes them.
FAST = ("--flood-rate", "0")
#: twistd ends by re-raising the signal that stopped it.
STOPPED = (0, -signal.SIGTERM)


def joined(port: int, connect: Connect, nick: str) -> tuple[LineClient, list[str]]:
    """A client in the lobby, and the block it got after READY."""
    client = connect(port)
    client.expect("HELLO ")
    return client, client.register(nick)


def say(client: LineClient, nick: str, text: str) -> str:
    """Send a lobby message; return the HISTORY line it should become."""
    client.send(f"MSG {text}")
    echo = client.expect(lambda line: line.startswith("MSG ") and line.endswith(f" {text}"))
    _, ts, sender, to, rest = echo.split(" ", 4)
    assert (sender, to, rest) == (nick, "*", text), echo
    return f"HISTORY {ts} {nick} {text}"


def history_of(block: Sequence[str]) -> list[str]:
    return [line for line in block if line.startswith("HISTORY ")]


def refused(server: ServerProcess) -> str:
    """Start C{server}, which must exit at once with an error; its log and output."""
    started = time.monotonic()
    server.start(wait=False)
    try:
        assert server.proc is not None
        assert server.proc.wait(15) != 0
    finally:
        server.kill()
    assert time.monotonic() - started < 10
    return server.log() + server.output()


def db_texts(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT text FROM messages ORDER BY id")]
    finally:
        conn.close()


def test_history_survives_sigterm(chat_server: Start, connect: Connect, tmp_path: Path) -> None:
    server = chat_server(*FAST, "--db", "chat.sqlite3", "--history", "5")
    alice, _ = joined(server.port, connect, "alice")
    expected = [say(alice, "alice", f"message {i}  with  spaces ") for i in range(200)]
    # SIGTERM right after the last echo, well inside the commit interval:
    # only the flush at shutdown can have written the last messages.
    assert server.stop(signal.SIGTERM) in STOPPED
    assert db_texts(tmp_path / "chat.sqlite3") == [
        f"message {i}  with  spaces " for i in range(200)
    ]
    assert sorted(p.name for p in tmp_path.glob("chat.sqlite3*")) == ["chat.sqlite3"]

    again = chat_server(*FAST, "--db", "chat.sqlite3", "--history", "5")
    bob, block = joined(again.port, connect, "bob")
    assert block == [*expected[-5:], "USER bob lobby", "USERS 1"]
    # New messages go on after the old ones, and are not replayed twice.
    latest = say(bob, "bob", "after the restart")
    _, block = joined(again.port, connect, "carol")
    assert history_of(block) == [*expected[-4:], latest]


def test_history_survives_sigkill_within_the_bound(
    chat_server: Start, connect: Connect, tmp_path: Path
) -> None:
    server = chat_server(*FAST, "--db", "chat.sqlite3", "--history", "10000")
    alice, _ = joined(server.port, connect, "alice")
    sent: list[tuple[float, str]] = []  # (when the echo came, the HISTORY line)
    deadline = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < deadline:
        line = say(alice, "alice", f"message {i}")
        sent.append((time.monotonic(), line))
        i += 1
        time.sleep(0.002)
    killed_at = time.monotonic()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    again = chat_server(*FAST, "--db", "chat.sqlite3", "--history", "10000")
    _, block = joined(again.port, connect, "bob")
    replayed = history_of(block)
    lines = [line for _, line in sent]
    assert replayed == lines[: len(replayed)], "what survives is the oldest messages, in order"
    lost = sent[len(replayed) :]
    assert len(sent) > 100 and len(replayed) > 0
    if lost:
        oldest_lost = killed_at - lost[0][0]
        assert oldest_lost < CRASH_BOUND, (
            f"lost {len(lost)} messages, the oldest echoed {oldest_lost:.3f} s before the kill"
        )
    assert again.stop() in STOPPED
    assert sorted(p.name for p in tmp_path.glob("chat.sqlite3*")) == ["chat.sqlite3"]


def test_second_server_on_the_same_file_fails_at_once(
    chat_server: Start, connect: Connect, tmp_path: Path
) -> None:
    first = chat_server(*FAST, "--db", "chat.sqlite3")
    alice, _ = joined(first.port, connect, "alice")
    hello = say(alice, "alice", "hello")

    second = ServerProcess(tmp_path, [*FAST, "--db", "chat.sqlite3"])
    path = str(tmp_path / "chat.sqlite3")
    assert f"The chat database {path} is in use by another process" in refused(second)
    with pytest.raises(OSError):
        LineClient(second.port, timeout=1)

    # The first server is unharmed, and so is the file.
    later = say(alice, "alice", "still here")
    assert first.stop() in STOPPED
    again = chat_server(*FAST, "--db", "chat.sqlite3")
    _, block = joined(again.port, connect, "bob")
    assert history_of(block) == [hello, later]


#: A C{twistd} no file of which may grow past 24 KiB (RLIMIT_FSIZE): the
#: full disk of the tests below, which needs no root (no tmpfs to mount).
#: The 32 KiB C{-shm} index a reader of a write-ahead log maps cannot be
#: made, and the log cannot grow past it.
NO_ROOM_TWISTD = f"""#!{sys.executable}
import os, resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (24 * 1024, resource.RLIM_INFINITY))
os.execv({TWISTD!r}, [{TWISTD!r}, *sys.argv[1:]])
"""


def committed(path: Path) -> int:
    """How many messages a copy of the database and its -wal holds now."""
    copy = path.parent / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    for name in (path.name, path.name + "-wal"):
        shutil.copy(path.parent / name, copy / name)
    conn = sqlite3.connect(copy / path.name)
    try:
        count: int = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        return count
    finally:
        conn.close()


def test_a_restart_on_a_full_disk_starts_and_keeps_the_logs_messages(
    chat_server: Start, connect: Connect, tmp_path: Path
) -> None:
    """
    rev22-attack 1: a server stopped while its disk is full leaves its last
    messages in the -wal.  Started again on the still-full disk, it said
    "The chat database ... is corrupt: disk I/O error" and stopped, and
    docs/history.md then said to restore a backup, losing them.  Now it
    starts, replays them, chats, and retries its writes as it does when the
    disk fills while it runs; once there is room, nothing was lost.
    """
    path = tmp_path / "chat.sqlite3"
    first = chat_server(*FAST, "--db", "chat.sqlite3")
    alice, _ = joined(first.port, connect, "alice")
    long = "x" * 3000  # a page each: the -wal grows past the 24 KiB
    said = [say(alice, "alice", f"{i} {long}") for i in range(12)]
    wait_until(lambda: committed(path) == 12, what="the 12 messages committed")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # the -wal stays
    assert (tmp_path / "chat.sqlite3-wal").stat().st_size > 24 * 1024

    wrapper = tmp_path / "twistd-no-room"
    wrapper.write_text(NO_ROOM_TWISTD)
    wrapper.chmod(0o755)
    full = chat_server(*FAST, "--db", "chat.sqlite3", twistd=str(wrapper), this_tree=True)
    bob, block = joined(full.port, connect, "bob")
    assert history_of(block) == said
    say(bob, "bob", "on a full disk")
    full.wait_log(f"Could not write 1 lobby message(s) to the chat database {path}")
    assert full.stop() in STOPPED
    assert "corrupt" not in full.log()

    again = chat_server(*FAST, "--db", "chat.sqlite3")
    _, block = joined(again.port, connect, "carol")
    assert history_of(block) == said


def test_a_file_that_is_not_a_chat_database_stops_start_up(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n" * 100)
    before = hashlib.sha256(notes.read_bytes()).hexdigest()
    server = ServerProcess(tmp_path, ["--db", "notes.txt"])
    assert f"{notes} is not a chat database" in refused(server)
    assert hashlib.sha256(notes.read_bytes()).hexdigest() == before


def test_old_file_is_upgraded_and_retention_applies(
    chat_server: Start, connect: Connect, tmp_path: Path
) -> None:
    path = tmp_path / "chat.sqlite3"
    now = time.time()
    old = [(now - 10 * 86400 + i, "old", f"old {i}") for i in range(3)]
    recent = [(now - 3600 + i, "new", f"new {i}") for i in range(2)]
    conn = sqlite3.connect(path)  # a file as schema version 1 left it
    conn.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " ts REAL NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL);"
        f"PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=1;"
    )
    conn.executemany("INSERT INTO messages (ts, nick, text) VALUES (?, ?, ?)", old + recent)
    conn.commit()
    conn.close()

    server = chat_server(*FAST, "--db", "chat.sqlite3", "--retain-days", "2")
    _, block = joined(server.port, connect, "alice")
    assert [line.split(" ", 2)[2] for line in history_of(block)] == ["new new 0", "new new 1"]
    assert server.stop() in STOPPED
    assert db_texts(path) == ["new 0", "new 1"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_memory_database_keeps_nothing(
    chat_server: Start, connect: Connect, tmp_path: Path
) -> None:
    server = chat_server(*FAST, "--db", ":memory:")
    alice, _ = joined(server.port, connect, "alice")
    line = say(alice, "alice", "ephemeral")
    _, block = joined(server.port, connect, "bob")
    assert history_of(block) == [line]
    assert server.stop() in STOPPED
    assert not list(tmp_path.glob("*sqlite*")) and not list(tmp_path.glob(":memory:*"))


# -- a slow disk ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_lobby_stays_responsive_while_a_write_is_stuck(tmp_path: Path) -> Gen:
    """
    The real lobby on the real reactor, over loopback TCP, with a store whose
    first write does not finish (a stalled disk) until the clients are done.
    If writes ran on the reactor thread, or the reactor waited for one, no
    PONG and no echo would come back meanwhile, and this fails.
    """
    reactor_thread = threading.current_thread()
    release, inside = threading.Event(), threading.Event()
    writers: set[threading.Thread] = set()
    released: list[bool] = []  # each write's wait: True if the test ended it

    class Stuck(SQLiteStore):
        def _insert(self, rows: Sequence[tuple[float, str, str]]) -> None:
            writers.add(threading.current_thread())
            inside.set()
            released.append(release.wait(10))  # the stalled disk, 10 s at most
            super()._insert(rows)

    store = Stuck.open(str(tmp_path / "chat.sqlite3"), reactor)
    config = ServerConfig(history=1000, flood_rate=0.0, idle_timeout=0.0, nick_timeout=0.0,
                          exempt=(LOOPBACK,))
    factory = ChatFactory(config, reactor, History(config.history, store, store.recent(1000)))
    port = reactor.listenTCP(0, factory, interface=LOOPBACK)
    number = port.getHost().port

    def clients() -> int:
        assert threading.current_thread() is not reactor_thread
        alice = LineClient(number)
        bob = LineClient(number)
        try:
            for client, nick in ((alice, "alice"), (bob, "bob")):
                client.expect("HELLO ")
                client.register(nick)
            count = 50
            for i in range(count):
                echo = f" * message {i}"
                alice.send(f"MSG message {i}")
                alice.expect(lambda line, echo=echo: line.endswith(echo))
                bob.expect(lambda line, echo=echo: line.endswith(echo))
                if i == 0:
                    assert inside.wait(10), "message 0 was never written"
                bob.send(f"PING {i}")
                bob.expect(f"PONG {i}")
            assert released == [], "the stuck write ended on its own: something waited for it"
            return count
        finally:
            release.set()
            alice.close()
            bob.close()

    try:
        count = yield threads.deferToThread(clients)
        yield store.flush().addTimeout(10, reactor)
        stored = [e.text for e in store.recent(1000)]
    finally:
        release.set()
        yield factory.shutdown()
        yield port.stopListening()
        yield store.close().addTimeout(10, reactor)
    assert writers and reactor_thread not in writers
    assert released and all(released), "a write waited 10 s: nobody released it"
    assert stored == [f"message {i}" for i in range(count)]
