"""
Soak: a few hundred loopback clients at random against the real server, in
two identical rounds (bounded: about 20 s each, everything under timeouts).

Each client (seeded per client, so a round repeats itself) connects,
registers, chats, sends DMs, invites, accepts, rejects, unpairs, sends
garbage bytes and over-long lines in pieces, and then leaves in one of
several ways: BYE, an abrupt close or reset, stops reading while asking for
more than its send queue holds, never registers, or stays to the end.

Afterwards: no unhandled error in the server's log, every line the server
sent was well formed, the survivors' views of pairs and invitations agree
with each other and name nobody who left, USERS lists exactly the survivors,
every departed nick can be registered again, and once all quit a newcomer
sees C{USERS 1}.  The server's RSS after the second round must be within
C{RSS_MARGIN} of its RSS after the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field

import pytest

from tests.serverproc import LOOPBACK

pytestmark = pytest.mark.soak

SEED = 20261122
CLIENTS = 300  # per round
START_SPREAD = 8.0  # seconds over which a round's clients arrive
LIFETIME = (1.0, 7.0)  # seconds a client is active
ROUND_LIMIT = 40.0  # seconds: a round that takes longer fails
MAX_LINE = 4096
# RSS after round 2 may exceed RSS after round 1 by at most this much (about
# 6% of the server's 52 MB; the rounds seen so far differ by under 0.5 MB).
RSS_MARGIN_KIB = 3 * 1024

BAD_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
EXITS = ["bye", "vanish", "reset", "stall", "nameless", "survive"]
EXIT_WEIGHTS = [30, 20, 15, 12, 8, 15]
LEAVE_REASONS = {"quit", "disconnected", "timeout", "flood", "sendq"}


class Broken(AssertionError):
    """The server said something it must not."""


@dataclass
class Bot:
    world: World
    nick: str
    rng: random.Random
    exit: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    lines: list[str] = field(default_factory=list)
    ready: bool = False
    eof: bool = False
    auto: bool = True  # answer invitations at random
    partner: str | None = None
    outgoing: str | None = None
    incoming: set[str] = field(default_factory=set)
    pongs: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    read_task: asyncio.Task[None] | None = None

    # -- connection ------------------------------------------------------------

    async def connect(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        if self.exit == "stall":
            # A tiny receive buffer: the server's output backs up soon.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, self.world.port)), 10)
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        self.read_task = asyncio.create_task(self.read_loop())

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode() + b"\r\n"
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(data)

    async def read_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    break
                self.handle(raw)
        except (ConnectionError, OSError):
            pass
        except Broken as e:
            self.world.errors.append(e)
            raise
        finally:
            self.eof = True
            for future in self.pongs.values():
                if not future.done():
                    future.set_exception(EOFError(self.nick))

    def handle(self, raw: bytes) -> None:
        if not raw.endswith(b"\r\n"):
            raise Broken(f"{self.nick}: a line without CRLF: {raw[-80:]!r}")
        try:
            line = raw[:-2].decode()
        except UnicodeDecodeError:
            raise Broken(f"{self.nick}: not UTF-8: {raw[:80]!r}") from None
        if BAD_CHARS.search(line):
            raise Broken(f"{self.nick}: control characters in {line[:80]!r}")
        self.lines.append(line)
        verb, _, rest = line.partition(" ")
        words = rest.split(" ")
        if verb == "READY":
            self.ready = True
            self.world.online.add(self.nick)
        elif verb == "PONG" and rest in self.pongs:
            self.pongs.pop(rest).set_result(None)
        elif verb == "PING":
            self.send(f"PONG {rest}" if rest else "PONG")
        elif verb == "LEFT":
            self.world.leaves[words[1]] = words[2]
            if words[2] not in LEAVE_REASONS:
                raise Broken(f"unknown leave reason in {line!r}")
        elif verb == "INVITE":
            self.incoming.add(words[0])
            if self.auto:
                choice = self.rng.random()
                if choice < 0.4:
                    self.send(f"ACCEPT {words[0]}")
                elif choice < 0.7:
                    self.send(f"REJECT {words[0]}")
        elif verb == "PENDING":
            self.outgoing = words[0]
        elif verb == "PAIRED":
            self.partner = words[0]
            self.incoming.discard(words[0])
            if self.outgoing == words[0]:
                self.outgoing = None
        elif verb == "UNPAIRED":
            if self.partner != words[0]:
                raise Broken(f"{self.nick} paired with {self.partner}, got {line!r}")
            self.partner = None
        elif verb == "DECLINED":
            if self.outgoing != words[0]:
                raise Broken(f"{self.nick} invited {self.outgoing}, got {line!r}")
            self.outgoing = None
        elif verb == "CANCELLED":
            if words[0] not in self.incoming:
                raise Broken(f"{self.nick} had no invitation from {words[0]}: {line!r}")
            self.incoming.discard(words[0])
        elif verb == "ERROR":
            self.world.codes[words[0]] = self.world.codes.get(words[0], 0) + 1
        elif verb == "BYE" and rest.split(" ")[0] not in ("quit", "sendq"):
            raise Broken(f"{self.nick}: unexpected {line!r}")

    async def sync(self, timeout: float = 10.0) -> None:
        """PING and wait for the PONG: the server has handled all we sent."""
        token = f"sync-{self.world.tokens}"
        self.world.tokens += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pongs[token] = future
        self.send(f"PING {token}")
        await asyncio.wait_for(future, timeout)

    def abort(self, reset: bool) -> None:
        assert self.writer is not None
        sock = self.writer.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def closed(self, timeout: float = 10.0) -> None:
        assert self.read_task is not None
        await asyncio.wait_for(asyncio.shield(self.read_task), timeout)

    # -- behaviour ---------------------------------------------------------------

    def someone(self) -> str:
        others = sorted(self.world.online - {self.nick})
        if not others or self.rng.random() < 0.05:
            return f"ghost{self.rng.randrange(1000)}"
        return self.rng.choice(others)

    def text(self) -> str:
        words = ["hello", "hi", "ok", "été", "日本", "🙂", "lol", "  spaced  ", "tab\there"]
        return " ".join(self.rng.choice(words) for _ in range(self.rng.randint(1, 8)))

    async def act(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            self.send(f"MSG {self.text()}")
        elif roll < 0.35:
            self.send(f"DM {self.someone()} {self.text()}")
        elif roll < 0.47:
            self.send(f"PAIR {self.someone()}")
        elif roll < 0.53 and self.incoming:
            verb = rng.choice(["ACCEPT", "REJECT"])
            self.send(f"{verb} {rng.choice(sorted(self.incoming))}")
        elif roll < 0.60:
            self.send("UNPAIR")
        elif roll < 0.65:
            self.send("USERS")
        elif roll < 0.75:
            if rng.random() < 0.5:
                garbage = bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))
            else:  # valid UTF-8 with control characters a terminal would obey
                garbage = rng.choice(["MSG \x1b[2J\x1b[31mred", "DM x a\x00b", "MSG \u2028x",
                                      "MSG bell\x07", "MSG \x9b31m", "MSG a\rb"]).encode()
            self.send(garbage.replace(b"\n", b"") + rng.choice([b"\n", b"\r\n"]))
        elif roll < 0.82:
            # An over-long line, arriving in pieces.
            size = rng.choice([MAX_LINE + 1, MAX_LINE + 2, 3 * MAX_LINE, 20_000])
            data = (b"MSG " + b"x" * size)[:size] + b"\r\n"
            while data:
                cut = rng.randint(1, 6000)
                self.send(data[:cut])
                data = data[cut:]
                await asyncio.sleep(0)
        elif roll < 0.87:
            # A line split at a random byte, even inside a character.
            data = f"MSG split {self.text()}\r\n".encode()
            cut = rng.randint(1, len(data) - 1)
            self.send(data[:cut])
            await asyncio.sleep(rng.uniform(0, 0.05))
            self.send(data[cut:])
        elif roll < 0.92:
            self.send(rng.choice(["HELP", "help MSG", "PING x y", "PONG", "NICK again",
                                  "READY", "msg", "DM", "PAIR", "   ", ""]))
        else:
            self.send(f"PAIR {self.nick}")

    async def live(self, start: float) -> None:
        rng = self.rng
        await asyncio.sleep(start)
        await self.connect()
        if self.exit == "nameless":
            await asyncio.sleep(rng.uniform(0, 2))
            how = rng.choice(["bye", "vanish", "garbage"])
            if how == "bye":
                self.send("BYE not staying")
                await self.closed()
                if self.lines[-1] != "BYE quit":
                    raise Broken(f"nameless BYE answered {self.lines[-3:]}")
            else:
                if how == "garbage":
                    self.send(b"\xff\xfe\x00 MSG hi\n" + b"y" * 9000 + b"\n")
                    await asyncio.sleep(0.2)
                self.abort(reset=rng.random() < 0.5)
            return
        self.send(f"NICK {self.nick}")
        await self.sync()
        if not self.ready:
            raise Broken(f"{self.nick} could not register: {self.lines[-3:]}")
        until = time.monotonic() + rng.uniform(*LIFETIME)
        while time.monotonic() < until and not self.eof:
            await self.act()
            await asyncio.sleep(rng.uniform(0.05, 0.6))
        if self.exit == "survive":
            # End with an invitation out, to someone who may leave later.
            self.send("UNPAIR")
            self.send(f"PAIR {self.someone()}")
            return
        if rng.random() < 0.5:
            # Leave with an invitation out (to a survivor, perhaps).
            self.send(f"PAIR {self.someone()}")
            await asyncio.sleep(rng.uniform(0, 0.3))
        self.world.online.discard(self.nick)
        self.world.departed.add(self.nick)
        if self.exit == "bye":
            self.send(f"BYE {self.text()}")
            await self.closed()
            if self.lines[-1] != "BYE quit":
                raise Broken(f"{self.nick}: BYE answered {self.lines[-3:]}")
        elif self.exit == "stall":
            # Stop reading and ask for far more than the send queue holds.
            assert self.read_task is not None
            self.read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.read_task
            self.writer.transport.pause_reading()  # type: ignore[union-attr]
            self.send(b"HELP\r\n" * 8000)
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            self.abort(reset=True)
        else:
            self.abort(reset=self.exit == "reset")


@dataclass
class World:
    port: int
    online: set[str] = field(default_factory=set)
    departed: set[str] = field(default_factory=set)
    leaves: dict[str, str] = field(default_factory=dict)
    errors: list[Broken] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)  # ERROR codes received
    tokens: int = 0


async def fresh(world: World, nick: str) -> Bot:
    bot = Bot(world, nick, random.Random(nick), "bye")
    await bot.connect()
    bot.send(f"NICK {nick}")
    await bot.sync()
    world.online.discard(nick)
    return bot


async def users(world: World) -> list[str]:
    """The USER lines (but its own) that a newly registered checker gets
    for C{USERS}."""
    checker = await fresh(world, "zzchecker")
    checker.send("USERS")
    await checker.sync()
    end = max(i for i, line in enumerate(checker.lines) if line.startswith("USERS "))
    start = end
    while checker.lines[start - 1].startswith("USER "):
        start -= 1
    checker.send("BYE")
    await checker.closed()
    others = [line for line in checker.lines[start:end] if line != "USER zzchecker lobby"]
    assert checker.lines[end] == f"USERS {len(others) + 1}", checker.lines[start:end + 1]
    return others


async def play_round(port: int, round_no: int) -> dict[str, int]:
    world = World(port)
    master = random.Random(SEED)
    bots = []
    tasks = []
    for i in range(CLIENTS):
        rng = random.Random(master.getrandbits(64))
        bot = Bot(world, f"Bot{i:03d}", rng, rng.choices(EXITS, EXIT_WEIGHTS)[0])
        bots.append(bot)
        tasks.append(asyncio.create_task(bot.live(rng.uniform(0, START_SPREAD))))
    done, pending = await asyncio.wait(tasks, timeout=ROUND_LIMIT)
    for task in pending:
        task.cancel()
    assert not pending, f"round {round_no}: {len(pending)} clients still busy"
    for task in done:
        task.result()  # re-raise a Broken
    survivors = [bot for bot in bots if bot.exit == "survive"]
    names = {bot.nick for bot in survivors}

    # Wait for the server to have seen every departure.
    deadline = time.monotonic() + 15
    while True:
        listed = await users(world)
        if {line.split(" ")[1] for line in listed} == names:
            break
        assert time.monotonic() < deadline, f"USERS still lists departed: {listed}"
        await asyncio.sleep(0.2)

    # Quiesce: no more automatic answers; two rounds of PING so that every
    # survivor has everything the others' last lines caused.
    for bot in survivors:
        bot.auto = False
    for _ in range(2):
        await asyncio.gather(*(bot.sync() for bot in survivors))

    by_nick = {bot.nick: bot for bot in survivors}
    for bot in survivors:
        if bot.partner is not None:
            mate = by_nick.get(bot.partner)
            assert mate is not None, f"{bot.nick} is still paired with departed {bot.partner}"
            assert mate.partner == bot.nick, f"{bot.nick}-{bot.partner} pair is one-sided"
        if bot.outgoing is not None:
            invitee = by_nick.get(bot.outgoing)
            assert invitee is not None, f"{bot.nick} still invites departed {bot.outgoing}"
            assert bot.nick in invitee.incoming, f"{bot.nick}->{bot.outgoing} one-sided"
        for inviter in bot.incoming:
            assert inviter in by_nick, f"{bot.nick} still invited by departed {inviter}"
            assert by_nick[inviter].outgoing == bot.nick, f"{inviter}->{bot.nick} one-sided"
    states = {line.split(" ")[1]: line.split(" ")[2] for line in listed}
    for bot in survivors:
        assert states[bot.nick] == ("paired" if bot.partner else "lobby"), bot.nick

    # Every departed nick is free again (also in another case).
    departed = sorted(world.departed)
    for start in range(0, len(departed), 50):
        again = await asyncio.gather(*(fresh(world, nick.upper())
                                       for nick in departed[start:start + 50]))
        for bot in again:
            assert bot.ready, f"{bot.nick} not free again: {bot.lines[-3:]}"
            bot.send("BYE")
        await asyncio.gather(*(bot.closed() for bot in again))

    # Pairs and invitations end cleanly; then everyone quits.
    for bot in survivors:
        bot.send("UNPAIR")
    for _ in range(2):
        await asyncio.gather(*(bot.sync() for bot in survivors))
    for bot in survivors:
        assert bot.partner is None and bot.outgoing is None, bot.nick
        for inviter in sorted(bot.incoming):
            raise AssertionError(f"{bot.nick} still invited by {inviter} after UNPAIR")
    for bot in survivors:
        bot.send("BYE")
    await asyncio.gather(*(bot.closed() for bot in survivors))
    for bot in survivors:
        assert bot.lines[-1] == "BYE quit", bot.lines[-3:]
    assert await users(world) == []  # a newcomer sees USERS 1: itself
    assert world.errors == []

    reasons: dict[str, int] = {}
    for reason in world.leaves.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    reasons["survivors"] = len(survivors)
    # The garbage was met with the right errors, and nothing else went wrong.
    for code in ("too-long", "bad-encoding", "bad-chars", "unknown-command", "bad-args",
                 "no-such-nick", "self", "not-paired", "already-ready"):
        assert world.codes.get(code, 0) > 0, (code, world.codes)
    assert set(world.codes) <= {
        "too-long", "bad-encoding", "bad-chars", "unknown-command", "bad-args", "no-such-nick",
        "self", "not-paired", "already-ready", "busy", "pending", "no-invite"}, world.codes
    print(f"round {round_no}: errors {world.codes}")
    return reasons


def test_soak(chat_server):
    server = chat_server("--max-per-ip", "1000", "--flood-rate", "0")
    started = time.monotonic()
    rss = []
    for round_no in (1, 2):
        reasons = asyncio.run(play_round(server.port, round_no))
        time.sleep(0.5)
        rss.append(server.rss_kib())
        print(f"round {round_no}: {time.monotonic() - started:.1f}s, leaves {reasons}, "
              f"RSS {rss[-1]} KiB")
        # Each way of leaving happened.
        for reason in ("quit", "disconnected", "sendq"):
            assert reasons.get(reason, 0) > 0, (reason, reasons)
    assert server.problems() == [], server.problems()[:5]
    assert rss[1] <= rss[0] + RSS_MARGIN_KIB, f"RSS {rss[0]} KiB after round 1, {rss[1]} after 2"
    assert server.proc.poll() is None
