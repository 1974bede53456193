"""
C{LineListener}: the hub's L{twisted_chat.server.hub.Listener}: every hub
decision becomes lines here, and the lines every newcomer and pair's end
are sent (the user list, the history, the missed lines) are encoded once.
Lobby lines go through the L{LobbyFanout} (docs/fanout.md, "Module layout").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from twisted_chat import wire
from twisted_chat.server.batches import in_lobby_batch
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.history import Entry, History, newest_within
from twisted_chat.server.hub import Hub, Invitation, State, User
from twisted_chat.server.metrics.counters import Stats
from twisted_chat.server.output.fanout import LobbyFanout
from twisted_chat.server.output.sendqueue import DirectPass

__all__ = ["Audience", "LineListener", "history_lines"]


class Audience(Protocol):
    """What the lines read of the chat's state (a L{state.ChatState} is
    one): whose connections this process holds, and the hub."""

    @property
    def hub(self) -> Hub: ...

    def holds(self, user: User) -> bool: ...

    def paired_users(self) -> list[User]: ...

    def hears_lobby(self, user: User) -> bool: ...

    def misses_lobby(self, user: User) -> bool: ...

    def pair_shown(self, user: User, before: User | None) -> None: ...

    def forget_members(self) -> None: ...


#: USER lines joined at a time (L{LineListener.roster})
_PART = 512


class LineListener:
    """
    Turns the hub's decisions into lines (docs/fanout.md).  The state is
    read through C{state} at each event, never at construction: the state's
    hub is made with this listener, so the listener comes first.
    """

    def __init__(self, state: Callable[[], Audience], fanout: LobbyFanout, history: History,
                 stats: Stats, config: ServerConfig, direct_pass: DirectPass | None,
                 paired_fanout: LobbyFanout) -> None:
        """@param direct_pass: the fan-out's (L{forget_members} lets go of
        its members).
        @param paired_fanout: gathers the C{JOINED} and C{LEFT} lines for
        this process's users in a pair, as C{fanout} does the lobby's."""
        self._state = state
        self.fanout = fanout
        self.paired_fanout = paired_fanout
        self.history = history
        self.stats = stats
        self.config = config
        self._direct_pass = direct_pass
        self._roster = b""
        self._roster_at = -1  # the hub's lobby_changes when _roster was built
        self._user_lines: dict[str, bytes] = {}  # by nick key, each encoded once
        self._history_block: bytes | None = None
        # The last pair's end: the hub's list of missed entries, and its lines.
        self._missed: tuple[Sequence[Entry], bytes] | None = None
        # What ready() made for a newcomer, written once its joined() is done.
        self._welcome: tuple[User, list[bytes]] | None = None

    # -- what newcomers and pairs' ends are sent ---------------------------------

    def roster(self) -> bytes:
        """The C{USER} lines and the closing C{USERS}, encoded once per
        change: built again once the hub's C{lobby_changes} moved, or a
        line it is made of changed (L{_user_changed})."""
        hub = self._state().hub
        if self._roster_at != hub.lobby_changes:
            lines = self._user_lines
            keys = hub.keys_in_order
            parts = [lines[key] for key in keys]
            parts.append(wire.line("USERS", str(len(keys))))
            # Joined a part at a time: a join takes 80 bytes per item while it
            # runs, 800 KB for 10,000 lines of 20, four times the list
            # itself; each newcomer's list is built again, and what such
            # blocks leave free stays resident after a burst of handshakes.
            self._roster = b"".join([b"".join(parts[i:i + _PART])
                                     for i in range(0, len(parts), _PART)])
            self._roster_at = hub.lobby_changes
        return self._roster

    def _user_changed(self, user: User) -> None:
        """Encode C{user}'s USER line for its current state; a list made
        of its old line is built again."""
        words = [user.nick, user.state.value]
        if self.config.show_addresses:
            words.append(user.address)
        line = wire.line("USER", *words)
        if self._user_lines.get(user.key) != line:
            # Unchanged, the list stays the same object (both sides of a
            # pair that ends are sent one list: see unpaired).
            self._user_lines[user.key] = line
            self._roster_at = -1

    def history_block(self) -> bytes:
        """The C{HISTORY} lines a newcomer gets, encoded once per message."""
        if self._history_block is None:
            # The newest that fit in --history-bytes: a newcomer's eight
            # bytes of NICK must not buy it the whole history of long lines.
            self._history_block = history_lines(self.history.recent(),
                                                self.config.history_bytes)
        return self._history_block

    def history_replaced(self) -> None:
        """The history's entries were replaced (a cluster node that loads
        them again, docs/cluster.md): the newcomers' block is built anew."""
        self._history_block = None

    def state_replaced(self) -> None:
        """The hub and the history changed without telling this listener
        (a cluster node's replica rebuilt after Redis lost data): the user
        list and the newcomers' block are built anew."""
        self.history_replaced()
        self._user_lines = {}
        for user in self._state().hub.online.values():
            self._user_changed(user)

    def forget_members(self) -> None:
        """The lobby's lists kept between batches (the state's, the direct
        pass's) let go of their connections now, not at the next lobby
        line: one of them is gone (its transport may still buffer up to
        --sendq bytes).  At a departure; and at a cluster node's
        displacement (cluster.service.FactoryHooks.displaced)."""
        self._state().forget_members()
        if self._direct_pass is not None:
            self._direct_pass.forget()

    # -- the hub's Listener ------------------------------------------------------

    def deliver_gathered(self) -> None:
        self.fanout.flush()
        self.paired_fanout.flush()

    def batch_of(self, user: User) -> LobbyFanout:
        """The batch whose lines C{user} gets (docs/fanout.md, "Order"),
        by the one rule the state's lists of members follow too
        (L{batches.in_lobby_batch}).  Its own writes follow this batch's
        order rule, and at its going it gets this batch's share
        (L{leaving}; a connection's FIN or C{BYE})."""
        if in_lobby_batch(self._state(), user, user.state):  # (asked at each write: inline)
            return self.fanout
        return self.paired_fanout

    def _pair_batch(self, user: User) -> LobbyFanout:
        """The batch of C{user} while paired: the lobby's if it hears the
        lobby (a cluster node's user shown its pair's end in events Redis
        then lost: L{Audience.hears_lobby}), else the paired users'.
        L{batch_of} for the state it had, kept apart: as a parameter of
        L{batch_of}, every write would pay for it (a default and a test)."""
        if in_lobby_batch(self._state(), user, State.PAIRED):
            return self.fanout
        return self.paired_fanout

    def leaving(self, user: User) -> None:
        """Only the leaver gets the gathered lines now, its share of its
        batch (L{batch_of}): a flush to everyone here made a burst of n
        departures n writes to each member.  A connection already closing
        (dropped, cut) gets nothing: it writes no more."""
        if self._state().holds(user) and not user.conn.closing:
            self.batch_of(user).leaving(user.conn)

    def returning(self, user: User) -> None:
        """The user gets its share of the batch it was in while paired
        (L{_pair_batch}: the JOINED and LEFT lines gathered meanwhile, or,
        hearing the lobby after a loss, the lobby's lines), and of the
        lobby's gathered lines none otherwise (its replay has the
        messages): it gets those added from now on; the others keep their
        batches.  A connection already closing gets none, as in L{leaving},
        and no cut: a batch leaves it out (L{LobbyFanout.flush}), and a cut
        would send the whole batch down the path where each member gets
        its own part."""
        if self._state().holds(user) and not user.conn.closing:
            self._pair_batch(user).leaving(user.conn)
            self.fanout.returning(user.conn)

    def lobby_message(self, entry: Entry, sender: User) -> None:
        self._history_block = None
        if self._state().holds(sender):
            # One of this process's users said it (a counter, not a call).
            self.stats.lobby_messages += 1
        self.fanout.add(wire.msg_line(entry.ts, entry.nick, "*", entry.text))

    def ready(self, user: User) -> None:
        """Made now, written at the end of L{joined}: a registration that
        fails there (the hub undoes it) must not have told the newcomer
        it is online."""
        self._user_changed(user)
        # In parts, not one block per newcomer: the history and the list
        # are the objects every newcomer (and USERS) is sent, so a peer
        # that does not read holds references to them, not a copy.
        parts = [part for part in (wire.line("READY", user.nick), self.history_block(),
                                   self.roster()) if part]
        self._welcome = (user, parts)

    def joined(self, ts: float, user: User) -> None:
        """JOINED rides with the lobby's lines of this turn (the newcomer's
        share starts after it); paired users get it in their own batch.  The user
        list gets the newcomer's line here if L{ready} did not (a cluster
        node is not told C{ready} for another node's newcomer).  Then the
        newcomer gets what L{ready} made, unless something here raised."""
        welcome, self._welcome = self._welcome, None
        if user.key not in self._user_lines:
            self._user_changed(user)
        data = wire.line("JOINED", wire.format_ts(ts), user.nick)
        state = self._state()
        if state.holds(user):
            self.fanout.add_joined(data, user.conn)
        else:
            # Another node's newcomer gets nothing from this one: there is
            # no share to cut, and the batch keeps the fan-out's fast path.
            self.fanout.add(data)
        self.paired_fanout.add(data)
        if welcome is not None and welcome[0] is user:
            # Straight to the newcomer: a flush here would send it lines
            # that are in its history; add_joined marked where its share
            # begins.
            parts = welcome[1]
            for part in parts:
                self.stats.wrote(part)
            user.conn.deliver_parts(parts)

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        """LEFT rides with the lobby's lines of this turn, as JOINED does;
        paired users, who are not in the lobby's batch, get it in their own
        (members from the state's index of them): each written at once made
        n departures with n pairs open about n x n writes (rev21-clu F2)."""
        self._user_lines.pop(user.key, None)
        self.forget_members()
        data = wire.line("LEFT", wire.format_ts(ts), user.nick, reason, text=text)
        self.fanout.add(data)
        self.paired_fanout.add(data)

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        data = wire.msg_line(ts, sender.nick, recipient.nick, text)
        if self._state().holds(sender):
            self.stats.count_private_message("pair" if sender.partner is recipient else "dm")
        recipient.conn.write_private(data)  # left out of its --sendq cut while held
        sender.conn.write(data)

    def invited(self, invitation: Invitation) -> None:
        inviter, invitee = invitation.inviter, invitation.invitee
        if self._state().holds(inviter):
            self.stats.count_invitation()
        inviter.conn.write(wire.line("PENDING", invitee.nick))
        invitee.conn.write_private(wire.line("INVITE", inviter.nick))

    def paired(self, user: User, partner: User) -> None:
        self._user_changed(user)
        state = self._state()
        if state.holds(user):
            self.stats.count_paired_side()  # one side of the pair (chat_pairings_total)
            state.pair_shown(user, None)
        user.conn.write(wire.line("PAIRED", partner.nick))

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        self._user_changed(user)
        state = self._state()
        if state.hub.is_online(partner):
            self._user_changed(partner)
        if not state.holds(user) or state.hears_lobby(user):
            # Its own node tells it; the missed lines and the user list are
            # not built here for a connection that writes nowhere.  One that
            # hears the lobby was shown this pair's end (in events Redis
            # then lost) and heard the lobby since: told again, it got
            # UNPAIRED twice and lines it heard live in the replay.
            return
        # In parts, as in ready(): the two sides of a pair are sent the same
        # replay and list objects.
        user.conn.write_parts([part for part in (
            wire.line("UNPAIRED", partner.nick, reason), self._missed_block(missed), self.roster(),
        ) if part])
        state.pair_shown(user, partner)

    def _missed_block(self, missed: Sequence[Entry]) -> bytes:
        """The HISTORY lines of C{missed}, made once for both sides of a pair
        (the hub passes both the same list), and for the next pair that
        missed the same lines (pairs that began and ended between the same
        two lobby lines)."""
        last = self._missed
        if last is None or (last[0] is not missed and last[0] != missed):
            last = self._missed = (missed, history_lines(missed, self.config.history_bytes))
        return last[1]

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        if self._state().holds(inviter):
            self._invitation_ended(reason)
        inviter.conn.write(wire.line("DECLINED", invitee.nick, reason))

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        state = self._state()
        if state.holds(invitee) and not state.hub.is_online(inviter):
            # The inviter is gone (it is not told DECLINED): counted here.
            self._invitation_ended(reason)
        invitee.conn.write(wire.line("CANCELLED", inviter.nick, reason))

    def _invitation_ended(self, reason: str) -> None:
        """An invitation ended without a pair: counted once, on the
        inviter's node (or the invitee's, once the inviter is gone)."""
        self.stats.count_invitation_ended(reason)


def history_lines(entries: Sequence[Entry], limit: int) -> bytes:
    """
    C{HISTORY} lines, oldest first: for a newcomer, or one back from a pair;
    the newest whole lines that fit in C{limit} bytes (C{--history-bytes}).
    """
    return newest_within(
        [wire.line("HISTORY", wire.format_ts(e.ts), e.nick, text=e.text) for e in entries],
        limit,
    )
