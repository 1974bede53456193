"""
Property tests: whatever bytes a connection sends, nothing raises and nobody
else is hurt; whatever several users do, the hub's invariants hold.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Harness
from twisted_chat.server.hub import Hub, State

# Byte soup biased towards the protocol: real verbs, nicks, separators and
# the characters the checks are about.
fragments = st.sampled_from([
    b"NICK ", b"MSG ", b"DM ", b"PAIR ", b"ACCEPT ", b"REJECT ", b"UNPAIR", b"USERS",
    b"PING ", b"PONG", b"HELP ", b"BYE ", b"alice", b"bob", b"mallory", b" ", b"\t",
    b"\r\n", b"\n", b"\r", b"\x00", b"\x1b[2J", b"\xff", b"\xc3", "é".encode(),
    "\u2028".encode(), b"x" * 70,
])
streams = st.lists(st.one_of(fragments, st.binary(max_size=20)), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=streams, flood=st.booleans())
def test_any_bytes_never_raise_or_hurt_others(chunks: list[bytes], flood: bool) -> None:
    h = Harness(max_line=64, flood_rate=5.0 if flood else 0.0, flood_burst=5)
    alice, bob = h.user("alice"), h.user("bob")
    bob.send("PAIR alice")
    mallory = h.connect()
    for chunk in chunks:
        mallory.send_raw(chunk)  # raises if the protocol raises
        h.clock.advance(0.05)
    for conn in (alice, bob):
        assert not conn.transport.disconnecting
        raw = conn.transport.value()
        assert raw == b"" or raw.endswith(b"\r\n")
        for line in raw.split(b"\r\n")[:-1]:
            text = line.decode("utf-8")  # every line the others get is valid UTF-8
            assert not any(ch in text for ch in "\x00\x1b\r\n\u2028")
    check_invariants(h.hub)


def check_invariants(hub: Hub) -> None:
    online = hub.online
    assert hub._sorted_keys == sorted(online)
    assert hub.lobby == {k: u for k, u in online.items() if u.state is State.LOBBY}
    assert hub.paired == {k: u for k, u in online.items() if u.state is State.PAIRED}
    for key, user in online.items():
        assert user.key == key
        if user.partner is None:
            assert user.state is State.LOBBY
        else:
            partner = user.partner
            assert user.state is State.PAIRED
            assert partner.partner is user, "pairs are symmetric"
            assert online.get(partner.key) is partner, "a partner is online"
            assert user.outgoing is None and not user.incoming, "paired and invited"
        invitation = user.outgoing
        if invitation is not None:
            assert invitation.inviter is user
            invitee = invitation.invitee
            assert online.get(invitee.key) is invitee, "an invitee is online"
            assert invitee.incoming is not None and invitee.incoming[user.key] is invitation
            assert invitation.timer is not None and invitation.timer.active()
        assert user.incoming is None or user.incoming, "no empty invitations dict is kept"
        for inviter_key, incoming in (user.incoming or {}).items():
            assert incoming.invitee is user
            assert online.get(inviter_key) is incoming.inviter, "an inviter is online"
            assert incoming.inviter.outgoing is incoming


NICKS = ["ann", "Ben", "cat", "dan"]
actions = st.lists(
    st.tuples(
        st.integers(0, len(NICKS) - 1),
        # Pairing verbs are listed twice: they make the interesting states.
        st.sampled_from(["nick", "msg", "dm", "pair", "pair", "accept", "accept", "reject",
                         "unpair", "unpair", "users", "bye", "drop", "wait"]),
        st.integers(0, len(NICKS) - 1),
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(steps=actions)
def test_hub_invariants_under_any_commands(steps: list[tuple[int, str, int]]) -> None:
    h = Harness(invite_timeout=10)
    conns: list = [None] * len(NICKS)
    departed: set[int] = set()
    for who, action, whom in steps:
        target = NICKS[whom].upper() if whom % 2 else NICKS[whom]
        conn = conns[who]
        if conn is None or conn.closed or conn.transport.disconnecting:
            if conn is not None and not conn.closed:
                conn.drop()
            conns[who] = conn = h.connect()
            conn.send(f"NICK {NICKS[who]}")
        if action == "nick":
            conn.send(f"NICK {target}")
        elif action == "msg":
            conn.send("MSG hi")
        elif action == "dm":
            conn.send(f"DM {target} psst")
        elif action in ("pair", "accept", "reject"):
            conn.send(f"{action.upper()} {target}")
        elif action == "unpair":
            conn.send("UNPAIR")
        elif action == "users":
            conn.send("USERS")
        elif action == "bye":
            conn.send("BYE")
            conn.drop()
            departed.add(who)
        elif action == "drop":
            conn.drop()
            departed.add(who)
        else:
            h.clock.advance(4)
        check_invariants(h.hub)
        for gone in departed:
            c = conns[gone]
            if c is not None and c.closed:
                user = c.protocol.user
                if user is not None:
                    assert h.hub.online.get(user.key) is not user, "a departed user left a trace"
    for conn in conns:
        if conn is not None:
            conn.drop()
    check_invariants(h.hub)
    assert h.hub.online == {} and not h.factory.connections
    assert h.clock.getDelayedCalls() == [], "no timer outlives its users"
