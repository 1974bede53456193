"""
A user shown a pair the rebuilt replica lacks ("deaf": in the replica's
lobby, hearing no lobby line until its node's hello), and what its own
commands show it meanwhile (docs/cluster.md, "What is guaranteed":
"After a loss, every replica agrees").
"""

from __future__ import annotations

import pytest

from tests.harness import Conn
from tests.test_cluster_outage import (
    _ann_and_bob_paired,
    _hearing_ann,
    _hellos,
    _lose_after,
    _lost_pair_then_bob_says,
    _said,
)
from tests.test_cluster_own import pair
from tests.test_cluster_unit import Cluster, check_index


def _deaf_ann() -> tuple[Cluster, Conn, Conn, Conn]:
    """ann (node0) and dave (node2) paired in events Redis lost (ann and
    bob, node1, free in what it kept); every replica rebuilt, node1's hello
    applied, and bob's lobby line missed by ann and dave (shown PAIRED)."""
    cluster, ann, bob, dave, _ = _ann_and_bob_paired("dave")
    ann.send("UNPAIR")
    cluster.pump()
    cluster.clear_all()
    _lost_pair_then_bob_says(cluster, len(cluster.log.entries), ann, bob, dave)
    return cluster, ann, bob, dave


def test_a_deaf_users_pair_is_busy_with_the_partner_it_was_shown() -> None:
    """ann, shown PAIRED dave, sends PAIR bob in the window: answered as a
    paired user, ERROR busy, and bob is not invited; at her node's hello
    she is told the pair ended, with bob's line she missed, once, and
    PAIRED again when dave's node lists her.  (She was invited bob's way:
    PENDING bob, and never told her pair with dave ended nor given the
    line.)"""
    cluster, ann, bob, _dave = _deaf_ann()
    ann.send("PAIR bob")
    cluster.pump()
    assert _said(ann) == ["ERROR busy you are paired with dave; UNPAIR first"]
    assert bob.take() == []
    _hellos(cluster, 0)
    said = _said(ann)
    assert said[:2] == ["UNPAIRED dave disconnected", "HISTORY bob lobby line"], said
    assert [line for line in said if "lobby line" in line] == ["HISTORY bob lobby line"]
    _hellos(cluster, 2)
    assert ann.take()[-1:] == ["PAIRED dave"]
    check_index(cluster)


def test_a_deaf_user_is_invited_once_told_its_pair_ended() -> None:
    """bob, free in the replica, invites ann (shown PAIRED dave): bob is
    told PENDING ann, ann nothing, as a paired user is invited by nobody;
    her ACCEPT and REJECT are ERROR no-invite, as a paired user's.  At her
    node's hello, told her pair ended, she is shown INVITE bob after the
    user list, and her ACCEPT pairs them.  (She was shown INVITE bob while
    shown paired, and her ACCEPT was ERROR busy.)"""
    cluster, ann, bob, dave = _deaf_ann()
    bob.send("PAIR ann")
    cluster.pump()
    assert ann.take() == [] and bob.take() == ["PENDING ann"]
    for verb in ("ACCEPT", "REJECT"):
        ann.send(f"{verb} Bob")
        cluster.pump()
        assert _said(ann) == ["ERROR no-invite you have no open invitation from bob"]
        assert bob.take() == []
    for node in cluster.nodes:
        assert node.hub.online["bob"].outgoing is not None
    _hellos(cluster, 0)
    said = _said(ann)
    assert said[:2] == ["UNPAIRED dave disconnected", "HISTORY bob lobby line"], said
    assert said[-2:] == ["USERS 3", "INVITE bob"], said
    assert bob.take() == []
    ann.send("ACCEPT bob")
    cluster.pump()
    assert ann.take() == ["PAIRED bob"] and bob.take() == ["PAIRED ann"]
    _hellos(cluster, 2)
    assert ann.take() == [] and dave.take()[:1] == ["UNPAIRED ann disconnected"]
    check_index(cluster)


def test_an_invitation_kept_from_a_deaf_user_ends_unseen_by_it() -> None:
    """bob's invitation to ann (deaf, not shown it) ends before her node's
    hello, withdrawn: bob is told DECLINED ann withdrawn, ann nothing, then
    or at her hello (no CANCELLED, no INVITE for it)."""
    cluster, ann, bob, _dave = _deaf_ann()
    bob.send("PAIR ann")
    cluster.pump()
    bob.send("UNPAIR")
    cluster.pump()
    assert bob.take() == ["PENDING ann", "DECLINED ann withdrawn"] and ann.take() == []
    _hellos(cluster, 0)
    said = _said(ann)
    assert said[0] == "UNPAIRED dave disconnected" and not [
        line for line in said if line.startswith(("INVITE", "CANCELLED"))], said


def test_an_invitation_shown_late_ends_busy_when_the_pair_comes_back() -> None:
    """ann, told at her node's hello that her pair ended, is shown bob's
    invitation (kept from her until then); dave's node's hello brings
    the pair back: PAIRED dave, and that invitation ends busy for both
    (CANCELLED to her, who was shown it; DECLINED to bob)."""
    cluster, ann, bob, dave = _deaf_ann()
    bob.send("PAIR ann")
    cluster.pump()
    bob.take()
    _hellos(cluster, 0)
    assert ann.take()[-1:] == ["INVITE bob"]
    _hellos(cluster, 2)
    assert ann.take() == ["PAIRED dave", "CANCELLED bob busy"]
    assert bob.take() == ["DECLINED ann busy"] and dave.take() == []
    check_index(cluster)


def test_a_pair_brought_back_ends_the_invitation_kept_from_it_unseen() -> None:
    """dave's node says hello (dave is told the pair ended), then ann's:
    the pair comes back, quietly for ann, who was shown it all along, and
    bob's invitation to her, never shown her, ends busy: bob is told
    DECLINED ann busy, ann nothing."""
    cluster, ann, bob, dave = _deaf_ann()
    bob.send("PAIR ann")
    cluster.pump()
    bob.take()
    _hellos(cluster, 2)
    assert dave.take()[:1] == ["UNPAIRED ann disconnected"]
    _hellos(cluster, 0)
    assert ann.take() == [] and dave.take()[-1:] == ["PAIRED ann"]
    assert bob.take() == ["DECLINED ann busy"]
    for node in cluster.nodes:
        assert node.hub.online["ann"].partner is node.hub.online["dave"]
    check_index(cluster)


def test_a_deaf_users_unpair_ends_the_pair_it_was_shown() -> None:
    """ann, shown PAIRED dave, sends UNPAIR in the window: UNPAIRED dave
    left, with bob's line she missed, then the user list, as when a paired
    user leaves its pair (not ERROR not-paired), and she hears the lobby
    from then on; her node's hello tells her nothing more, and dave's node's
    hello tells dave the pair ended, not bringing it back."""
    cluster, ann, bob, dave = _deaf_ann()
    ann.send("UNPAIR")
    cluster.pump()
    said = _said(ann)
    assert said[:2] == ["UNPAIRED dave left", "HISTORY bob lobby line"], said
    assert said[2:] == ["USER ann lobby", "USER bob lobby", "USER dave lobby", "USERS 3"], said
    bob.send("MSG heard")
    cluster.pump()
    assert _said(ann) == ["MSG bob * heard"] and dave.take() == []
    bob.take()
    _hellos(cluster, 0)
    assert ann.take() == []
    _hellos(cluster, 2)
    assert ann.take() == [] and dave.take()[:1] == ["UNPAIRED ann disconnected"]
    for node in cluster.nodes:
        assert node.hub.online["ann"].partner is None
    check_index(cluster)


def test_a_second_rebuild_before_the_hello_keeps_the_lines_missed_before_it() -> None:
    """Redis loses data again (eve's arrival) before node0's hello: every
    replica is rebuilt a second time; bob's line, said in the first window
    and kept, still reaches ann once, in the replay her node's hello tells
    her, with the line said after the second rebuild (her missing began
    anew there: bob's first line was lost to her)."""
    cluster, ann, bob, dave = _deaf_ann()
    kept = len(cluster.log.entries)
    cluster.nodes[1].connect().send("NICK eve")
    cluster.pump()
    cluster.clear_all()
    _lose_after(cluster, kept, cluster.nodes)
    _hellos(cluster, 1)
    bob.send("MSG after")
    cluster.pump()
    assert ann.take() == [] and dave.take() == []
    _hellos(cluster, 0)
    said = _said(ann)
    assert said[:3] == ["UNPAIRED dave disconnected", "HISTORY bob lobby line",
                        "HISTORY bob after"], said


def _told_at_a_second_rebuilds_hello(taken: str | None) -> tuple[Cluster, Conn, Conn, str]:
    """dave (node2) comes online and pairs with ann (node0) in events
    Redis loses; someone on node1 takes C{taken}, if given; Redis loses
    eve's arrival, a second rebuild, before node0's hello.  At that hello
    ann is told UNPAIRED dave disconnected with bob's line she missed.
    With dave's uid."""
    cluster = Cluster(3)
    n0, n1, n2 = cluster.nodes
    bob, ann = n1.user("bob"), n0.user("ann")
    kept = len(cluster.log.entries)
    dave = n2.user("dave")
    dave_uid, registered = cluster.log.entries[kept]
    assert registered.get("nick") == "dave", registered
    _lost_pair_then_bob_says(cluster, kept, ann, bob, dave)
    if taken is not None:
        n1.user(taken)
    kept = len(cluster.log.entries)
    n1.connect().send("NICK eve")
    cluster.pump()
    cluster.clear_all()
    _lose_after(cluster, kept, cluster.nodes)
    _hellos(cluster, 1, 0)
    said = _said(ann)
    assert said[:2] == ["UNPAIRED dave disconnected", "HISTORY bob lobby line"], said
    return cluster, ann, dave, dave_uid


def test_a_partner_absent_since_the_first_rebuild_is_still_told_ended() -> None:
    """dave (node2) came online and paired with ann (node0) in events Redis
    lost: his node's hello not applied, the replicas lack him; a second
    rebuild comes before node0's hello.  At that hello ann is still told
    UNPAIRED dave disconnected, with bob's line she missed (she was told
    nothing: the second rebuild had forgotten dave's nick), and PAIRED
    again once dave's node lists her."""
    cluster, ann, dave, _ = _told_at_a_second_rebuilds_hello(None)
    _hellos(cluster, 2)
    assert ann.take()[-1:] == ["PAIRED dave"] and dave.take() == []
    check_index(cluster)


def test_a_deaf_users_partner_leaving_ends_the_pair_it_was_shown_at_once() -> None:
    """dave (shown paired with ann, the replica lacking the pair) quits in
    the window: ann gets LEFT dave, then at once UNPAIRED dave disconnected
    with bob's line she missed and the user list, as when a partner leaves,
    and hears the lobby from then on; her node's hello tells her nothing
    more.  (She was told only at that hello, believing herself paired
    meanwhile.)"""
    cluster, ann, bob, dave = _deaf_ann()
    dave.send("BYE gone")
    cluster.pump()
    said = [line.split(" ", 2)[2] if line.startswith("LEFT") else line for line in _said(ann)]
    assert said == ["dave quit gone", "UNPAIRED dave disconnected", "HISTORY bob lobby line",
                    "USER ann lobby", "USER bob lobby", "USERS 2"], said
    bob.send("MSG heard")
    cluster.pump()
    assert _said(ann) == ["MSG bob * heard"]
    _hellos(cluster, 0, 2)
    assert ann.take() == []
    check_index(cluster)


def test_the_counts_in_the_window_are_of_what_each_user_was_shown() -> None:
    """chat_connections' lobby and paired (ClusterState.counts) count a
    user by what it was shown, as for one detached: ann, deaf, is paired
    on node0 (and so is dave on node2) until her node's hello tells her
    the pair ended; ann and bob, shown their pair's end, paired in the
    replica, are in the lobby.  (Both counted as the replica has them.)"""
    cluster, ann, _bob, _dave = _deaf_ann()
    n0, n1, n2 = cluster.nodes
    assert (n0.state.counts(), n1.state.counts(), n2.state.counts()) == ((1, 0), (1, 1), (1, 0))
    _hellos(cluster, 0)
    assert "UNPAIRED dave disconnected" in ann.take()
    assert n0.state.counts() == (1, 1)
    cluster, _ann, _bob, _carol = _hearing_ann()
    assert [node.state.counts() for node in cluster.nodes] == [(1, 1), (1, 1), (1, 1)]


def test_a_second_rebuild_keeps_both_of_two_equal_lines_missed_in_one_millisecond() -> None:
    """bob says the same line twice in one millisecond (one time, nick and
    text) in the first window, ann deaf; Redis keeps both, then loses eve's
    arrival before node0's hello.  Both lines reach ann at her hello.
    (Matching the first by time, nick and text and taking the last match
    started her missing at the second: the first was lost to her.)"""
    cluster, ann, bob, dave, _ = _ann_and_bob_paired("dave")
    ann.send("UNPAIR")
    cluster.pump()
    cluster.clear_all()
    kept = len(cluster.log.entries)
    pair(cluster, ann, dave)
    cluster.clear_all()
    _lose_after(cluster, kept, cluster.nodes)
    _hellos(cluster, 1)
    bob.send("MSG same")
    bob.send("MSG same")
    cluster.pump()
    assert ann.take() == [] and _said(bob) == ["MSG bob * same", "MSG bob * same"]
    ms = {eid.split("-")[0] for eid, event in cluster.log.entries if event.get("t") == "say"}
    assert len(ms) == 1, ms
    kept = len(cluster.log.entries)
    cluster.nodes[1].connect().send("NICK eve")
    cluster.pump()
    cluster.clear_all()
    _lose_after(cluster, kept, cluster.nodes)
    _hellos(cluster, 1, 0)
    said = _said(ann)
    assert said[:3] == ["UNPAIRED dave disconnected", "HISTORY bob same", "HISTORY bob same"], said
    assert [line for line in said if "same" in line] == ["HISTORY bob same"] * 2



def test_an_invitation_kept_from_a_deaf_user_is_counted_when_its_inviter_goes() -> None:
    """bob invites ann (deaf: not shown it) and quits: ann is told nothing
    of it, and its end is counted once in the cluster,
    chat_invitations_ended_total{reason="gone"} on ann's node, as for an
    invitation she was shown.  (Kept from her, it went uncounted.)"""
    cluster, ann, bob, _dave = _deaf_ann()
    bob.send("PAIR ann")
    cluster.pump()
    bob.send("BYE")
    bob.drop()
    cluster.pump()
    assert not [line for line in ann.take() if line.startswith(("INVITE", "CANCELLED"))]
    ended = [node.factory.stats.invitations_ended.get("gone", 0) for node in cluster.nodes]
    assert ended == [1, 0, 0], ended



def _ann_inviting_bob_then_paired(bob_lagging: bool) -> tuple[Cluster, Conn, Conn, Conn]:
    """ann (node0) invites bob (node1; kept), then pairs with dave (node2;
    lost), which ends that invitation busy: ann is told DECLINED bob busy,
    bob CANCELLED ann busy (C{bob_lagging}: node1 never applied the
    pairing, bob was told nothing).  Every replica is rebuilt, with the
    invitation open again, and node1's hello applied: ann is deaf."""
    cluster, ann, bob, dave, _ = _ann_and_bob_paired("dave")
    ann.send("UNPAIR")
    cluster.pump()
    ann.send("PAIR bob")
    cluster.pump()
    cluster.clear_all()
    kept = len(cluster.log.entries)
    dave.send("PAIR ann")
    cluster.pump()
    ann.send("ACCEPT dave")
    if bob_lagging:
        cluster.nodes[1].cursor = len(cluster.log.entries)  # skips the ACCEPT
    cluster.pump()
    assert "DECLINED bob busy" in ann.take()
    assert bob.take() == ([] if bob_lagging else ["CANCELLED ann busy"])
    cluster.clear_all()
    _lose_after(cluster, kept, cluster.nodes)
    _hellos(cluster, 1)
    assert ann.take() == [] and bob.take() == []
    for node in cluster.nodes:
        assert node.hub.online["ann"].outgoing is not None
    return cluster, ann, bob, dave


def test_a_deaf_users_unpair_ends_no_invitation_a_second_time() -> None:
    """ann invites bob (kept), then pairs with dave (lost), which ends that
    invitation busy: ann told DECLINED bob busy, bob CANCELLED ann busy.
    The rebuilt replica has it open again.  ann, deaf, sends UNPAIR: she is
    told her pair ended, and neither side is told that invitation ended
    again (one end per invitation); it is gone from every replica, and she
    may invite bob anew.  (She got DECLINED bob withdrawn, bob CANCELLED ann
    withdrawn.)"""
    cluster, ann, bob, dave = _ann_inviting_bob_then_paired(False)
    ann.send("UNPAIR")
    cluster.pump()
    said = _said(ann)
    assert said[0] == "UNPAIRED dave left" and not [
        line for line in said if line.startswith(("DECLINED", "ERROR"))], said
    assert bob.take() == []
    for node in cluster.nodes:
        assert node.hub.online["ann"].outgoing is None
    ann.send("PAIR bob")
    cluster.pump()
    assert ann.take() == ["PENDING bob"] and bob.take() == ["INVITE ann"]
    _hellos(cluster, 0, 2)
    assert dave.take()[:1] == ["UNPAIRED ann disconnected"]
    assert ann.take() == [] and bob.take() == []
    check_index(cluster)


def test_a_deaf_users_unpair_tells_an_invitee_never_shown_the_end_withdrawn() -> None:
    """As above, but node1 never applied the pairing: bob still sees ann's
    invitation open.  At ann's UNPAIR he is told CANCELLED ann withdrawn,
    its one end; ann, shown it end already, nothing of it."""
    cluster, ann, bob, _dave = _ann_inviting_bob_then_paired(True)
    ann.send("UNPAIR")
    cluster.pump()
    said = _said(ann)
    assert said[0] == "UNPAIRED dave left" and not [
        line for line in said if line.startswith("DECLINED")], said
    assert bob.take() == ["CANCELLED ann withdrawn"]
    for node in cluster.nodes:
        assert node.hub.online["ann"].outgoing is None


@pytest.mark.parametrize("nick", ["dave", "DAVE"])
def test_a_partner_absent_since_the_first_rebuild_is_told_ended_with_its_nick_taken(
        nick: str) -> None:
    """As above, but someone on node1 took dave's nick (in either case:
    nicks compare without regard to case) before the second rebuild: ann
    is still told UNPAIRED dave disconnected at her node's hello, and
    nothing more when dave's node, its nick someone else's, says hello.
    (The second rebuild dropped dave's nick if taken, in the case it was
    taken in: ann was told nothing, left believing herself paired; kept,
    the nick named its new holder's uid too, the first found.)"""
    cluster, ann, dave, dave_uid = _told_at_a_second_rebuilds_hello(nick)
    afterloss = cluster.nodes[0].state.replica.afterloss
    assert not afterloss.deaf
    # Her pair's end is recorded against dave, not the nick's new holder.
    assert afterloss.uid_before("dave") == dave_uid
    _hellos(cluster, 2)
    assert ann.take() == [] and dave.take()[:1] == [
        "BYE shutdown the chat's store lost data and dave is someone else's now; "
        "connect again with another nick"]
