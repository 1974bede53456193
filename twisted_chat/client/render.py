"""
Turn chat/1 events into lines a person reads.

A rendered line is a tuple of L{Span}s, each a piece of text with a L{Style}.
L{plain} joins them into text for pipes and C{TERM=dumb}; L{ansi} adds SGR
codes (under C{NO_COLOR}, only those that are not colours).  Both clean every span with
L{twisted_chat.client.sanitize.clean}, so this is the one place through which
text reaches the screen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from twisted_chat.client.commands import Local
from twisted_chat.client.sanitize import cell_width, clean, text_width
from twisted_chat.wire import (
    NICK_MAX,
    NOT_SENT,
    PAIR_CHANGED,
    PRIVATE_MESSAGES,
    list_cost_verb,
    nick_key,
    parse_ts,
)


class Style(Enum):
    PLAIN = ""
    TIME = "2"  # dim
    NICK = "1;36"  # bold cyan: other people
    SELF = "1;32"  # bold green: you
    PRIVATE = "1;35"  # bold magenta: the "(private)" mark
    NOTICE = "33"  # yellow: joins, leaves, pairing
    ERROR = "1;31"  # bold red
    PROMPT = "1"  # bold
    MENTION = "1;7"  # bold, reverse video: a lobby line that names you
    # Uncoloured: the first column of a two-column row (/help), which L{wrap}
    # keeps the second column clear of.
    COLUMN = "column"


@dataclass(frozen=True, slots=True)
class Span:
    text: str
    style: Style = Style.PLAIN


Line = tuple[Span, ...]


def plain(line: Line) -> str:
    """The line as text without colour, safe for any terminal."""
    return "".join(clean(span.text) for span in line)


def _no_colour(sgr: str) -> str:
    """The SGR parameters that are not colours: bold, dim, reverse video."""
    return ";".join(p for p in sgr.split(";") if not 30 <= int(p) <= 49)


# Each style's SGR parameters under NO_COLOR, worked out once ("": none).
UNCOLOURED = {
    style: _no_colour(style.value)
    for style in Style
    if style not in (Style.PLAIN, Style.COLUMN)
}


def ansi(line: Line, *, colour: bool = True) -> str:
    """
    The line with SGR codes around styled spans.

    @param colour: C{False} (C{NO_COLOR}) keeps bold, dim and reverse video
        (the mention mark) and drops only the colours.
    """
    parts: list[str] = []
    for span in line:
        text = clean(span.text)
        if span.style in (Style.PLAIN, Style.COLUMN) or not text:
            parts.append(text)
            continue
        sgr = span.style.value if colour else UNCOLOURED[span.style]
        parts.append(f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text)
    return "".join(parts)


# A two-column row (L{columns}) that does not fit: its second column wraps
# under itself while it has at least COLUMN_MIN columns, else it goes on rows
# of its own below the first, indented by COLUMN_BELOW.  On a screen
# narrower than COLUMNS_NARROW every row is laid out that way (one column).
COLUMN_MIN = 30
COLUMN_BELOW = 6
COLUMNS_NARROW = 60
_TWO_COLUMNS = re.compile(r"(  \S.*?[ ]{2,})(\S.*)")


def columns(text: str) -> Line:
    """
    A row of a two-column listing (C{/help}: "  /pair NICK   invite ..."),
    whose second column starts after two spaces or more: L{wrap} keeps what
    does not fit under that column, or, on a narrow screen, below.  Any other
    text is L{info}.
    """
    match = _TWO_COLUMNS.fullmatch(text)
    if match is None:
        return info(text)
    return (Span(match.group(1), Style.COLUMN), Span(match.group(2)))


def wrap(line: Line, width: int, indent: int = 2) -> list[Line]:
    """
    Break a (cleaned) line into rows of at most C{width} columns, at spaces
    where possible; rows after the first are indented by C{indent} spaces.
    A word longer than a row is cut, never between a character and the
    combining marks that follow it.  A two-column row (L{columns}) that does
    not fit wraps its second column under itself, or below the first.
    """
    if line and line[0].style is Style.COLUMN:
        first, rest = line[0], line[1:]
        column = text_width(clean(first.text))
        if width + 1 >= COLUMNS_NARROW:  # (the last column is never written)
            if column + sum(text_width(clean(span.text)) for span in rest) <= width:
                return [line]
            if width - column >= COLUMN_MIN:
                return _wrap(line, width, column)
        head = (Span(first.text.rstrip(" "), Style.PLAIN),)
        under = min(COLUMN_BELOW, max(width - 8, indent))  # (a row holds 8 more)
        return _wrap(head, width, indent) + _wrap((Span(" " * under), *rest), width, under)
    return _wrap(line, width, indent)


def _wrap(line: Line, width: int, indent: int) -> list[Line]:
    width = max(width, indent + 8)
    pad: Cluster = ((" ", Style.PLAIN),)
    rows: list[list[Cluster]] = []
    current: list[Cluster] = []
    used = 0
    start = 0  # where the row's own text starts (after the indent)
    for cluster in _clusters(line):
        w = sum(cell_width(ch) for ch, _ in cluster)
        if used + w <= width:
            current.append(cluster)
            used += w
            continue
        if _is_space(cluster):  # break at this very space, which goes
            rows.append(current)
            current, used, start = [pad] * indent, indent, indent
            continue
        spaces = [i for i in range(start + 1, len(current)) if _is_space(current[i])]
        word = current[spaces[-1] + 1 :] if spaces else []
        word_width = sum(cell_width(ch) for c in word for ch, _ in c)
        if spaces and indent + word_width + w <= width:
            rows.append(current[: spaces[-1]])  # the word moves down
        else:
            rows.append(current)  # too long for any row: cut it here
            word, word_width = [], 0
        current, used, start = [pad] * indent + word, indent + word_width, indent
        current.append(cluster)
        used += w
    rows.append(current)
    return [_spans([cell for c in row for cell in c]) for row in rows]


Cluster = tuple[tuple[str, Style], ...]


def _clusters(line: Line) -> list[Cluster]:
    """The cleaned line's characters, each with the zero-width ones after it."""
    clusters: list[Cluster] = []
    for span in line:
        for ch in clean(span.text):
            if clusters and cell_width(ch) == 0:
                clusters[-1] += ((ch, span.style),)
            else:
                clusters.append(((ch, span.style),))
    return clusters


def _is_space(cluster: Cluster) -> bool:
    return len(cluster) == 1 and cluster[0][0] == " "


def _spans(cells: list[tuple[str, Style]]) -> Line:
    spans: list[Span] = []
    for ch, style in cells:
        if spans and spans[-1].style is style:
            spans[-1] = Span(spans[-1].text + ch, style)
        else:
            spans.append(Span(ch, style))
    return tuple(spans)


def cut(text: str, width: int) -> str:
    """
    C{text} cleaned, in at most C{width} columns: a longer one is cut and ends
    with C{…}.  Only the start of C{text} is looked at, so that a hostile
    server's megabyte-long nick costs no more than a short one.
    """
    look = 4 * width + 4  # a character is at least a column, or a mark (at most 4)
    shown = clean(text[:look])
    if len(text) <= look and text_width(shown) <= width:
        return shown
    kept: list[str] = []
    used = 1  # the "…"
    for ch in shown:
        w = cell_width(ch)
        if used + w > width:
            break
        kept.append(ch)
        used += w
    return "".join(kept) + "…"


def notice(text: str) -> Line:
    """A line about the session: C{* text}."""
    return (Span("* " + text, Style.NOTICE),)


def error(text: str) -> Line:
    """A line about something that went wrong: C{! text}."""
    return (Span("! " + text, Style.ERROR),)


def info(text: str) -> Line:
    """Uncoloured information (help, tables)."""
    return (Span(text),)


def local(action: Local) -> list[Line]:
    """What a local command (C{/help}, a usage error...) shows: one line
    for an error or a notice, a table's rows (L{columns}) otherwise."""
    if action.is_error:
        return [error(action.text)]
    if action.is_notice:
        return [notice(action.text)]
    return [columns(text) for text in action.text.splitlines()]


# -- the words for each kind of event --------------------------------------

LEFT_REASONS = {
    "quit": "quit",
    "disconnected": "connection lost",
    "timeout": "timeout",
    "flood": "sent too fast",
    "sendq": "too slow to keep up",
}

ERRORS = {
    "unknown-command": "The server did not understand that command.",
    "bad-args": "The server could not use that command: {text}.",
    "not-ready": "Choose a nickname first.",
    "already-ready": "You already have a nickname.",
    # Answers DM, PAIR, ACCEPT, REJECT: the server's text names the nick.
    "no-such-nick": "Not sent: {text}.",
    "self": "You cannot do that to yourself.",
    # busy and pending answer PAIR or ACCEPT, for more reasons than one (the
    # server's invitation limits among them): the server's text says which.
    # A busy that answers a private message is said by not_keeping_up.
    "busy": "The invitation was not sent: {text}.",
    "pending": "The invitation was not sent: {text}.",
    "no-invite": "There is no open invitation from that person.",
    "not-paired": "You are not in a private conversation and have no invitation out.",
    # A message's own too-long is said by too_long (its bytes and room).
    "too-long": "That line was too long for the server and was not sent.",
    "bad-encoding": "The server could not read that line (bad UTF-8).",
    "bad-chars": "That line contained control characters and was not sent.",
    "flood": "You are sending too fast; that line was dropped.",
    # Said only without the server's text: its text names the limit (the
    # whole server, or one address's share of it: error_sentence).
    "server-full": "The server is full; try again later.",
    "accounts-off": "This server has no accounts.",
    "weak-password": "The server refused that password: {text}.",
    # registered answers REGISTER only; not-registered answers PASSWD or
    # REGISTER (an account this connection did not prove, a password the
    # server could not store): the server's text says why (account_error).
    "registered": "The nickname was not registered: {text}.",
    "not-registered": "Nothing was changed: {text}.",
    # Said only without the server's text (error_sentence): its text says
    # why ("not sent: the chat's store refused to store it; ...").
    "unavailable": "The server could not reach its cluster's store: that was not sent; "
    "send it again in a moment.",
    "unconfirmed": "The server lost touch with its cluster's store as that was sent: "
    "it takes effect once the store is back.",
}

ACCOUNT_ERRORS = frozenset({"accounts-off", "weak-password", "registered", "not-registered"})

# What a REGISTER or a PASSWD the server refused did not do.
NOT_DONE = {"REGISTER": "The nickname was not registered", "PASSWD": "The password was not changed"}

DECLINED = {
    "rejected": "{nick} declined your invitation.",
    "withdrawn": "You withdrew your invitation to {nick}.",
    "timeout": "Your invitation to {nick} expired without an answer.",
    "busy": "Your invitation to {nick} ended: one of you is now in another conversation.",
    "gone": "Your invitation to {nick} ended: {nick} is no longer online.",
}

CANCELLED = {
    "rejected": "You declined {nick}'s invitation.",
    "withdrawn": "{nick} withdrew the invitation.",
    "timeout": "{nick}'s invitation expired.",
    "busy": "{nick}'s invitation ended: one of you is now in another conversation.",
    "gone": "{nick}'s invitation ended: {nick} is no longer online.",
}

UNPAIRED = {
    "left": "{nick} left the private conversation. You are back in the lobby.",
    # The partner went offline: their LEFT, just before, said how (a quit
    # with its words, a lost connection...), as on the web page.
    "disconnected": "The private conversation with {nick} ended. You are back in the lobby.",
}

BYE_REASONS = {
    "quit": "Goodbye.",
    "timeout": "The server closed the connection: no activity for too long.",
    "flood": "The server closed the connection: too many lines too fast.",
    "shutdown": "The server is shutting down.",
    "full": "The server is full; try again later.",
}

USER_STATES = {"lobby": "in the lobby", "paired": "in a private conversation"}


def sentence(text: str) -> str:
    """C{text} ending with one full stop (or other final punctuation)."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


# What an error's sentence says when the server's text is empty.
_NO_TEXT = {"no-such-nick": "nobody by that name is online"}
# The chat/1 verbs the server's errors name ("usage: PAIR <nick>", "UNPAIR
# first", "UNPAIR withdraws it", "REJECT declines", "try HELP"), said as the
# user types them in an invitation's refusal (busy, pending) only.  Only in
# those places: a nick may be spelled as a verb ("your invitation to HELP is
# still open").  The web page's pageWords() (docs/web.md) rewrites the same
# places, but in every error, and "USERS costs", "PAIR costs" and "ACCEPT
# costs" too (ERROR flood for the user list's price, never busy or pending):
# here that one is said as "The server did not do /users: slow down: USERS
# costs ..." (error_sentence, docs/client.md).  Change both together.
_VERB = "UNPAIR|PAIR|ACCEPT|REJECT|HELP"
_VERB_PLACES = re.compile(
    rf"(?:(?<=\busage: )|(?<=\btry ))(?:{_VERB})\b|\b(?:{_VERB})(?= (?:first|withdraws|declines)\b)"
)


# ERROR busy answering a DM (or a MSG the server sent to the partner), not an
# invitation: its nick is the reader far behind (wire.PRIVATE_MESSAGES).
_BEHIND = re.compile(rf"(\S+) .*\b{re.escape(PRIVATE_MESSAGES)}\b")


def behind(code: str, text: str) -> str | None:
    """The nick an C{ERROR} C{code} says is too far behind reading to take a
    private message: a C{busy} answering a message (C{None}: another error,
    or a C{busy} answering an invitation)."""
    match = _BEHIND.match(text) if code == "busy" else None
    return match.group(1) if match else None


def message_refused(code: str, text: str) -> str | None:
    """
    The sentence for an C{ERROR} that refused a C{MSG} because its sender's
    pair changed before it was delivered: it went nowhere, neither to the
    lobby nor to a partner (C{None}: another error).  One server says
    C{busy} (it was meant for the lobby) or C{not-paired} (for a partner)
    "not sent: ..." for a line held behind our C{REGISTER} or C{PASSWD}; a
    cluster says C{unavailable} "not sent: ..." with the same words.  Not an
    invitation's refusal, nor an C{UNPAIR}'s.
    """
    if code in ("busy", "not-paired") and text.startswith(NOT_SENT):
        return server_reason(text)
    # ERROR unavailable "not sent" answers any command a cluster took back:
    # only the pair-change words say it answers a MSG.
    if code == "unavailable" and text.startswith(PAIR_CHANGED):
        return server_reason(text)
    return None


def server_reason(text: str) -> str:
    """The server's C{text} as a sentence, "not sent: why" as "Not sent: why."."""
    if text.startswith(NOT_SENT):
        text = "Not sent: " + text[len(NOT_SENT):]
    return sentence(text[:1].upper() + text[1:])


def not_keeping_up(nick: str) -> str:
    """A message to C{nick} refused as C{busy}: they are not keeping up."""
    return f"Not sent: {nick} is not reading fast enough to take more messages; try again later."


# ERROR not-ready's texts from this server (server/session.py, login.py)
# that say more than "choose a nickname first".
_WAITING_FOR_PASSWORD = re.compile(r"the server is waiting for the password of (\S+?):")
_ALREADY = re.compile(r"no password was asked for: you are already (\S+)$")


def not_ready(text: str, *, prompt: bool = False) -> str:
    """
    C{ERROR not-ready} in the client's words, by what the server's text
    says is awaited: while a password is asked (the server's text says to
    send C{PASS}, or C{NICK} for another nick), that password; C{prompt}:
    the password prompt is open, or opens again now (a terminal), so the
    words say what to do there.  Otherwise a nickname first.
    """
    waiting = _WAITING_FOR_PASSWORD.match(text)
    if waiting is not None:
        said = f"The server is waiting for the password of {waiting.group(1)} first"
        if prompt:
            said += (": type it at the password prompt, or just Enter there to choose "
                     "another nickname")
        return said + "."
    already = _ALREADY.match(text)
    if already is not None:
        return f"No password was asked for: you are already {already.group(1)}."
    if text.startswith("no password was asked for"):
        return "No password was asked for: choose a nickname first."
    return ERRORS["not-ready"]


def too_long(size: int, text: str, most: int) -> str:
    """C{ERROR too-long} for a message of C{text} (its line C{size} bytes)
    under a limit of C{most} bytes a line, in the user's terms: the
    message's bytes and the room the line's C{MSG } or C{DM nick } leaves
    it, as the web page says it."""
    own = len(text.encode("utf-8"))
    return (f"Your message was too long for the server ({own} bytes; "
            f"at most {most - (size - own)} here) and was not sent.")


def error_sentence(code: str, text: str) -> str:
    template = ERRORS.get(code)
    if code == "unavailable" and text:
        return server_reason(text)
    if template is None:
        return sentence(f"Server error ({code}): {text}" if text else f"Server error: {code}")
    if code == "server-full" and text.strip():
        return sentence(f"Refused by the server: {text.strip()}")
    verb = list_cost_verb(text) if code == "flood" else None
    if verb is not None:
        # Not a line dropped for the send rate: this command, for the cost
        # of the user list its answer would send (wire.list_cost).
        return sentence(f"The server did not do /{verb.lower()}: {text.rstrip('.')}")
    text = text.rstrip(".")
    if code in ("busy", "pending"):
        text = _VERB_PLACES.sub(lambda verb: "/" + verb.group().lower(), text)
    said = template.format(text=text or _NO_TEXT.get(code, code))
    # A text that ends its own sentence ("...online?") takes no full stop
    # after it where the template puts one (sentence() keeps "?" and "!").
    if said.endswith(("?.", "!.")):
        said = said[:-1]
    return sentence(said)


def invitation_not_sent(text: str) -> str:
    """C{ERROR no-such-nick} answering a C{PAIR}: said as its C{busy} and
    C{pending} are, not as a private message's "Not sent"."""
    return sentence(f"The invitation was not sent: {text.rstrip('.') or _NO_TEXT['no-such-nick']}")


def account_error(code: str, text: str, request: str | None) -> str:
    """C{ERROR registered}, C{not-registered}, (online, the server keeps
    no more accounts) C{server-full} or (a cluster's accounts out of reach)
    C{unavailable} answering C{request} (C{REGISTER}, C{PASSWD}, or None if
    unknown): what was not done, then the server's reason; any other code
    as L{error_sentence} says it."""
    lead = NOT_DONE.get(request or "")
    if lead is None or code not in ("registered", "not-registered", "server-full",
                                    "unavailable"):
        return error_sentence(code, text)
    return sentence(f"{lead}: {text.rstrip('.') or code}")


def _reason_text(table: dict[str, str], reason: str, nick: str, fallback: str) -> str:
    return table.get(reason, fallback).format(nick=nick, reason=reason)


def declined(nick: str, reason: str) -> str:
    return _reason_text(DECLINED, reason, nick, "Your invitation to {nick} ended ({reason}).")


def cancelled(nick: str, reason: str) -> str:
    return _reason_text(CANCELLED, reason, nick, "{nick}'s invitation ended ({reason}).")


def unpaired(nick: str, reason: str, *, by_me: bool) -> str:
    if by_me and reason == "left":
        return f"You left the private conversation with {nick}. You are back in the lobby."
    return _reason_text(
        UNPAIRED, reason, nick, "The private conversation with {nick} ended ({reason})."
    )


def _words(text: str) -> str:
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def _with_detail(said: str, detail: str) -> str:
    """C{said}, with the server's C{detail} after it unless it says the same again."""
    if not detail.strip() or _words(detail) in _words(said):
        return said
    return f"{said} ({detail.strip()})"


_SECONDS = re.compile(r"\b(\d+(?:\.\d+)?) seconds?\b")


def bye(
    reason: str, text: str, *, after_password: bool = False, logging_in: str | None = None
) -> str:
    """
    Why the server closed the connection.  C{after_password}: it answers a
    login password, so C{flood} means too many failed logins, not lines.
    C{logging_in}: what the server waited for, before C{READY} ("nickname"
    or "password"), so C{timeout} is its limit on the login (its
    C{--nick-timeout}, which the password is typed within too), not idleness.
    """
    if reason == "timeout" and logging_in is not None:
        limit = _SECONDS.search(text)
        allows = f" (it allows {limit.group(1)} seconds to log in)" if limit else ""
        return f"The server stopped waiting for the {logging_in}{allows}."
    if reason == "full" and text.strip():
        # The server's words name the limit, which may be one address's.
        return sentence(f"The server closed the connection: {text.strip()}")
    said = BYE_REASONS.get(reason, f"The server closed the connection ({reason}).")
    if reason == "flood" and after_password:
        said = "The server closed the connection after too many failed logins; try again later."
    if reason == "quit":
        return said
    return _with_detail(said, text)


def retry(nick: str, reason: str, text: str) -> str:
    """Why the server refused a nickname, in one sentence that says it once."""
    if reason == "taken":
        return f"The nickname {nick} is already taken by someone online."
    if reason == "unavailable":
        # Not about the nick: the server cannot check it for a moment.
        return sentence(_with_detail("The server is briefly unavailable", text))
    if reason == "bad-password":
        # The server does not say whether the nick has an account (under
        # --accounts required): neither can we.  Its words say so ("wrong
        # password, or no account for that nick"), or that it could not
        # check; "send NICK again" is the protocol's, done for the user.
        detail = re.sub(r";?\s*send NICK again\.?$", "", text.strip())
        return sentence(_with_detail(f"The password for {nick} was not accepted", detail))
    if nick and nick in text:
        # The server's text names the nick and says what is wrong with it.
        return sentence(text[0].upper() + text[1:])
    return sentence(_with_detail(f"The nickname {nick!r} cannot be used", text or reason))


@dataclass(frozen=True, slots=True)
class UserRow:
    nick: str
    state: str
    address: str | None = None


def mentions(text: str, nick: str) -> bool:
    """Whether C{text} names C{nick} as a whole word, in any case."""
    # A nick's own characters (letters, digits, _ and -) may not touch it:
    # "alice-bot" and "malice" do not mention alice; "@alice:" does.
    pattern = rf"(?<![A-Za-z0-9_-]){re.escape(nick)}(?![A-Za-z0-9_-])"
    return re.search(pattern, text, re.IGNORECASE) is not None


class Renderer:
    """
    Renders timestamped events.

    @param me: returns the user's own nick (C{None} before it has one).
    @param now: the current time, in seconds since the epoch.
    @param localtime: converts seconds to the local calendar (injectable so
        tests do not depend on the machine's time zone).
    """

    def __init__(
        self,
        me: Callable[[], str | None],
        now: Callable[[], float] = time.time,
        localtime: Callable[[float], time.struct_time] = time.localtime,
    ) -> None:
        self._me = me
        self._now = now
        self._localtime = localtime

    def _is_me(self, nick: str) -> bool:
        me = self._me()
        return me is not None and nick_key(me) == nick_key(nick)

    def stamp(self, ts: str) -> Span:
        """C{[14:03] }, with the date for a message from another day."""
        try:
            when = self._localtime(parse_ts(ts))
        except (ValueError, OverflowError, OSError):
            # Unreadable, or out of the calendar's range: a hostile server
            # can send any "timestamp".  Show the time it arrived.
            when = self._localtime(self._now())
        today = self._localtime(self._now())
        if when[:3] == today[:3]:
            shown = time.strftime("%H:%M", when)
        else:
            shown = time.strftime("%Y-%m-%d %H:%M", when)
        return Span(f"[{shown}] ", Style.TIME)

    def nick(self, nick: str) -> Span:
        return Span(nick, Style.SELF if self._is_me(nick) else Style.NICK)

    def who(self, nick: str) -> Span:
        """A nick as the subject of a private message: C{you} for oneself."""
        return Span("you", Style.SELF) if self._is_me(nick) else Span(nick, Style.NICK)

    def message(self, ts: str, sender: str, to: str, text: str) -> Line:
        """A lobby message C{<alice> hi} or a private C{(private) bob -> you: hi}."""
        if to == "*":
            me = self._me()
            if me is not None and not self._is_me(sender) and mentions(text, me):
                return (
                    self.stamp(ts),
                    Span("<"),
                    self.nick(sender),
                    Span("> "),
                    Span(text, Style.MENTION),
                )
            return (self.stamp(ts), Span("<"), self.nick(sender), Span("> " + text))
        return (
            self.stamp(ts),
            Span("(private) ", Style.PRIVATE),
            self.who(sender),
            Span(" -> "),
            self.who(to),
            Span(": " + text),
        )

    def joined(self, ts: str, nick: str) -> Line:
        return (self.stamp(ts), Span(f"* {nick} joined", Style.NOTICE))

    def left(self, ts: str, nick: str, reason: str, text: str) -> Line:
        why = LEFT_REASONS.get(reason, reason)
        if text:
            why = f"{why}: {text}"
        return (self.stamp(ts), Span(f"* {nick} left ({why})", Style.NOTICE))

    def users(self, rows: Sequence[UserRow], left_out: int = 0) -> list[Line]:
        """
        The user list as a small table, one line per person, and a last line
        for the C{left_out} people the client did not keep.
        """
        count = len(rows) + left_out
        head = notice(f"{count} {'person' if count == 1 else 'people'} online:")
        if not rows:
            return [head]
        # A chat/1 nick has at most NICK_MAX characters: a longer one (from a
        # hostile server) is cut, so that it cannot widen every row.
        names = [
            cut(row.nick, NICK_MAX) + (" (you)" if self._is_me(row.nick) else "") for row in rows
        ]
        width = max(text_width(n) for n in [*names, "NICK"]) + 2
        with_addr = any(row.address for row in rows)
        lines: list[Line] = [head]
        header = "  " + "NICK".ljust(width) + "STATUS"
        if with_addr:
            header = header.ljust(width + 2 + 28) + "ADDRESS"
        lines.append(info(header))
        for row, name in zip(rows, names, strict=True):
            pad = " " * (width - text_width(name))
            state = USER_STATES.get(row.state, row.state)
            cells: list[Span] = [Span("  "), Span(name, self.nick(row.nick).style), Span(pad)]
            if with_addr:
                cells.append(Span(state.ljust(28) + (row.address or "-")))
            else:
                cells.append(Span(state))
            lines.append(tuple(cells))
        if left_out:
            lines.append(info(f"  ... and {left_out} more, not shown"))
        return lines
