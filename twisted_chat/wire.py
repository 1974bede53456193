"""
The chat/1 wire format, as pure functions.

Parsing a client line happens in stages because docs/protocol.md fixes the order
in which a bad line is diagnosed: length, encoding, characters, verb, state,
arguments.  The state check belongs to the connection, so this module offers
the stages around it separately: L{decode} (encoding and characters),
L{split_verb} (the verb) and L{parse_args} (the arguments).  A client splits
a server line by the same rules: L{verb_and_rest} (split_verb's first step),
then L{split_words}, with L{SERVER_VERBS}.

Formatting returns C{bytes} ready for C{transport.write}, so that a line meant
for many recipients is encoded exactly once.
"""

from __future__ import annotations

import functools
import re
import time
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

CRLF = b"\r\n"
PROTOCOL_VERSION = "chat/1"
# The port a chat/1 server listens on and a client dials when none is given.
DEFAULT_PORT = 7000

NICK_MAX = 24
_NICK = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,%d}\Z" % (NICK_MAX - 1))

# The characters no chat/1 line may hold (ERROR bad-chars): C0 controls except
# TAB, DEL, C1 controls, LINE and PARAGRAPH SEPARATOR.  The terminal client
# strips them from what the user typed.
BAD_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_BLANK = " \t"


class ErrorCode(str, Enum):
    """The codes an C{ERROR} line may carry."""

    UNKNOWN_COMMAND = "unknown-command"
    BAD_ARGS = "bad-args"
    NOT_READY = "not-ready"
    ALREADY_READY = "already-ready"
    NO_SUCH_NICK = "no-such-nick"
    SELF = "self"
    BUSY = "busy"
    PENDING = "pending"
    NO_INVITE = "no-invite"
    NOT_PAIRED = "not-paired"
    TOO_LONG = "too-long"
    BAD_ENCODING = "bad-encoding"
    BAD_CHARS = "bad-chars"
    FLOOD = "flood"
    SERVER_FULL = "server-full"
    ACCOUNTS_OFF = "accounts-off"
    WEAK_PASSWORD = "weak-password"
    REGISTERED = "registered"
    NOT_REGISTERED = "not-registered"
    # Cluster mode only, beyond chat/1's complete list (docs/protocol.md,
    # "Beyond chat/1: cluster mode"): a command that waited too long for the
    # cluster's store, not sent (unavailable) or sent but not confirmed
    # (unconfirmed: it takes effect once when the store is back).
    UNAVAILABLE = "unavailable"
    UNCONFIRMED = "unconfirmed"
    # Beyond chat/1 too, in every mode (docs/protocol.md, "Where this server
    # departs from chat/1 as published"): a command the server itself
    # failed on (a fault, logged with its traceback), so it is not left
    # unanswered.
    INTERNAL = "internal"


class Refusal(Exception):
    """A line or command refused by a rule; answered with C{ERROR code text}."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class LineError(Refusal):
    """
    A line that fails one of the checks; it is answered with one C{ERROR}.
    """


class Text(Enum):
    """Whether a verb takes a free-text field after its words."""

    NONE = 0
    OPTIONAL = 1
    REQUIRED = 2


# Text's members as module globals, for the checks every line goes through:
# on Python 3.11 EnumType defines __getattr__, which takes every read of an
# Enum class's attribute (Text.NONE) off the interpreter's fast path, at
# about the cost of a function call.
_NO_TEXT = Text.NONE
_TEXT_REQUIRED = Text.REQUIRED


@dataclass(frozen=True, slots=True)
class Grammar:
    """How many single-word arguments a verb takes, and its free text."""

    min_words: int
    max_words: int
    text: Text
    nick_words: int = 0  # how many of the leading words are nicks


# Every verb a client may send.  Verbs only the server sends (READY, JOINED,
# ...) are deliberately absent: from a client they are unknown commands.
CLIENT_VERBS: dict[str, Grammar] = {
    "NICK": Grammar(1, 1, Text.NONE, nick_words=1),
    "MSG": Grammar(0, 0, Text.REQUIRED),
    "DM": Grammar(1, 1, Text.REQUIRED, nick_words=1),
    "USERS": Grammar(0, 0, Text.NONE),
    "PAIR": Grammar(1, 1, Text.NONE, nick_words=1),
    "ACCEPT": Grammar(1, 1, Text.NONE, nick_words=1),
    "REJECT": Grammar(1, 1, Text.NONE, nick_words=1),
    "UNPAIR": Grammar(0, 0, Text.NONE),
    "PING": Grammar(0, 0, Text.OPTIONAL),
    "PONG": Grammar(0, 0, Text.OPTIONAL),
    "HELP": Grammar(0, 1, Text.NONE),
    "BYE": Grammar(0, 0, Text.OPTIONAL),
    # Accounts: the password is the rest of the line (spaces inside and at
    # the end kept); its length rule is the verb's own (weak-password).
    "PASS": Grammar(0, 0, Text.OPTIONAL),
    "REGISTER": Grammar(0, 0, Text.OPTIONAL),
    "PASSWD": Grammar(0, 0, Text.OPTIONAL),
}

# Every verb a server sends, as the clients read it.  A client refuses no
# server line for its text, so every text here is OPTIONAL; it keeps the first
# max_words of a verb without text (a later version may add words).
SERVER_VERBS: dict[str, Grammar] = {
    "HELLO": Grammar(1, 1, Text.OPTIONAL),
    "NICK": Grammar(0, 0, Text.NONE),
    "RETRY": Grammar(1, 1, Text.OPTIONAL),
    "READY": Grammar(1, 1, Text.NONE),
    "PASS": Grammar(1, 1, Text.NONE),
    "REGISTERED": Grammar(1, 1, Text.NONE),
    "HISTORY": Grammar(2, 2, Text.OPTIONAL),
    "JOINED": Grammar(2, 2, Text.NONE),
    "MSG": Grammar(3, 3, Text.OPTIONAL),
    "USER": Grammar(2, 3, Text.NONE),
    "USERS": Grammar(1, 1, Text.NONE),
    "PENDING": Grammar(1, 1, Text.NONE),
    "INVITE": Grammar(1, 1, Text.NONE),
    "PAIRED": Grammar(1, 1, Text.NONE),
    "UNPAIRED": Grammar(2, 2, Text.NONE),
    "DECLINED": Grammar(2, 2, Text.NONE),
    "CANCELLED": Grammar(2, 2, Text.NONE),
    "LEFT": Grammar(3, 3, Text.OPTIONAL),
    "BYE": Grammar(1, 1, Text.OPTIONAL),
    "PING": Grammar(0, 0, Text.OPTIONAL),
    "PONG": Grammar(0, 0, Text.OPTIONAL),
    "HELP": Grammar(0, 0, Text.OPTIONAL),
    "ERROR": Grammar(1, 1, Text.OPTIONAL),
}

# A password is this many bytes of the line (UTF-8), else weak-password.
PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 256


# NFC makes a string's UTF-8 at most 3.5 times shorter (U+1FBE U+0308 U+0301,
# 7 bytes, is U+0390, 2): one longer than 4 times the longest password has
# no NFC form short enough either.
_NFC_MAX_SHRINK = 4


def password_bytes(password: str) -> bytes:
    """
    What C{password} is hashed as, set or checked: its Unicode NFC form (as
    RFC 8265's OpaqueString normalises), in UTF-8.  The same visible
    password is then one password, typed on a keyboard (mostly NFC) or
    pasted (a macOS file name, some password managers: NFD).

    A line too long for any NFC form of it to be a password is not
    normalised: that costs time growing with the square of its length (the
    reordering of combining marks), on the reactor, for a line that is
    refused anyway.
    """
    typed = password.encode("utf-8")
    if len(typed) > _NFC_MAX_SHRINK * PASSWORD_MAX_BYTES:
        return typed
    return unicodedata.normalize("NFC", password).encode("utf-8")


def password_chars_problem(password: str) -> str | None:
    """
    Why no client can send C{password} as the text of a C{PASS} line, or
    C{None}: a line with a control character is C{ERROR bad-chars}, and a
    space before the text is taken as the separator (the clients refuse a
    leading tab too).  The operator's tool holds passwords to it, as the
    clients do, so that no account is made with one nobody can log in with.
    """
    if password[:1] in (" ", "\t"):
        return "a password cannot start with a space or a tab"
    if BAD_CHARS.search(password) is not None:
        return "a password cannot contain control characters (TAB is allowed)"
    return None


class Command(NamedTuple):
    """A client line that passed every check this module can make.  A
    named tuple, not a frozen dataclass: one is made for every line, and a
    frozen dataclass's __init__ sets each field through object.__setattr__."""

    verb: str
    words: tuple[str, ...]
    text: str  # "" when the verb has no free text or it was left out


def is_valid_nick(nick: str) -> bool:
    return _NICK.match(nick) is not None


def nick_key(nick: str) -> str:
    """The form under which nicks are compared: ASCII case does not count.
    A nick already in that form is its own key (one string per user, not
    two: docs/fanout.md, "Memory per connection")."""
    key = nick.lower()
    return nick if key == nick else key


def decode(line: bytes) -> str:
    """
    Check a line's encoding and characters (checks 2 and 3) and decode it.

    @raise LineError: with C{bad-encoding} or C{bad-chars}.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError(ErrorCode.BAD_ENCODING, "lines must be valid UTF-8") from None
    # Printable ASCII (most lines) holds none of BAD_CHARS: two C checks
    # spare it the regex's scan, which every line went through.
    if not (text.isascii() and text.isprintable()) and BAD_CHARS.search(text) is not None:
        raise LineError(
            ErrorCode.BAD_CHARS, "control characters are not allowed (TAB is)"
        )
    return text


def split_verb(text: str) -> tuple[str, str] | None:
    """
    Split a decoded line into its upper-cased verb and the rest (check 4).

    @return: C{None} for an empty line (only spaces and tabs), which is
        ignored; otherwise C{(VERB, rest)} with the spaces after the verb
        removed from C{rest}.
    @raise LineError: C{unknown-command} for a verb clients may not send.
    """
    split = verb_and_rest(text)
    if split is None:
        return None
    verb, rest = split
    upper = verb.upper() if verb.isascii() else ""
    if upper not in CLIENT_VERBS:
        shown = verb if len(verb) <= 32 else verb[:32] + "..."
        raise LineError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {shown!r}; try HELP")
    return upper, rest


def verb_and_rest(text: str) -> tuple[str, str] | None:
    """
    A line's verb as it came and the rest, with the spaces around the verb
    removed: the first step of L{split_verb}, and of a client splitting a
    server line (any verb).  C{None} for an empty line (only spaces and tabs).
    """
    if not text.strip(_BLANK):  # blank: nothing but _BLANK
        return None
    verb, _, rest = text.lstrip(" ").partition(" ")
    return verb, rest.lstrip(" ")


def msg_text(text: str) -> str | None:
    """
    The text of a decoded line that is a well-formed C{MSG} written as the
    clients write it (C{MSG}, in capitals, then a space), exactly as
    L{split_verb} and L{parse_args} would take it; C{None} for any other
    line, which goes through them.  The commonest line, parsed in one call
    instead of four.
    """
    if text.startswith("MSG "):
        rest = text[4:].lstrip(" ")
        if rest.strip(_BLANK):  # MSG's text is required: blank goes the long way
            return rest
    return None


def split_words(grammar: Grammar, rest: str) -> tuple[list[str], str]:
    """
    Split C{rest}, a line after its verb with leading spaces removed, into
    words and free text: up to C{grammar.max_words} words, then the text,
    for a verb that takes one; every word, and no text, for one that does
    not.  Words are separated by one or more spaces; the counts are the
    caller's to check.
    """
    if grammar.text is _NO_TEXT:
        # Words are separated by spaces only: a tab inside a word keeps it
        # one (malformed) word rather than silently splitting it.
        return [w for w in rest.split(" ") if w], ""
    words: list[str] = []
    while len(words) < grammar.max_words and rest:
        word, _, rest = rest.partition(" ")
        words.append(word)
        rest = rest.lstrip(" ")
    return words, rest


def parse_args(verb: str, rest: str) -> Command:
    """
    Split C{rest} into C{verb}'s words and free text (check 6).

    @param rest: the line after the verb, leading spaces removed.
    @raise LineError: C{bad-args}, with a message naming the usage.
    """
    grammar = CLIENT_VERBS[verb]
    words, text = split_words(grammar, rest)
    if not grammar.min_words <= len(words) <= grammar.max_words:
        raise LineError(ErrorCode.BAD_ARGS, f"usage: {USAGE[verb]}")
    for nick in words[: grammar.nick_words]:
        if not is_valid_nick(nick):
            raise LineError(
                ErrorCode.BAD_ARGS,
                f"{_shorten(nick)!r} is not a valid nick (1-{NICK_MAX} letters, digits, "
                "_ or -, starting with a letter)",
            )
    if grammar.text is _TEXT_REQUIRED and not text.strip(_BLANK):  # blank: nothing but _BLANK
        raise LineError(ErrorCode.BAD_ARGS, f"usage: {USAGE[verb]} (the text may not be empty)")
    return Command(verb, tuple(words), text)


def _shorten(s: str, limit: int = 32) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


USAGE: dict[str, str] = {
    "NICK": "NICK <nick>",
    "MSG": "MSG <text>",
    "DM": "DM <nick> <text>",
    "USERS": "USERS",
    "PAIR": "PAIR <nick>",
    "ACCEPT": "ACCEPT <nick>",
    "REJECT": "REJECT <nick>",
    "UNPAIR": "UNPAIR",
    "PING": "PING [<token>]",
    "PONG": "PONG [<token>]",
    "HELP": "HELP [<verb>]",
    "BYE": "BYE [<text>]",
    "PASS": "PASS <password>",
    "REGISTER": "REGISTER <password>",
    "PASSWD": "PASSWD <new password>",
}

# What HELP says each verb does, as under --accounts open: the server's
# session gives PASS, REGISTER and PASSWD the text of its own mode.
HELP_TEXT: dict[str, str] = {
    "NICK": "choose your nickname (1-24 letters, digits, _ or -, starting with a letter)",
    "MSG": "talk to the lobby, or to your partner while paired",
    "DM": "send a private message to one user",
    "USERS": "list who is online",
    "PAIR": "invite a user to a private one-to-one conversation",
    "ACCEPT": "accept an invitation",
    "REJECT": "reject an invitation",
    "UNPAIR": "leave your private conversation, or withdraw your invitation",
    "PING": "check the connection; the server answers PONG with the same token",
    "PONG": "answer the server's PING",
    "HELP": "this help; HELP <verb> for one command",
    "BYE": "leave the server",
    "PASS": "give your nick's password when the server asks for it (PASS <nick>)",
    "REGISTER": "protect the nick you hold with a password (8-256 bytes)",
    "PASSWD": "change the password of the nick you hold",
}


# -- words the clients tell answers apart by -------------------------------
#
# chat/1 has no code of its own for these answers, yet the clients must tell
# them from others of the same code: they do by these words, which the server
# writes and the terminal client matches.  app.js cannot import them: it keeps
# copies, held to these by tests/web/test_site.py.

# How a refused command's text begins when it went nowhere: "not sent: why".
NOT_SENT = "not sent: "
# A MSG that went nowhere because its sender's pair changed before it was
# delivered (docs/cluster.md, "What is guaranteed"), each followed by a nick:
# a lobby line while its sender was paired (ERROR busy, or a cluster's
# unavailable), a partner's line once the pair had ended (ERROR not-paired;
# a cluster's unavailable says "not paired").
MEANT_FOR_LOBBY = NOT_SENT + "it was meant for the lobby and you were paired with "
NO_LONGER_PAIRED = NOT_SENT + "you were no longer paired with "
NOT_PAIRED_WITH = NOT_SENT + "you were not paired with "
PAIR_CHANGED = (MEANT_FOR_LOBBY, NO_LONGER_PAIRED, NOT_PAIRED_WITH)
# How a cluster's ERROR unavailable begins when it answers REGISTER or
# PASSWD: no other command gets these words.
ACCOUNTS_UNAVAILABLE = "the accounts cannot be reached"
# How an ERROR flood begins when it refuses a password job, a PASS, REGISTER
# or PASSWD not done ("; send <verb> again ..." follows), rather than a line
# the flood control dropped: the password threads hold all the work they may
# (SERVER_BUSY), the address holds its share of it (PASSWORD_WORK), or the
# address made its new hashes for a while (ADDRESS_HASHES: REGISTER, PASSWD).
SERVER_BUSY = "the server is busy"
PASSWORD_WORK = "too much password work from your address at once"
ADDRESS_HASHES = "too many REGISTER and PASSWD from your address lately"
PASSWORD_WORK_REFUSED = (SERVER_BUSY, PASSWORD_WORK, ADDRESS_HASHES)
# How an ERROR flood for a line the flood control dropped ends (it does not
# say which line), and what it says when the line was a lobby message
# dropped for its address's lobby rate (only a MSG to the lobby is).
LINES_DROPPED = "lines are being dropped"
LOBBY_RATE = "lobby messages per second from your address"
# ERROR busy "<nick> is not reading fast enough to take more private
# messages; ..." refuses a DM or a pair's MSG to a reader far behind
# (docs/protocol.md, Limits 14); its other text ("... more invitations")
# refuses an invitation.
PRIVATE_MESSAGES = "private messages"


# The commands whose answer sends the user list, and which pay for it.
LIST_COST_VERBS = ("USERS", "PAIR", "ACCEPT")


def list_cost(verb: str) -> str:
    """
    How C{ERROR flood} begins when it refuses C{verb} (C{USERS}, C{PAIR},
    C{ACCEPT}) for the user list its answer sends (docs/protocol.md,
    "Limits"): the line is not done.  The verb names the command answered.
    """
    return f"slow down: {verb} costs one line per "


def list_cost_verb(text: str) -> str | None:
    """
    The command an C{ERROR flood} C{text} refused for the user list's cost
    (L{list_cost}), or C{None}: another flood (lines dropped for the send
    rate, password work refused).
    """
    for verb in LIST_COST_VERBS:
        if text.startswith(list_cost(verb)):
            return verb
    return None


def meant_for_lobby(partner: str) -> str:
    """The text refusing a lobby C{MSG} whose sender was paired with
    C{partner} when it came to be delivered."""
    return f"{MEANT_FOR_LOBBY}{partner} when it came to be delivered; send it again"


# -- formatting ------------------------------------------------------------


def line(verb: str, *words: str, text: str = "") -> bytes:
    """
    Encode one line, a server's or a client's request.  An empty free text
    is left out together with the space before it.
    """
    parts = " ".join((verb, *words))
    if text:
        parts = f"{parts} {text}"
    return parts.encode("utf-8") + CRLF


def msg_line(ts: float, sender: str, recipient: str, text: str) -> bytes:
    """
    C{line("MSG", format_ts(ts), sender, recipient, text=text)} in one
    f-string: every lobby and private message is one, so its generic
    joins are left out, and L{format_ts} is written out.
    """
    if not text:
        return line("MSG", format_ts(ts), sender, recipient)
    whole, ms = divmod(int(ts * 1000), 1000)
    return (f"MSG {_format_second(whole)}{_MILLISECONDS[ms]} {sender} {recipient} {text}\r\n"
            .encode())


# ".000Z" to ".999Z": a timestamp's end is looked up, not formatted (an
# f-string's {ms:03d} parses its format spec on every lobby line).
_MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds: C{2026-11-22T10:15:02.481Z}."""
    whole, ms = divmod(int(seconds * 1000), 1000)
    return _format_second(whole) + _MILLISECONDS[ms]


@functools.lru_cache(maxsize=4)
def _format_second(whole: int) -> str:
    # Every lobby line carries a timestamp, and a busy second has thousands
    # of them: the calendar arithmetic is done once a second, not per line.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def parse_ts(ts: str) -> float:
    """The inverse of L{format_ts} (for clients and tests)."""
    import calendar

    base, _, frac = ts.rstrip("Z").partition(".")
    whole = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return whole + (int(frac) / 1000 if frac else 0.0)


def error(code: ErrorCode, text: str) -> bytes:
    return line("ERROR", code.value, text=text or code.value)


def format_address(host: str | None, port: int | None) -> str:
    """C{host:port}, C{[v6]:port}, or C{-} where there is no address."""
    if host is None or port is None:
        return "-"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
