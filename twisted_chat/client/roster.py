"""
Whom the client knows of: the people online (for Tab) and the user list
being gathered.  Both are bounded, whatever a server sends (docs/client.md,
"Safe to read").
"""

from __future__ import annotations

from twisted_chat.client.render import UserRow
from twisted_chat.wire import is_valid_nick, nick_key


class Roster:
    """The people the server's lines told of."""

    # What a server's lines can make the client keep: people in the user list
    # being gathered (USER lines until USERS) and known for Tab (five times
    # the server's default --max-clients), each other field of a USER line.
    USERS_MAX = 50_000
    FIELD_MAX = 100

    def __init__(self) -> None:
        self._rows: list[UserRow] = []  # USER lines until USERS
        self._left_out = 0  # USER lines over USERS_MAX, or with no nick
        self._online: dict[str, str] = {}  # nick_key -> nick, for Tab

    def user(self, nick: str, state: str, address: str) -> None:
        """
        A C{USER} line: one more row of the list being gathered.  Only for a
        nick, as in the web page: no server lets another name in, so such a
        row is a hostile server's text dressed as a person, whom no command
        can address.  It is counted among those not shown.
        """
        if len(self._rows) >= self.USERS_MAX or not is_valid_nick(nick):
            self._left_out += 1
            return
        state, address = (field[: self.FIELD_MAX] for field in (state, address))
        self._rows.append(UserRow(nick, state, address or None))

    def users(self) -> tuple[list[UserRow], int]:
        """
        C{USERS}: the list gathered is complete, and is who is online now.
        Its rows, and how many more were left out.
        """
        rows, self._rows = self._rows, []
        left_out, self._left_out = self._left_out, 0
        self._online = {}
        for row in rows:
            self.joined(row.nick)
        return rows, left_out

    def joined(self, nick: str) -> None:
        """Offer C{nick} for Tab (a valid one, while fewer than USERS_MAX are known)."""
        key = nick_key(nick)
        if is_valid_nick(nick) and (key in self._online or len(self._online) < self.USERS_MAX):
            self._online[key] = nick

    def left(self, nick: str) -> None:
        self._online.pop(nick_key(nick), None)

    def online_nicks(self, me: str | None) -> list[str]:
        """The people online other than C{me}."""
        mine = nick_key(me) if me else None
        return [nick for key, nick in self._online.items() if key != mine]
