"""Coming back to the lobby, against the real C{twistd -n chat}."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.serverproc import LineClient, ServerProcess

pytestmark = pytest.mark.e2e


def test_the_lobby_lines_missed_in_a_pair_are_replayed_once(
        chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]) -> None:
    server = chat_server("--db", ":memory:", "--history", "2")
    alice, bob, carol = (connect(server.port) for _ in range(3))
    for client, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.register(nick)
    carol.send("MSG seen live")
    alice.expect("MSG ")
    alice.send("PAIR bob")
    bob.expect("INVITE alice")
    bob.send("ACCEPT alice")
    alice.expect("PAIRED bob")
    for text in ("one", "two", "three"):
        carol.send(f"MSG {text}")
    carol.sync()  # the server has handled all three
    alice.send("UNPAIR")
    for client, partner in ((alice, "bob"), (bob, "alice")):
        client.expect(f"UNPAIRED {partner} left")
        block = []
        while not (line := client.readline()).startswith("USERS "):
            block.append(line)
        replayed = [line.split(" ", 3)[2:] for line in block if line.startswith("HISTORY ")]
        # At most --history of them, oldest first, right after UNPAIRED.
        assert replayed == [["carol", "two"], ["carol", "three"]]
        assert block[:2] == [line for line in block if line.startswith("HISTORY ")]
    carol.send("MSG back together")
    carol.sync()
    for client in (alice, bob):
        later = client.sync()
        assert [line.split(" ", 4)[4] for line in later if line.startswith("MSG ")] == [
            "back together"]
        assert not any(line.startswith("HISTORY ") for line in later)
    assert server.problems() == []
