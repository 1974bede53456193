"""
Issue 2 end to end: the real C{twistd -n chat} on a loopback port, driven
over real TCP sockets.  Handshake, lobby broadcast to three clients, DM,
pairing, an abrupt disconnect, and SIGTERM shutdown with C{BYE}.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import time

import pytest

from tests.serverproc import LineClient

pytestmark = pytest.mark.e2e

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def joined(port, connect, *nicks):
    """Connect and register each nick in turn; returns the clients."""
    clients = []
    for nick in nicks:
        client = connect(port)
        assert client.readline().startswith("HELLO chat/1 ")
        client.register(nick)
        clients.append(client)
    # Everyone has seen everyone's JOINED once this returns.
    for client in clients:
        client.sync()
    return clients


def pair(inviter, invitee, inviter_nick, invitee_nick):
    inviter.send(f"PAIR {invitee_nick}")
    invitee.expect(f"INVITE {inviter_nick}")
    invitee.send(f"ACCEPT {inviter_nick}")
    assert invitee.expect("PAIRED") == f"PAIRED {inviter_nick}"
    assert inviter.expect("PAIRED") == f"PAIRED {invitee_nick}"


def msg_re(sender, to, text):
    return re.compile(rf"MSG ({TS}) {sender} {re.escape(to)} {re.escape(text)}")


def delivered(sender, pattern, to=(), not_to=()):
    """The sender's copy matches C{pattern}; C{to} get the same line next,
    C{not_to} get nothing."""
    line = sender.readline()
    assert pattern.fullmatch(line), line
    for client in to:
        assert client.readline() == line
    for client in not_to:
        assert client.sync() == []
    return line


def test_handshake(chat_server, connect):
    server = chat_server("--server-name", "e2e-server")
    alice = connect(server.port)
    hello = alice.readline()
    assert hello.startswith("HELLO chat/1 ") and "e2e-server" in hello
    assert alice.readline() == "NICK"
    alice.send("NICK no spaces")
    assert alice.readline().startswith("RETRY invalid ")
    alice.send("NICK 1bad")
    assert alice.readline().startswith("RETRY invalid ")
    alice.send("MSG too early")
    assert alice.readline().startswith("ERROR not-ready ")
    alice.send("NICK Alice")
    assert alice.readline() == "READY Alice"
    assert alice.readline() == "USER Alice lobby"
    assert alice.readline() == "USERS 1"

    bob = connect(server.port)
    bob.expect("NICK")
    bob.send("nick ALICE")  # verbs and nicks match without regard to case
    assert bob.readline().startswith("RETRY taken ")
    bob.send("NICK bob")
    assert bob.readline() == "READY bob"
    assert [bob.readline(), bob.readline(), bob.readline()] == [
        "USER Alice lobby", "USER bob lobby", "USERS 2"]
    assert re.fullmatch(rf"JOINED {TS} bob", alice.readline())
    bob.send("NICK again")
    assert bob.readline().startswith("ERROR already-ready ")
    alice.send("USERS")
    assert [alice.readline(), alice.readline(), alice.readline()] == [
        "USER Alice lobby", "USER bob lobby", "USERS 2"]
    # History replay: a newcomer sees what was said before it came.
    alice.send("MSG before carol")
    alice.expect("MSG ")
    carol = connect(server.port)
    block = carol.register("carol")
    assert re.fullmatch(rf"HISTORY {TS} Alice before carol", block[0])
    assert block[1:] == ["USER Alice lobby", "USER bob lobby", "USER carol lobby", "USERS 3"]


def test_broadcast_reaches_three_clients_in_one_order(chat_server, connect):
    server = chat_server()
    nicks = ["ann", "ben", "cat"]
    clients = joined(server.port, connect, *nicks)
    # They all talk at once; each must see all six lines, the sender its own
    # copies, and every client the same lines in the same order.
    for nick, client in zip(nicks, clients, strict=True):
        client.send(f"MSG  hello from {nick}  ")
    for nick, client in zip(nicks, clients, strict=True):
        client.send(f"msg second from {nick}")
    seen = []
    for client in clients:
        lines = [client.expect("MSG ") for _ in range(6)]
        assert client.sync() == []  # nothing else, in particular no duplicate
        seen.append(lines)
    assert seen[0] == seen[1] == seen[2]
    for nick in nicks:
        own = [line for line in seen[0] if line.split(" ")[2] == nick]
        assert len(own) == 2
        assert msg_re(nick, "*", f"hello from {nick}  ").fullmatch(own[0])
        assert msg_re(nick, "*", f"second from {nick}").fullmatch(own[1])


def test_dm_goes_to_the_recipient_and_the_sender_only(chat_server, connect):
    server = chat_server()
    ann, ben, cat = joined(server.port, connect, "ann", "ben", "cat")
    ann.send("DM CAT  psst, only you ")
    delivered(ann, msg_re("ann", "cat", "psst, only you "), to=[cat], not_to=[ben])
    ann.send("DM ann me")
    assert ann.readline().startswith("ERROR self ")
    ann.send("DM nobody hi")
    assert ann.readline().startswith("ERROR no-such-nick ")
    # DMs are not history.
    dan = connect(server.port)
    assert not any(line.startswith("HISTORY") for line in dan.register("dan"))


def test_pairing(chat_server, connect):
    server = chat_server()
    ann, ben, cat = joined(server.port, connect, "ann", "ben", "cat")
    ann.send("PAIR Ben")
    assert ann.readline() == "PENDING ben"
    assert ben.readline() == "INVITE ann"
    ann.send("PAIR cat")
    assert ann.readline().startswith("ERROR pending ")
    ben.send("ACCEPT ann")
    assert ben.readline() == "PAIRED ann"
    assert ann.readline() == "PAIRED ben"
    cat.send("USERS")
    assert [cat.readline() for _ in range(4)] == [
        "USER ann paired", "USER ben paired", "USER cat lobby", "USERS 3"]

    # A paired MSG goes to the partner only (and the sender's copy).
    ann.send("MSG just us")
    delivered(ann, msg_re("ann", "ben", "just us"), to=[ben], not_to=[cat])
    # The lobby's messages do not reach the pair.
    cat.send("MSG lobby talk")
    delivered(cat, msg_re("cat", "*", "lobby talk"), not_to=[ann, ben])
    # But a DM does.
    cat.send("DM ben knock knock")
    delivered(cat, msg_re("cat", "ben", "knock knock"), to=[ben], not_to=[ann])

    ben.send("UNPAIR")
    for client, partner in ((ben, "ann"), (ann, "ben")):
        assert client.readline() == f"UNPAIRED {partner} left"
        # The lobby line they missed while paired, replayed once.
        missed = client.readline()
        assert missed.startswith("HISTORY ") and missed.endswith(" cat lobby talk")
        assert [client.readline() for _ in range(4)] == [
            "USER ann lobby", "USER ben lobby", "USER cat lobby", "USERS 3"]
    # Back in the lobby, lobby messages reach them again.
    cat.send("MSG welcome back")
    line = cat.readline()
    assert ann.readline() == line and ben.readline() == line


def test_reject_and_mutual_invitation(chat_server, connect):
    server = chat_server()
    ann, ben = joined(server.port, connect, "ann", "ben")
    ann.send("PAIR ben")
    assert ann.readline() == "PENDING ben"
    assert ben.readline() == "INVITE ann"
    ben.send("REJECT ann")
    assert ben.readline() == "CANCELLED ann rejected"
    assert ann.readline() == "DECLINED ben rejected"
    ann.send("PAIR ben")
    ann.expect("PENDING ben")
    ben.expect("INVITE ann")
    ben.send("PAIR ann")
    assert ben.readline() == "PAIRED ann"
    assert ann.readline() == "PAIRED ben"


def abort(client: LineClient) -> None:
    """Vanish without a word: a TCP reset rather than a FIN."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


@pytest.mark.parametrize("how", ["reset", "close"])
def test_abrupt_disconnect(chat_server, connect, how):
    server = chat_server()
    ann, ben, cat = joined(server.port, connect, "ann", "ben", "cat")
    pair(ann, ben, "ann", "ben")

    if how == "reset":
        abort(ann)
    else:
        ann.sock.close()

    left = re.compile(rf"LEFT {TS} ann disconnected")
    assert left.fullmatch(cat.readline())
    # The partner: LEFT first, then UNPAIRED, then the user list.
    assert left.fullmatch(ben.readline())
    assert ben.readline() == "UNPAIRED ann disconnected"
    assert [ben.readline() for _ in range(3)] == ["USER ben lobby", "USER cat lobby", "USERS 2"]
    assert ben.sync() == [] and cat.sync() == []
    # The nick is free again at once.
    again = connect(server.port)
    again.register("ANN")
    assert re.fullmatch(rf"JOINED {TS} ANN", cat.readline())
    # An open invitation to someone who vanishes ends as "gone".
    cat.send("PAIR ben")
    cat.expect("PENDING ben")
    ben.expect("INVITE cat")
    abort(ben) if how == "reset" else ben.sock.close()
    assert re.fullmatch(rf"LEFT {TS} ben disconnected", cat.readline())
    assert cat.readline() == "DECLINED ben gone"


def test_bye_from_client(chat_server, connect):
    server = chat_server()
    ann, ben = joined(server.port, connect, "ann", "ben")
    ann.send("BYE see you  ")
    assert ann.rest() == ["BYE quit"]
    assert re.fullmatch(rf"LEFT {TS} ann quit see you  ", ben.readline())


def test_a_client_that_half_closes_gets_its_own_copy_then_eof(chat_server, connect):
    """C{printf 'NICK bot\nMSG ...\n' | nc -N}: the line waits for the pacing
    (50 ms after the fan-out of bot's JOINED), the client's EOF comes before
    it goes out, and the client must still get its copy, then the close."""
    server = chat_server("--fanout-delay", "50")
    ann = connect(server.port)
    ann.register("ann")
    bot = connect(server.port)
    bot.register("bot")
    bot.send("MSG deploy done")
    bot.sock.shutdown(socket.SHUT_WR)
    rest = bot.rest()
    assert len(rest) == 1 and re.fullmatch(rf"MSG {TS} bot \* deploy done", rest[0]), rest
    assert re.fullmatch(rf"JOINED {TS} bot", ann.readline())
    assert re.fullmatch(rf"MSG {TS} bot \* deploy done", ann.readline())
    assert re.fullmatch(rf"LEFT {TS} bot disconnected", ann.readline())


def assert_clean_exit(server, code):
    """
    A clean stop: exit status 0, or the SIGTERM it was sent, which twistd
    re-raises on itself once the reactor has stopped (Twisted's convention,
    so that a supervisor sees why it ended); the log must show the whole
    orderly shutdown and no unhandled error.
    """
    assert code in (0, -signal.SIGTERM), code
    log = server.log()
    assert "Main loop terminated." in log and "Server Shut Down." in log
    assert server.problems() == []


def shutdown(server, clients, limit=5.0):
    """SIGTERM; every client gets C{BYE shutdown ...} as its last line, then
    EOF, and the process exits 0 within C{limit} seconds."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        rest = client.rest(timeout=limit)
        assert rest and rest[-1].startswith("BYE shutdown"), rest
        assert all(not line.startswith("BYE") for line in rest[:-1])
    # Wait without a second signal: one SIGTERM must be enough.
    code = server.proc.wait(max(limit - (time.monotonic() - started), 0.1))
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"shutdown took {elapsed:.1f}s"
    assert_clean_exit(server, code)
    return elapsed


def test_sigterm_says_bye_to_everyone(chat_server, connect):
    server = chat_server()
    ann, ben, cat = joined(server.port, connect, "ann", "ben", "cat")
    pair(ann, ben, "ann", "ben")
    nameless = connect(server.port)  # still in the NICK state
    nameless.expect("NICK")
    # Nobody is told that the others left: the BYE is all.
    shutdown(server, [ann, ben, cat, nameless])
    for client in (ann, ben, cat):
        assert not any(line.startswith("LEFT") for line in client.lines[-5:])


def stuck_reader(port: int, nick: str) -> LineClient:
    """A registered client with a tiny receive buffer that stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    client = LineClient(port, sock=sock)
    client.register(nick)
    return client


def test_sigterm_with_a_client_that_never_reads(chat_server, connect):
    # About 4 MB of lobby lines for one that never reads: more than the
    # kernel holds for it on loopback (about 2.3 MB with a 2 kB receive
    # buffer), so the server still has data queued for it when it stops, and
    # its close cannot complete.  The send queue limit is raised so that it
    # is not dropped before.
    server = chat_server("--flood-rate", "0", "--sendq", str(64 << 20))
    stuck = stuck_reader(server.port, "stuck")
    talker, other = joined(server.port, connect, "talker", "other")
    text = "y" * 3000
    for i in range(1400):
        talker.send(f"MSG {i} {text}")
        talker.expect(lambda line, i=i: f" * {i} " in line)
        other.expect(lambda line, i=i: f" * {i} " in line)
    elapsed = shutdown(server, [talker, other])
    stuck.close()
    # The grace period for peers that do not take their data is 3 s.
    assert elapsed < 5.0
