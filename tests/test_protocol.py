"""
chat/1 over StringTransport: every verb, state, error code and pairing edge
case of docs/protocol.md, with time from a task.Clock.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from tests.harness import Conn, Harness
from twisted_chat.wire import format_ts


@pytest.fixture
def h() -> Harness:
    return Harness()


def ts(h: Harness) -> str:
    return format_ts(h.clock.seconds())


# -- handshake ---------------------------------------------------------------


def test_greeting(h: Harness) -> None:
    conn = h.connect()
    assert conn.take() == ["HELLO chat/1 twisted-chat (twisted-chat 0.1.0)", "NICK"]


def test_server_name_in_greeting() -> None:
    h = Harness(server_name="friends")
    assert h.connect().take()[0].startswith("HELLO chat/1 friends ")


def test_ready_block_lists_users_including_newcomer(h: Harness) -> None:
    h.user("bob")
    conn = h.connect()
    conn.take()
    conn.send("NICK alice")
    assert conn.take() == ["READY alice", "USER alice lobby", "USER bob lobby", "USERS 2"]


def test_others_see_joined_newcomer_does_not(h: Harness) -> None:
    bob = h.user("bob")
    alice = h.connect()
    alice.send("NICK alice")
    assert bob.take() == [f"JOINED {ts(h)} alice"]
    assert not any(line.startswith("JOINED") for line in alice.take())


@pytest.mark.parametrize("taken", ["bob", "BOB", "Bob"])
def test_nick_taken_without_regard_to_case(h: Harness, taken: str) -> None:
    h.user("bob")
    conn = h.connect()
    conn.take()
    conn.send(f"NICK {taken}")
    # Named as its owner spelled it (chat/1), not as the NICK had it.
    assert conn.take() == ["RETRY taken bob is online already"]
    assert conn.user is None


@pytest.mark.parametrize(
    "line",
    ["NICK", "NICK   ", "NICK a b", "NICK 1abc", "NICK _x", "NICK a" + "b" * 24, "NICK al!ce",
     "NICK é", "NICK a\tb"],
)
def test_nick_invalid_gets_retry_invalid(h: Harness, line: str) -> None:
    conn = h.connect()
    conn.take()
    conn.send(line)
    reply = conn.take_one()
    assert reply.startswith("RETRY invalid "), reply
    conn.send("NICK fine")  # no new prompt needed: the next NICK just works
    assert conn.take()[0] == "READY fine"


def test_texts_naming_an_online_user_use_the_owners_spelling(h: Harness) -> None:
    """Whatever case the nick was typed in, every line naming an online user
    (replies and error texts alike) spells it as its owner does."""
    alice, bob, carol = h.user("Alice"), h.user("Bob"), h.user("carol")
    h.clear_all()
    bob.send("ACCEPT ALICE", "REJECT aLICE")
    assert bob.take() == ["ERROR no-invite you have no open invitation from Alice"] * 2
    bob.send("ACCEPT nobody")  # not online: there is no owner's spelling to use
    assert bob.take() == ["ERROR no-invite you have no open invitation from nobody"]
    carol.send("PAIR BOB")
    assert carol.take() == ["PENDING Bob"]
    carol.send("PAIR ALICE")
    assert carol.take() == [
        "ERROR pending your invitation to Bob is still open; UNPAIR withdraws it"]
    bob.send("ACCEPT CAROL")
    h.clear_all()
    alice.send("PAIR BOB", "DM CAROL hi")
    assert alice.take() == ["ERROR busy Bob is in a private conversation",
                            f"MSG {ts(h)} Alice carol hi"]
    bob.send("PAIR ALICE")
    assert bob.take() == ["ERROR busy you are paired with carol; UNPAIR first"]


def test_nick_rules_accept_boundaries(h: Harness) -> None:
    for nick in ["a", "A" + "b" * 23, "x-_9"]:
        conn = h.connect()
        conn.take()
        conn.send(f"NICK {nick}")
        assert conn.take()[0] == f"READY {nick}"


def test_nick_keeps_owner_spelling(h: Harness) -> None:
    h.user("AlIcE")
    bob = h.user("bob")
    bob.send("DM alice hi")
    assert bob.take() == [f"MSG {ts(h)} bob AlIcE hi"]


@pytest.mark.parametrize("verb", ["MSG hi", "DM bob hi", "USERS", "PAIR bob", "ACCEPT bob",
                                  "REJECT bob", "UNPAIR"])
def test_not_ready_before_nick(h: Harness, verb: str) -> None:
    conn = h.connect()
    conn.take()
    conn.send(verb)
    assert conn.take_one().startswith("ERROR not-ready ")


def test_allowed_before_ready(h: Harness) -> None:
    conn = h.connect()
    conn.take()
    conn.send("PING x", "PONG y", "HELP BYE")
    assert conn.take() == ["PONG x", "HELP BYE [<text>] - leave the server", "HELP"]


def test_nick_after_ready_is_already_ready(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("NICK other")
    assert alice.take_one().startswith("ERROR already-ready ")
    alice.send("NICK")  # the state is checked before the arguments
    assert alice.take_one().startswith("ERROR already-ready ")


def test_bye_before_ready_closes_without_left(h: Harness) -> None:
    bob = h.user("bob")
    conn = h.connect()
    conn.take()
    conn.send("BYE")
    assert conn.take() == ["BYE quit"]
    assert conn.transport.disconnecting
    conn.drop()
    assert bob.take() == []


# -- history -----------------------------------------------------------------


def test_history_replayed_oldest_first_with_original_times(h: Harness) -> None:
    alice = h.user("alice")
    first = ts(h)
    alice.send("MSG one")
    h.clock.advance(5)
    second = ts(h)
    alice.send("MSG two  ")
    h.clock.advance(5)
    bob = h.connect()
    bob.send("NICK bob")
    assert bob.take()[2:5] == [
        "READY bob",
        f"HISTORY {first} alice one",
        f"HISTORY {second} alice two  ",
    ]


def test_history_keeps_last_n() -> None:
    h = Harness(history=2)
    alice = h.user("alice")
    alice.send("MSG 1", "MSG 2", "MSG 3")
    bob = h.connect()
    bob.send("NICK bob")
    history = [line.split(" ", 3)[3] for line in bob.take() if line.startswith("HISTORY")]
    assert history == ["2", "3"]


def test_history_zero_keeps_nothing() -> None:
    h = Harness(history=0)
    h.user("alice").send("MSG 1")
    bob = h.connect()
    bob.send("NICK bob")
    assert not [line for line in bob.take() if line.startswith("HISTORY")]


def test_history_has_lobby_messages_only(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("DM bob private", "PAIR bob")
    bob.send("ACCEPT alice")
    alice.send("MSG paired talk")
    carol = h.connect()
    carol.send("NICK carol")
    assert not [line for line in carol.take() if line.startswith("HISTORY")]


def test_message_in_same_turn_as_join_is_history_not_live(h: Harness) -> None:
    """No message appears both in a newcomer's history and live."""
    alice = h.user("alice")
    bob = h.connect()
    bob.take()
    # Both lines arrive in one reactor turn; the lobby line is still gathered
    # (not yet written) when bob joins.
    alice.protocol.dataReceived(b"MSG racing\r\n")
    bob.protocol.dataReceived(b"NICK bob\r\n")
    h.clock.advance(0)
    got = bob.take()
    assert [line for line in got if "racing" in line] == [f"HISTORY {ts(h)} alice racing"]
    assert alice.take() == [f"MSG {ts(h)} alice * racing", f"JOINED {ts(h)} bob"]


# -- lobby and direct messages -------------------------------------------------


def test_lobby_message_to_everyone_including_sender(h: Harness) -> None:
    conns = [h.user(n) for n in ("alice", "bob", "carol")]
    conns[0].send("MSG hello   there  ")
    for conn in conns:
        assert conn.take() == [f"MSG {ts(h)} alice * hello   there  "]


def test_lobby_lines_of_one_turn_arrive_in_order_to_all(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    alice.protocol.dataReceived(b"MSG a1\r\nMSG a2\r\n")
    bob.protocol.dataReceived(b"MSG b1\r\n")
    alice.protocol.dataReceived(b"MSG a3\r\n")
    h.clock.advance(0)
    expected = [f"MSG {ts(h)} {n} * {t}" for n, t in
                [("alice", "a1"), ("alice", "a2"), ("bob", "b1"), ("alice", "a3")]]
    for conn in (alice, bob, carol):
        assert conn.take() == expected


@pytest.mark.parametrize("line", ["MSG", "MSG ", "MSG  \t ", "msg \t"])
def test_msg_needs_text(h: Harness, line: str) -> None:
    alice = h.user("alice")
    alice.send(line)
    assert alice.take_one().startswith("ERROR bad-args ")


def test_msg_text_starts_after_spaces_and_keeps_tabs(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("MSG    \tindented")
    assert alice.take_one() == f"MSG {ts(h)} alice * \tindented"


def test_verbs_case_insensitive_and_leading_spaces(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("   mSg hi")
    assert alice.take_one() == f"MSG {ts(h)} alice * hi"


def test_spaces_around_a_verb_without_free_text_are_tolerated(h: Harness) -> None:
    """chat/1: spaces before the verb and after the last argument of a verb
    without free text are tolerated (a tab is not a space)."""
    bob = h.user("bob")
    alice = h.connect()
    alice.take()
    alice.send("  NICK alice   ")
    assert alice.take()[0] == "READY alice"
    h.clear_all()
    alice.send(" PAIR  bob  ", "  UNPAIR  ", "USERS\t")
    assert alice.take() == ["PENDING bob", "DECLINED bob withdrawn",
                            "ERROR unknown-command unknown command 'USERS\\t'; try HELP"]
    assert bob.take() == ["INVITE alice", "CANCELLED alice withdrawn"]


def test_direct_message_to_recipient_and_sender_copy(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    alice.send("DM BOB  psst  ")
    line = f"MSG {ts(h)} alice bob psst  "
    assert bob.take() == [line]
    assert alice.take() == [line]
    assert carol.take() == []


@pytest.mark.parametrize(
    ("line", "code"),
    [("DM alice hi", "self"), ("DM nobody hi", "no-such-nick"), ("DM 9x hi", "bad-args"),
     ("DM bob", "bad-args"), ("DM bob   ", "bad-args"), ("DM", "bad-args")],
)
def test_direct_message_errors(h: Harness, line: str, code: str) -> None:
    alice = h.user("alice")
    h.user("bob")
    alice.take()
    alice.send(line)
    assert alice.take_one().startswith(f"ERROR {code} ")


def test_reply_after_lobby_line_keeps_order(h: Harness) -> None:
    """A lobby line is gathered for the turn; a direct reply must not overtake it."""
    alice = h.user("alice")
    alice.send("MSG first", "PING second")
    assert alice.take() == [f"MSG {ts(h)} alice * first", "PONG second"]


# -- users ---------------------------------------------------------------------


def test_users_sorted_without_regard_to_case(h: Harness) -> None:
    for nick in ("carol", "Bob", "alice", "Dave"):
        h.user(nick)
    conn = h.user("eve")
    conn.send("USERS")
    assert conn.take() == [
        "USER alice lobby", "USER Bob lobby", "USER carol lobby", "USER Dave lobby",
        "USER eve lobby", "USERS 5",
    ]


def test_users_shows_paired_state(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    h.user("carol")
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    alice.take()
    alice.send("USERS")
    assert alice.take() == ["USER alice paired", "USER bob paired", "USER carol lobby",
                            "USERS 3"]


def test_users_takes_no_arguments(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("USERS   ")
    assert alice.take()[-1] == "USERS 1"
    alice.send("USERS all")
    assert alice.take_one().startswith("ERROR bad-args ")


def test_show_addresses() -> None:
    h = Harness(show_addresses=True)
    v4 = h.connect("127.0.0.1")
    v4.send("NICK four")
    v6 = h.connect("::1")
    v6.send("NICK six")
    unix = h.connect(None)
    unix.send("NICK sock")
    unix.take()
    unix.send("USERS")
    port4 = v4.transport.getPeer().port
    port6 = v6.transport.getPeer().port
    assert unix.take() == [
        f"USER four lobby 127.0.0.1:{port4}", f"USER six lobby [::1]:{port6}",
        "USER sock lobby -", "USERS 3",
    ]


def test_addresses_hidden_by_default(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("USERS")
    assert alice.take() == ["USER alice lobby", "USERS 1"]


# -- pairing -------------------------------------------------------------------


def pair(h: Harness, a: Conn, b: Conn) -> None:
    a.send(f"PAIR {b.user.nick}")
    b.send(f"ACCEPT {a.user.nick}")
    h.clear_all()


def test_pairing_flow(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR Bob")
    assert alice.take() == ["PENDING bob"]
    assert bob.take() == ["INVITE alice"]
    bob.send("accept ALICE")
    assert alice.take() == ["PAIRED bob"]
    assert bob.take() == ["PAIRED alice"]


def test_paired_messages_go_to_partner_only(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    alice.send("MSG just us")
    line = f"MSG {ts(h)} alice bob just us"
    assert bob.take() == [line]
    assert alice.take() == [line]
    assert carol.take() == []


def test_paired_users_get_no_lobby_messages_but_dms_joined_left(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    carol.send("MSG lobby only", "DM alice direct")
    assert alice.take() == [f"MSG {ts(h)} carol alice direct"]
    dave = h.connect()
    dave.send("NICK dave")
    assert alice.take() == [f"JOINED {ts(h)} dave"]
    dave.send("BYE")
    assert alice.take() == [f"LEFT {ts(h)} dave quit"]


def test_unpair_returns_both_to_lobby_with_user_list(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    bob.send("UNPAIR")
    roster = ["USER alice lobby", "USER bob lobby", "USER carol lobby", "USERS 3"]
    assert bob.take() == ["UNPAIRED alice left", *roster]
    assert alice.take() == ["UNPAIRED bob left", *roster]
    carol.send("MSG back")
    assert alice.take() == [f"MSG {ts(h)} carol * back"]


def test_reject(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    bob.send("REJECT alice")
    assert alice.take() == ["DECLINED bob rejected"]
    assert bob.take() == ["CANCELLED alice rejected"]
    alice.send("PAIR bob")  # the invitation is gone: a new one may be sent
    assert alice.take() == ["PENDING bob"]


def test_withdraw(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    alice.send("UNPAIR")
    assert alice.take() == ["DECLINED bob withdrawn"]
    assert bob.take() == ["CANCELLED alice withdrawn"]
    bob.send("ACCEPT alice")
    assert bob.take_one().startswith("ERROR no-invite ")


def test_invitation_timeout(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    h.clock.advance(59.999)
    assert alice.take() == [] and bob.take() == []
    h.clock.advance(0.001)
    assert alice.take() == ["DECLINED bob timeout"]
    assert bob.take() == ["CANCELLED alice timeout"]


def test_invite_timeout_option() -> None:
    h = Harness(invite_timeout=5)
    alice, _bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    h.clock.advance(5)
    assert alice.take() == ["DECLINED bob timeout"]


def test_accepted_invitation_does_not_time_out(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    pair(h, alice, bob)
    h.clock.advance(120)
    assert alice.take() == [] and bob.take() == []
    assert not h.clock.getDelayedCalls()


def test_one_outgoing_invitation(h: Harness) -> None:
    alice, _bob, _carol = (h.user(n) for n in ("alice", "bob", "carol"))
    alice.send("PAIR bob")
    alice.take()
    for again in ("PAIR carol", "PAIR bob"):
        alice.send(again)
        assert alice.take_one().startswith("ERROR pending ")


def test_incoming_invitations_unlimited_and_pairing_ends_others_as_busy(h: Harness) -> None:
    alice, bob, carol, dave = (h.user(n) for n in ("alice", "bob", "carol", "dave"))
    bob.send("PAIR alice")
    carol.send("PAIR alice")
    alice.send("PAIR dave")
    h.clear_all()
    alice.send("ACCEPT carol")
    assert alice.take() == ["PAIRED carol", "DECLINED dave busy", "CANCELLED bob busy"]
    assert carol.take() == ["PAIRED alice"]
    assert bob.take() == ["DECLINED alice busy"]
    assert dave.take() == ["CANCELLED alice busy"]
    h.clock.advance(60)  # the ended invitations' timers are gone
    assert [c.take() for c in (alice, bob, carol, dave)] == [[], [], [], []]


def test_mutual_invitation_pairs_at_once(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    alice.send("PAIR bob")
    bob.send("PAIR carol")
    h.clear_all()
    bob.send("PAIR alice")
    assert alice.take() == ["PAIRED bob"]
    assert bob.take() == ["PAIRED alice", "DECLINED carol busy"]
    assert carol.take() == ["CANCELLED bob busy"]


def test_busy(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    carol.send("PAIR alice")
    assert carol.take_one().startswith("ERROR busy ")
    alice.send("PAIR carol")
    assert alice.take_one().startswith("ERROR busy ")


@pytest.mark.parametrize(("line", "code"), [
    ("PAIR alice", "self"), ("PAIR nobody", "no-such-nick"), ("PAIR", "bad-args"),
    ("PAIR a b", "bad-args"), ("PAIR -x", "bad-args"),
    ("ACCEPT bob", "no-invite"), ("REJECT bob", "no-invite"), ("ACCEPT nobody", "no-invite"),
    ("REJECT nobody", "no-invite"),
    ("ACCEPT", "bad-args"), ("UNPAIR", "not-paired"), ("UNPAIR now", "bad-args"),
])
def test_pairing_errors(h: Harness, line: str, code: str) -> None:
    alice = h.user("alice")
    h.user("bob")
    alice.take()
    alice.send(line)
    assert alice.take_one().startswith(f"ERROR {code} ")


def test_unpair_with_only_incoming_invitations_is_not_paired(h: Harness) -> None:
    """An invitation received is not UNPAIR's to withdraw (REJECT declines
    it): bob, invited, is told so, and alice's invitation stays open."""
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    bob.send("UNPAIR")
    assert bob.take() == [
        "ERROR not-paired you are not paired and have sent no invitation "
        "(REJECT declines one you received)"]
    assert alice.take() == []
    bob.send("ACCEPT alice")
    assert alice.take() == ["PAIRED bob"]


def test_accept_while_paired_is_no_invite(h: Harness) -> None:
    alice, bob, _carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    alice.send("ACCEPT carol", "REJECT bob")
    lines = alice.take()
    assert [line.split()[1] for line in lines] == ["no-invite", "no-invite"]


def test_inviter_gone(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    alice.drop()
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected", "CANCELLED alice gone"]


def test_invitee_gone(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    h.clear_all()
    bob.send("BYE off")
    assert alice.take() == [f"LEFT {ts(h)} bob quit off", "DECLINED bob gone"]
    alice.send("PAIR bob")
    assert alice.take_one().startswith("ERROR no-such-nick ")


def test_partner_disconnects(h: Harness) -> None:
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    pair(h, alice, bob)
    bob.drop()
    assert alice.take() == [
        f"LEFT {ts(h)} bob disconnected", "UNPAIRED bob disconnected",
        "USER alice lobby", "USER carol lobby", "USERS 2",
    ]
    assert carol.take() == [f"LEFT {ts(h)} bob disconnected"]
    carol.send("MSG welcome back")
    assert alice.take() == [f"MSG {ts(h)} carol * welcome back"]


# -- leaving -------------------------------------------------------------------


def test_bye(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    bob.send("BYE  see you  ")
    assert bob.take() == ["BYE quit"]
    assert bob.transport.disconnecting
    assert alice.take() == [f"LEFT {ts(h)} bob quit see you  "]
    bob.send("MSG after bye", "USERS")  # ignored
    assert bob.take() == [] and alice.take() == []


def test_disconnect_without_text_has_no_trailing_space(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    bob.drop()
    assert alice.take() == [f"LEFT {ts(h)} bob disconnected"]


def test_nick_free_after_left(h: Harness) -> None:
    h.user("bob").send("BYE")
    again = h.connect()
    again.send("NICK Bob")
    assert "READY Bob" in again.take()


def test_lines_in_same_chunk_after_bye_are_ignored(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    bob.send_raw(b"BYE\r\nMSG ghost\r\n")
    assert alice.take() == [f"LEFT {ts(h)} bob quit"]


# -- framing -------------------------------------------------------------------


def test_a_read_of_one_line_after_bye_is_ignored(h: Harness) -> None:
    """A read that is one whole line (framed on a path of its own) is not
    handled once the connection is closing."""
    alice, bob = h.user("alice"), h.user("bob")
    bob.send_raw(b"BYE\r\n")
    bob.send_raw(b"MSG ghost\r\n")
    assert alice.take() == [f"LEFT {ts(h)} bob quit"]


def test_a_read_of_one_line_ending_a_discarded_line_is_discarded() -> None:
    """The end of an over-long line that comes in a read of its own is
    still part of it: discarded, not handled as a line."""
    h = Harness(max_line=20)
    alice = h.user("alice")
    alice.send_raw(b"MSG " + b"z" * 30)
    assert alice.take() == ["ERROR too-long lines may be at most 20 bytes"]
    alice.send_raw(b"HELP tail\r\n")
    alice.send_raw(b"MSG after\r\n")
    assert alice.take() == [f"MSG {ts(h)} alice * after"]


def test_lf_and_crlf_terminators(h: Harness) -> None:
    alice = h.user("alice")
    alice.send_raw(b"MSG lf\nMSG crlf\r\n")
    assert alice.take() == [f"MSG {ts(h)} alice * lf", f"MSG {ts(h)} alice * crlf"]


def test_partial_lines_are_assembled(h: Harness) -> None:
    alice = h.user("alice")
    for piece in (b"MS", b"G he", b"llo\r", b"\n"):
        alice.send_raw(piece)
    assert alice.take() == [f"MSG {ts(h)} alice * hello"]


def test_empty_and_blank_lines_are_ignored(h: Harness) -> None:
    alice = h.user("alice")
    alice.send_raw(b"\r\n\n   \r\n \t \n")
    assert alice.take() == []


def test_max_line_boundary() -> None:
    h = Harness(max_line=20)
    alice = h.user("alice")
    exact = b"MSG " + b"x" * 16  # 20 bytes
    alice.send_raw(exact + b"\r\n")
    assert alice.take() == [f"MSG {ts(h)} alice * " + "x" * 16]
    alice.send_raw(exact + b"y\r\n")
    assert alice.take_one().startswith("ERROR too-long ")


def test_a_line_of_max_line_bytes_whose_crlf_is_split_across_reads_is_taken() -> None:
    """TCP splits where it likes: a read that ends in the CR of a line of
    exactly max_line bytes holds max_line + 1 bytes, and that is not yet
    too long (the LF comes in the next read)."""
    h = Harness(max_line=20)
    alice = h.user("alice")
    exact = b"MSG " + b"x" * 16  # 20 bytes
    alice.send_raw(exact + b"\r")
    assert alice.take() == []
    alice.send_raw(b"\n")
    assert alice.take() == [f"MSG {ts(h)} alice * " + "x" * 16]


def test_too_long_one_error_however_it_arrives_and_connection_kept() -> None:
    h = Harness(max_line=50)
    alice = h.user("alice")
    for _ in range(10):
        alice.send_raw(b"MSG " + b"z" * 40)
    alice.send_raw(b"still the same line\r\nMSG after\r\n")
    assert alice.take() == [
        "ERROR too-long lines may be at most 50 bytes", f"MSG {ts(h)} alice * after"
    ]


def test_a_line_without_newline_holds_at_most_max_line() -> None:
    """A peer that never sends a newline: what is kept of its partial line
    stays within max_line + 1 bytes (a CR may end it), the rest is
    discarded as it comes, and ERROR too-long is said once, at once.
    Unbounded, the buffer grew with every read, each read copying all of
    it (quadratic CPU)."""
    h = Harness(max_line=50)
    alice = h.user("alice")
    for i in range(100):
        alice.send_raw(b"MSG " + b"z" * 36)  # 40 bytes
        assert len(alice.protocol._buffer) <= 51, i
        if i == 0:
            assert alice.take() == []
        if i == 1:  # 80 bytes of one line so far, and no newline yet
            assert alice.take() == ["ERROR too-long lines may be at most 50 bytes"]
    alice.send_raw(b"\r\nMSG after\r\n")
    assert alice.take() == [f"MSG {ts(h)} alice * after"]


def test_too_long_inside_one_chunk() -> None:
    h = Harness(max_line=10)
    alice = h.user("alice")
    alice.send_raw(b"MSG a\r\nMSG " + b"b" * 20 + b"\r\nMSG c\r\n")
    assert alice.take() == [
        f"MSG {ts(h)} alice * a", "ERROR too-long lines may be at most 10 bytes",
        f"MSG {ts(h)} alice * c",
    ]


def test_check_order_length_before_encoding() -> None:
    h = Harness(max_line=10)
    alice = h.user("alice")
    alice.send_raw(b"\xff" * 11 + b"\r\n")
    assert alice.take_one().startswith("ERROR too-long ")


@pytest.mark.parametrize(("raw", "code"), [
    (b"MSG \xff\xfe", "bad-encoding"),
    (b"MSG \xc3", "bad-encoding"),
    (b"\xffMSG hi", "bad-encoding"),
    (b"MSG \x1b[31mred", "bad-chars"),
    (b"MSG a\rb", "bad-chars"),
    (b"MSG c\r", "bad-chars"),  # CR CR LF: only the CR right before the LF is the terminator's
    (b"MSG a\x00b", "bad-chars"),
    (b"MSG del\x7f", "bad-chars"),
    ("MSG c1\u0085".encode(), "bad-chars"),
    ("MSG sep\u2028".encode(), "bad-chars"),
    ("MSG par\u2029".encode(), "bad-chars"),
    (b"BOGUS \x1b", "bad-chars"),  # characters are checked before the verb
    (b"BOGUS hi", "unknown-command"),
    (b"READY alice", "unknown-command"),  # a server-only verb
    (b"HELLO", "unknown-command"),
])
def test_bad_lines(h: Harness, raw: bytes, code: str) -> None:
    alice = h.user("alice")
    alice.send_raw(raw + b"\r\n")
    assert alice.take_one().startswith(f"ERROR {code} ")
    alice.send("MSG still here")
    assert alice.take() == [f"MSG {ts(h)} alice * still here"]


def test_unknown_command_in_nick_state_before_state_check(h: Harness) -> None:
    conn = h.connect()
    conn.take()
    conn.send("JOINED x")
    assert conn.take_one().startswith("ERROR unknown-command ")


def test_tab_and_unicode_allowed(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("MSG tab\there ünïcødé 🎉")
    assert alice.take() == [f"MSG {ts(h)} alice * tab\there ünïcødé 🎉"]


def test_bad_line_does_not_affect_others(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    alice.send_raw(b"\xff\x1b\r\n")
    assert bob.take() == []


# -- liveness and help ---------------------------------------------------------


def test_ping_pong_token_verbatim(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("PING  a token  ", "PING", "ping 42")
    assert alice.take() == ["PONG a token  ", "PONG", "PONG 42"]


def test_unsolicited_pong_ignored(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("PONG whatever", "PONG")
    assert alice.take() == []


def test_help_lists_every_command_then_bare_help(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("HELP")
    lines = alice.take()
    assert lines[-1] == "HELP"
    verbs = [line.split()[1] for line in lines[:-1]]
    assert verbs == ["NICK", "MSG", "DM", "USERS", "PAIR", "ACCEPT", "REJECT", "UNPAIR",
                     "PING", "PONG", "HELP", "BYE", "PASS", "REGISTER", "PASSWD"]


def test_help_on_one_verb(h: Harness) -> None:
    alice = h.user("alice")
    alice.send("help pair")
    assert alice.take() == [
        "HELP PAIR <nick> - invite a user to a private one-to-one conversation", "HELP"]
    alice.send("HELP NOPE")
    assert alice.take_one().startswith("ERROR bad-args ")


@pytest.mark.parametrize("nodelay", [False, True])
def test_tcp_nodelay_only_with_the_option(nodelay: bool) -> None:
    """Nagle stays on (the kernel queues a write behind unacknowledged
    bytes) unless --tcp-nodelay asks for every write to leave at once."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    class TCPTransport(StringTransport):
        no_delay: bool | None = None

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    h = Harness(tcp_nodelay=nodelay)
    address = IPv4Address("TCP", "127.0.0.1", 5000)
    transport = TCPTransport(peerAddress=address)
    h.factory.buildProtocol(address).makeConnection(transport)
    assert transport.no_delay is (True if nodelay else None)


def test_arrivals_in_one_turn_share_one_write_and_see_each_other(h: Harness) -> None:
    """JOINED rides with the turn's lobby lines; each newcomer gets only what
    came after its own arrival (what came before is in its history)."""
    alice = h.user("alice")
    bob, carol = h.connect(), h.connect()
    h.clear_all()
    alice.protocol.dataReceived(b"MSG before\r\n")
    bob.protocol.dataReceived(b"NICK bob\r\n")
    alice.protocol.dataReceived(b"MSG between\r\n")
    carol.protocol.dataReceived(b"NICK carol\r\n")
    alice.protocol.dataReceived(b"MSG after\r\n")
    writes_before = len(alice.transport.io.getvalue())
    assert writes_before == 0  # nothing written to alice yet: all gathered
    h.clock.advance(0)
    t = ts(h)
    assert alice.take() == [f"MSG {t} alice * before", f"JOINED {t} bob",
                            f"MSG {t} alice * between", f"JOINED {t} carol",
                            f"MSG {t} alice * after"]
    assert bob.take() == ["READY bob", f"HISTORY {t} alice before", "USER alice lobby",
                          "USER bob lobby", "USERS 2", f"MSG {t} alice * between",
                          f"JOINED {t} carol", f"MSG {t} alice * after"]
    assert carol.take() == ["READY carol", f"HISTORY {t} alice before",
                            f"HISTORY {t} alice between", "USER alice lobby", "USER bob lobby",
                            "USER carol lobby", "USERS 3", f"MSG {t} alice * after"]


def test_paired_users_get_joined_at_once(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    pair(h, alice, bob)
    dave = h.connect()
    dave.send("NICK dave")
    assert alice.take() == [f"JOINED {ts(h)} dave"]


@pytest_twisted.inlineCallbacks
def test_a_tcp_connection_is_named_by_its_address_alone() -> Any:
    """Memory per idle connection (docs/fanout.md): Twisted's TCP transport
    would hold a log prefix and a repr of its own, about 80 bytes each; both
    are the protocol's address string, which names the connection as well."""
    from twisted.internet import reactor

    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.factory import ChatFactory

    factory = ChatFactory(ServerConfig(idle_timeout=0.0, nick_timeout=0.0), reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        for _ in range(500):  # bounded: at most 5 s of reactor turns
            if factory.connections:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        (proto,) = factory.connections
        name = f"127.0.0.1:{client.getsockname()[1]}"
        assert proto.address == name
        assert proto.transport.logstr is proto.address
        assert proto.transport.logPrefix() == name
        assert repr(proto.transport) == name
    finally:
        client.close()
        yield port.stopListening()
        for _ in range(500):  # bounded: the server sees the close on a later turn
            if not factory.connections:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert not factory.connections, "the connection is left open after the test"


def test_a_connection_holds_its_slots_and_no_dict() -> None:
    """Memory per idle connection (docs/fanout.md): ChatProtocol provides
    IProtocol itself so that it has __slots__; nothing grows a __dict__, nor
    the session's Handshake while there is one, and once online there is none
    (the commands are one Session per server: twisted_chat.server.session)."""
    from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
    from zope.interface.verify import verifyObject

    h = Harness(nick_timeout=30.0)
    choosing = h.connect().protocol  # its NICK deadline is the handshake's
    assert choosing.handshake is not None and not hasattr(choosing.handshake, "__dict__")
    alice = h.user("alice")
    protocol = alice.protocol
    assert not hasattr(protocol, "__dict__")
    assert protocol.handshake is None, "let go once online"
    assert verifyObject(IProtocol, protocol)
    assert IHalfCloseableProtocol.providedBy(protocol)
    assert protocol.transport is not None and protocol.connected == 1
    from twisted.internet.address import IPv4Address

    unmade = h.factory.buildProtocol(IPv4Address("TCP", "192.0.2.99", 40000))
    assert unmade is not None and unmade.connected == 0  # derived from transport
    # The idle timer's and flood control's stamps, apart for a TLS record's
    # sake, are one float over TCP: an idle connection holds no more.
    alice.send("PING x")
    assert protocol._flood_at is protocol._last_line


def test_the_registry_of_connections_is_small_at_the_idle_scale() -> None:
    """Memory per idle connection at the benchmark's idle scale (10,000
    clients): the factory's registry of its connections takes 30 bytes a
    connection there (a dict's table); a set's took 52."""
    from twisted.internet.address import IPv4Address

    h = Harness(max_clients=10_000, exempt=("127.0.0.0/8",))
    for port in range(10_000):
        protocol = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        h.factory.handshaking.discard(protocol.pool_key, protocol)  # as once online
    assert len(h.factory.connections) == 10_000
    assert sys.getsizeof(h.factory.connections) / 10_000 < 40


def test_a_connection_knows_its_server_only_through_its_context() -> None:
    """Issue 13: ChatProtocol and ChatFactory do not reach into each other.
    The connection's modules do not import the factory, even for typing,
    and the server's shared parts are one slotted ConnectionContext (one
    slot per connection, the factory's own object)."""
    import ast
    from pathlib import Path

    import twisted_chat.server

    server = Path(twisted_chat.server.__path__[0])
    for name in ("protocol.py", "limits/heldinput.py", "context.py"):
        tree = ast.parse((server / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "twisted_chat.server.factory" not in imported, name
    h = Harness()
    protocol = h.user("alice").protocol
    assert protocol.ctx is h.factory.context and not hasattr(protocol.ctx, "__dict__")


@defer.inlineCallbacks
def read_until(client: socket.socket, token: bytes) -> Any:
    """What a non-blocking C{client} reads until C{token} or the end, while
    the reactor turns (at most 5 s of turns)."""
    from twisted.internet import reactor

    got = b""
    for _ in range(500):  # bounded
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            yield deferLater(reactor, 0.01, lambda: None)
            continue
        got += chunk
        if token in got or not chunk:
            break
    return got


@pytest.fixture
def two_on_tcp() -> Iterator[Callable[..., Deferred[tuple[Any, list[socket.socket]]]]]:
    """A real ChatFactory on loopback, in this process; calling the fixture
    with config options registers alice and bob on it over TCP and gives
    the factory and their client sockets (non-blocking, receive buffers
    of 4 KB), all closed afterwards."""
    from twisted.internet import reactor

    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.factory import ChatFactory

    ports: list[Any] = []
    clients: list[socket.socket] = []

    @defer.inlineCallbacks
    def start(**options: Any) -> Any:
        factory = ChatFactory(ServerConfig(idle_timeout=0.0, nick_timeout=0.0, **options),
                              reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        for nick in ("alice", "bob"):
            client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            clients.append(client)
            yield read_until(client, b"\r\n")
            client.sendall(f"NICK {nick}\r\n".encode())
            yield read_until(client, b"USERS ")
        return factory, list(clients)

    yield start
    for client in clients:
        client.close()
    for port in ports:
        port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_closing_connection_gets_no_lobby_line_from_the_direct_pass(two_on_tcp: Any) -> Any:
    """Once the server hangs up on a connection whose user is still in the
    lobby (the hub hears of it later), a lobby line fanned out in the same
    turn does not reach its socket: the fan-out's direct pass, which keeps
    its list of sockets while the lobby stays the same, drops it."""
    factory, clients = yield two_on_tcp()
    factory.fanout.flush()
    bob = next(p for p in factory.connections if p.user and p.user.nick == "bob")
    factory.fanout.add(b"MSG 0 carol * before\r\n")
    factory.fanout.flush()
    bob.hang_up("test")
    assert bob.user.nick in factory.state.hub.lobby, "the hub has not heard yet"
    factory.fanout.add(b"MSG 0 carol * after\r\n")
    factory.fanout.flush()
    to_bob = yield read_until(clients[1], b"never")
    assert b"before" in to_bob and b"after" not in to_bob
    to_alice = yield read_until(clients[0], b"after")
    assert b"after" in to_alice


@defer.inlineCallbacks
def fan_out_until_cut(factory: Any, reader: socket.socket, member: Any) -> Any:
    """Lobby lines of 1 kB until C{member}, who reads none, is cut at
    --sendq; C{reader} reads them meanwhile."""
    import contextlib

    from twisted.internet import reactor

    for i in range(400):  # bounded
        factory.fanout.add(b"MSG 0 carol * " + b"x" * 1000 + b"\r\n")
        factory.fanout.flush()
        if member.closing:
            break
        if i % 20 == 0:
            with contextlib.suppress(BlockingIOError):
                while reader.recv(1 << 20):
                    pass
            yield deferLater(reactor, 0.01, lambda: None)
    assert member.closing, "cut at --sendq"


@defer.inlineCallbacks
def until_left(factory: Any, nick: str) -> Any:
    """Wait (bounded) until C{nick} has left: a cut's connectionLost comes
    on a later turn."""
    from twisted.internet import reactor

    for _ in range(100):
        if nick not in factory.state.hub.online:
            break
        yield deferLater(reactor, 0.01, lambda: None)
    assert nick not in factory.state.hub.online


@pytest_twisted.inlineCallbacks
def test_a_member_that_was_cut_and_left_is_not_kept_alive(two_on_tcp: Any) -> Any:
    """The lists the fan-out keeps between batches (the lobby state's tuple,
    the direct pass's sort) let go of a departed connection at once, not at
    the next lobby line: a slow reader cut at --sendq leaves with up to
    --sendq bytes in its transport's buffer.  (Outside twistd, Twisted's
    log buffer still holds the connection's log events: only lists and
    tuples are looked for.)"""
    import gc

    factory, clients = yield two_on_tcp(sendq=256 * 1024, sndbuf=4096, sendq_timeout=0.0)
    bob = next(p for p in factory.connections if p.user and p.user.nick == "bob")
    yield fan_out_until_cut(factory, clients[0], bob)
    yield until_left(factory, "bob")
    gc.collect()
    assert [r for r in gc.get_referrers(bob) if isinstance(r, (list, tuple))] == []


@pytest_twisted.inlineCallbacks
def test_a_member_cut_for_its_output_lets_go_of_its_buffer_without_a_collection(
        two_on_tcp: Any) -> Any:
    """A slow reader cut at --sendq leaves up to --sendq bytes in Twisted's
    buffer: before, its connection and its user (which refer to each other)
    kept them, and its transport, until a full cyclic collection, which an
    idle server may never run.  Now its connectionLost empties that buffer,
    with the collector off."""
    import gc

    from twisted_chat.tcpinfo import twisted_buffered

    factory, clients = yield two_on_tcp(sendq=256 * 1024, sndbuf=4096, sendq_timeout=0.0)
    bob = next(p for p in factory.connections if p.user and p.user.nick == "bob")
    transport = bob.transport
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield fan_out_until_cut(factory, clients[0], bob)
        assert twisted_buffered(transport) > 64 * 1024, "held in Twisted's buffer at the cut"
        yield until_left(factory, "bob")
        assert transport.disconnected
        assert twisted_buffered(transport) == 0 and transport._tempDataBuffer == []
        assert len(transport.dataBuffer) == 0
    finally:
        if enabled:
            gc.enable()


@pytest_twisted.inlineCallbacks
def test_a_close_still_sends_what_twisted_buffers_before_it(two_on_tcp: Any) -> Any:
    """The buffer is let go only once the connection is lost: a close
    (BYE) with most of 100 kB still in Twisted's buffer delivers it all
    first, then ends with a FIN."""
    from twisted_chat.tcpinfo import twisted_buffered

    factory, clients = yield two_on_tcp(sendq=1 << 20, sndbuf=4096, sendq_timeout=0.0)
    bob = next(p for p in factory.connections if p.user and p.user.nick == "bob")
    line = b"MSG 0 carol * " + b"x" * 1000 + b"\r\n"
    for _ in range(100):
        bob.write(line)
    assert twisted_buffered(bob.transport) > 40_000
    bob.close("test")
    got = yield read_until(clients[1], b"\0")  # never sent: reads to the end
    assert got.count(line) == 100 and got.endswith(b"BYE test\r\n")
    assert clients[1].recv(1) == b""  # the end was a FIN, not a reset


def test_closing_twice_says_bye_and_leaves_once(h: Harness) -> None:
    """close() is idempotent: a second call (two rules firing in one turn)
    sends no second BYE, and the others see the user leave once."""
    alice, bob = h.user("alice"), h.user("bob")
    alice.protocol.close("timeout", "idle")
    alice.protocol.close("flood")
    h.clock.advance(0)
    assert [line for line in alice.take() if line.startswith("BYE")] == ["BYE timeout idle"]
    left = [line for line in bob.take() if line.startswith("LEFT")]
    assert len(left) == 1 and left[0].endswith(" alice timeout"), left


# -- lines held behind a command decided elsewhere, then the connection lost ----


def _first_command_waits(h: Harness, monkeypatch: pytest.MonkeyPatch,
                         verb: str = "say") -> list[Deferred[None]]:
    """The first C{verb} of the state is decided later (as a cluster's
    command is, when Redis hands it back): fire the returned list's
    Deferred to decide it."""
    state: Any = h.factory.state
    real = getattr(state, verb)
    pending: list[Deferred[None]] = []

    def command(*args: Any) -> Any:
        if pending:
            return real(*args)
        decided: Deferred[None] = Deferred()
        decided.addCallback(lambda _: real(*args))
        pending.append(decided)
        return decided

    monkeypatch.setattr(state, verb, command)
    return pending


def _lines_then_lost(h: Harness, send: Callable[[Conn], None]) -> tuple[list[str], Conn]:
    """What a watcher sees of a user who sends lines and closes at once."""
    watcher = h.user("watcher")
    conn = h.user("script")
    send(conn)
    conn.drop()
    return watcher.take(), conn


@pytest.mark.parametrize("framing", ["bytes", "messages"])
def test_lines_held_behind_a_waiting_command_are_handled_after_the_connection_is_lost(
        monkeypatch: pytest.MonkeyPatch, framing: str) -> None:
    """A client that sends lines and closes at once (a script, a browser tab
    closed right after sending), its close coming as a full close (an RST,
    a WebSocket close frame): the lines held behind a command that waits
    (a cluster's Redis) are still handled, in order, with nothing written
    to the gone peer, and the user leaves as its BYE says, exactly as when
    the command is decided at once (one server)."""
    lines = ("MSG one", "MSG two", "DM watcher three", "USERS", "BYE done")

    def send(conn: Conn) -> None:
        if framing == "bytes":
            conn.send(*lines)
        else:
            for line in lines:
                conn.protocol.message_received(line.encode())

    one = Harness()
    expected, _ = _lines_then_lost(one, send)
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    before, conn = _lines_then_lost(h, send)
    assert before == []  # nothing decided yet, and the user has not left
    assert not conn.protocol.closing and "script" in h.hub.online
    assert conn.protocol in h.factory.connections
    conn.transport.clear()
    pending[0].callback(None)
    h.clock.advance(0)
    seen = h.conns[0].take()
    assert seen == expected
    assert [line.split(" ", 2)[0] for line in seen] == ["MSG", "MSG", "MSG", "LEFT"]
    assert seen[-1].endswith(" script quit done")
    assert conn.transport.value() == b""  # the peer is gone: nothing was written
    assert conn.protocol.closing and conn.protocol not in h.factory.connections
    assert "script" not in h.hub.online
    assert {k: n for k, n in h.factory.stats.disconnects.items() if n} == {"quit": 1}
    assert not h.clock.getDelayedCalls()


def test_lines_held_behind_a_waiting_command_without_bye_leave_as_disconnected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    before, conn = _lines_then_lost(h, lambda conn: conn.send("MSG one", "MSG two", "MSG thr"))
    assert before == []
    pending[0].callback(None)
    h.clock.advance(0)
    seen = h.conns[0].take()
    assert [line.split(" ", 3)[-1] for line in seen] == [
        "* one", "* two", "* thr", "disconnected"]
    assert conn.protocol not in h.factory.connections
    assert {k: n for k, n in h.factory.stats.disconnects.items() if n} == {"disconnected": 1}


def test_a_connection_lost_with_nothing_held_leaves_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command alone waits: the user leaves now (its leave goes after the
    command in the cluster's order), as before."""
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    before, conn = _lines_then_lost(h, lambda conn: conn.send("MSG one"))
    assert before == [f"LEFT {ts(h)} script disconnected"]
    assert conn.protocol.closing and conn.protocol not in h.factory.connections
    pending[0].callback(None)
    h.clock.advance(0)


def test_a_server_shutdown_ends_a_connection_whose_held_lines_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lost connection still counts until its lines are handled: a
    shutdown meanwhile ends it (nothing is left to write to)."""
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    _, conn = _lines_then_lost(h, lambda conn: conn.send("MSG one", "MSG two"))
    h.factory.shutdown()
    h.clock.advance(0)
    assert conn.protocol.closing and conn.protocol not in h.factory.connections
    assert h.factory.stats.disconnects["shutdown"] == 1
    assert conn.transport.value() == b""
    assert not pending[0].called
    h.clock.advance(h.config.close_grace)


def test_held_input_is_an_object_a_connection_has_only_while_a_command_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/fanout.md, "Memory per connection": a connection holds one slot
    for held input (hold), None until a command waits and again once it is
    decided and its held lines are handled; its own slots stay few."""

    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    alice, bob = h.user("alice"), h.user("bob")
    assert alice.protocol.hold is None
    assert sys.getsizeof(alice.protocol) <= 200
    alice.send("MSG first", "MSG second")
    hold = alice.protocol.hold
    assert hold is not None and hold.waiting and hold.buffer == b"MSG second\r\n"
    pending[0].callback(None)
    h.clock.advance(0)
    assert alice.protocol.hold is None
    assert bob.take() == [f"MSG {ts(h)} alice * first", f"MSG {ts(h)} alice * second"]


def test_input_held_behind_a_waiting_command_is_at_most_the_limit_and_one_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What docs/cluster.md says a connection holds while a command waits
    (on its own; all together are bounded too: test_cluster_outage.py):
    reading pauses once more than 64 KiB is held, so at most that and one
    read (Twisted reads up to 64 KiB at a time)."""
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    conn = h.user("script")
    conn.send("MSG first")
    read = b"MSG " + b"x" * 1000 + b"\r\n"
    chunk = read * (65536 // len(read))  # a read's worth of whole lines
    conn.transport.arrive(chunk)
    assert conn.reading
    conn.transport.arrive(chunk)
    assert not conn.reading
    conn.transport.arrive(chunk)  # stays in the socket
    hold = conn.protocol.hold
    assert hold is not None and len(hold.buffer) == 2 * len(chunk) <= 2 * 65536
    pending[0].callback(None)
    h.clock.advance(0)
    assert conn.reading


@pytest.fixture
def failures() -> Iterator[list[Any]]:
    """The failures logged meanwhile (log.failure's events), as Failures."""
    seen: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            seen.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("later", [False, True], ids=["at-once", "decided-later"])
def test_a_registration_that_fails_unexpectedly_is_logged_and_the_connection_goes_on(
        failures: list[Any], later: bool) -> None:
    """rev15-mut F5: an error of the state's register() that is no refusal
    (a bug, a store error of another kind) is logged with its traceback when
    it happens; decided later (cluster mode) it was lost without a word,
    the connection's wait for it taking the failure as its end.  The client
    is told too (left16s): its NICK got no answer at all, so it waited for
    READY or RETRY for ever; now one ERROR internal, and NICK again works."""
    h = Harness()
    real = h.factory.state.register
    pending: Deferred[Any] = Deferred()
    h.factory.state.register = (  # type: ignore[method-assign]
        lambda *args, **kwargs: pending if later else defer.fail(RuntimeError("store broke")))
    conn = h.connect()
    conn.take()
    conn.send("NICK alice")
    if later:
        assert failures == []
        pending.errback(RuntimeError("store broke"))
    [failure] = failures
    assert failure.check(RuntimeError) and str(failure.value) == "store broke"
    assert conn.take() == ["ERROR internal the server hit a fault handling that command "
                           "(it is logged)"]
    h.factory.state.register = real  # type: ignore[method-assign]
    conn.send("PING t1", "NICK alice")
    lines = conn.take()
    assert lines[0] == "PONG t1" and "READY alice" in lines, lines
