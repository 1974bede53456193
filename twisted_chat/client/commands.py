"""
What the user types, turned into chat/1 requests or local answers.

Plain text is a message (to the lobby, or to the partner while paired).  A line
starting with C{/} is a command, C{@NICK text} is a private message, and C{//}
sends a message that starts with one C{/}.  Unknown commands are answered
locally with a hint; nothing is sent for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted_chat.wire import (
    BAD_CHARS,
    NICK_MAX,
    PASSWORD_MAX_BYTES,
    PASSWORD_MIN_BYTES,
    is_valid_nick,
    password_bytes,
    password_chars_problem,
)
from twisted_chat.wire import line as wire_line

HELP = """\
Commands:
  TEXT              talk to the lobby (to your partner while paired)
  @NICK TEXT        private message to NICK (also /dm NICK TEXT, /msg)
  /users            who is online (also /who)
  /pair NICK        invite NICK to a private conversation
  /accept [NICK]    accept NICK's invitation
  /reject [NICK]    decline NICK's invitation (also /decline)
  /unpair, /leave   leave the private conversation, or withdraw your invitation
  /register         protect your nickname with a password (asked for, not shown)
  /passwd           change that password (also /password)
  /nick             how to use another nickname
  /reconnect        when disconnected: connect again now, not after the wait
  /help             this help
  /quit [TEXT]      leave the chat, with an optional goodbye (also /q, /exit)
  //TEXT            send a message that starts with /"""

CONNECTED = "You are connected: /reconnect only skips the wait once the connection is lost."

# chat/1 has no nick change once READY; the client does not drop a working
# connection (what is in flight, a private conversation) to fake one.
NICK_FIXED = ("A nickname cannot change while connected: /quit, then connect again "
              "with --nick NEW (or type NEW at the nickname prompt).")

KEYS_HELP = """\
Keys:
  Left, Right, Home, End (Ctrl-A, Ctrl-E), Ctrl-Left, Ctrl-Right   move
  Up, Down          earlier lines you typed
  Tab               complete a nickname or a /command; Tab again for the next
  Ctrl-U, Ctrl-K, Ctrl-W   delete before / after the cursor, the word before
  Ctrl-L            clear the screen
  Enter, Esc        after a paste of more than 5 lines: send it, drop it
  Ctrl-C, Ctrl-D    quit (Ctrl-D on an empty line)"""


@dataclass(frozen=True, slots=True)
class Send:
    """A request for the server."""

    verb: str
    words: tuple[str, ...] = ()
    text: str = ""

    def encode(self) -> bytes:
        return wire_line(self.verb, *self.words, text=self.text)


@dataclass(frozen=True, slots=True)
class Local:
    """Something to tell the user without asking the server: a table
    (C{/help}), an error, or a notice (one C{* } line)."""

    text: str
    is_error: bool = False
    is_notice: bool = False


@dataclass(frozen=True, slots=True)
class Secret:
    """Ask for a password without showing it, then send C{verb} with it."""

    verb: str  # REGISTER or PASSWD


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave: send C{BYE} with this text and wait for the server's answer."""

    text: str = ""


Action = Send | Local | Quit | Secret | None

_ALIASES = {
    "users": "users",
    "who": "users",
    "names": "users",
    "pair": "pair",
    "invite": "pair",
    "accept": "accept",
    "reject": "reject",
    "decline": "reject",
    "unpair": "unpair",
    "leave": "unpair",
    "dm": "dm",
    "msg": "dm",
    "register": "register",
    "passwd": "passwd",
    "password": "passwd",
    "reconnect": "reconnect",
    "nick": "nick",
    "help": "help",
    "h": "help",
    "?": "help",
    "quit": "quit",
    "q": "quit",
    "exit": "quit",
    "bye": "quit",
}


# Commands whose arguments would be a password: a line that starts with one
# is never kept in the input history.
SECRET_COMMANDS = ("register", "passwd", "password")


def is_secret_command(line: str) -> bool:
    """Whether C{line} is C{/register}, C{/passwd}... (with or without arguments)."""
    if not line.startswith("/"):
        return False
    return line[1:].split(" ", 1)[0].lower() in SECRET_COMMANDS


# Commands that change whom plain text goes to (the lobby or a partner).
_PAIRING_COMMANDS = ("pair", "accept", "unpair")


def changes_pairing(line: str) -> bool:
    """Whether C{line} is C{/pair}, C{/accept} or C{/unpair} (or an alias)."""
    if not line.startswith("/") or line.startswith("//"):
        return False
    return _ALIASES.get(line[1:].split(" ", 1)[0].lower()) in _PAIRING_COMMANDS


def nick_argument(line: str) -> str | None:
    """The NICK of a C{/nick NICK} line (C{""} for a bare C{/nick}), or
    C{None} for any other line: at the nickname prompt it names the nick."""
    if not line.startswith("/"):
        return None
    name, _, rest = line[1:].partition(" ")
    return rest.strip(" \t") if _ALIASES.get(name.lower()) == "nick" else None


@dataclass(frozen=True, slots=True)
class NotANick:
    """A line at a nickname prompt that names no nickname: what to say (a
    local command's answer, then why nothing was sent), and whether it was
    one the server would refuse as a nickname (a script gives up then)."""

    said: tuple[Local, ...]
    invalid: bool = False


def nick_prompt_line(line: str) -> str | Quit | NotANick | None:
    """
    A line typed at a nickname prompt, the login's or the one a
    reconnection waits at: the nickname to ask for (also as C{/nick NICK}),
    C{/quit}, or what to say instead; C{None} for a blank line.  One reading
    for both, so that they answer alike.
    """
    nick = line.strip()
    if not nick:
        return None
    wanted = nick_argument(nick)
    if wanted:
        nick = wanted
    elif wanted is not None:
        return NotANick((Local("Type the nickname you want alone at this prompt.", is_error=True),))
    elif nick.startswith("/"):
        action = parse_input(nick)
        if isinstance(action, Quit):
            return action
        first = Local("Choose a nickname first.", is_error=True)
        return NotANick((action, first) if isinstance(action, Local) else (first,))
    if is_valid_nick(nick):
        return nick
    # The server would answer ERROR too-long or bad-chars (not RETRY) for
    # some of these; said here, in the words --nick uses.
    shown = nick if len(nick) <= 30 else nick[:30] + "..."
    return NotANick(
        (Local(f"{shown!r} is not a valid nickname (1 to {NICK_MAX} letters, digits, _ or -, "
               "starting with a letter).", is_error=True),),
        invalid=True,
    )


def _length_fits(size: int) -> bool:
    return PASSWORD_MIN_BYTES <= size <= PASSWORD_MAX_BYTES


def password_problem(password: str, *, login: bool = False) -> str | None:
    """Why C{password} cannot be sent as it is, or C{None}: its length in
    bytes (chat/1, "Accounts"), then L{password_chars_problem}, the rule
    the server and the operator's tool hold passwords to.  The length
    counted is the NFC form's (what the server hashes and stores), as for
    the server's C{REGISTER} and C{PASSWD}; for a C{login} (C{PASS}) the
    bytes as typed fitting will do too, as the server's C{PASS} takes a
    password set before passwords were normalised.  The NFC form is the
    server's L{password_bytes}, which leaves a line too long to be a
    password as typed (normalising it could freeze the client for
    seconds)."""
    stored = len(password_bytes(password))
    typed = len(password.encode("utf-8"))
    if not _length_fits(stored) and not (login and _length_fits(typed)):
        return _length_problem(stored)
    problem = password_chars_problem(password)
    return None if problem is None else f"{problem[:1].upper()}{problem[1:]}."


def _length_problem(size: int) -> str:
    """The NFC form's C{size} out of bounds (for a login, the bytes as
    typed are then on the same side: NFC makes UTF-8 at most 3.5 times
    shorter or 3 times longer, the bounds are 32 times apart)."""
    if size < PASSWORD_MIN_BYTES:
        return (
            f"A password needs at least {PASSWORD_MIN_BYTES} bytes "
            "(characters, for plain ASCII)."
        )
    return f"A password may have at most {PASSWORD_MAX_BYTES} bytes."


def sendable(text: str) -> str:
    """Drop characters the server would refuse (control characters but TAB)."""
    return BAD_CHARS.sub("", text)


def _usage(usage: str) -> Local:
    return Local(f"Usage: {usage}", is_error=True)


def _bad_nick(nick: str) -> Local:
    return Local(
        f"{nick!r} is not a valid nickname (letters, digits, _ and -, starting with a letter).",
        is_error=True,
    )


def _message(text: str) -> Action:
    if not text.strip(" \t"):
        return None
    return Send("MSG", text=text)


def _dm(rest: str, usage: str) -> Action:
    nick, _, text = rest.partition(" ")
    text = text.lstrip(" ")
    if not nick or not text.strip(" \t"):
        return _usage(usage)
    if not is_valid_nick(nick):
        return _bad_nick(nick)
    return Send("DM", (nick,), text)


def _nick_command(
    verb: str, name: str, rest: str, inviters: Sequence[str] | None = None
) -> Action:
    """C{/name NICK}; bare, the one of C{inviters} if there is only one
    (C{None}: the nick is required)."""
    nick = rest.strip(" \t")
    if not nick:
        if inviters is None:
            return _usage(f"/{name} NICK")
        if len(inviters) > 1:
            shown = ", ".join(inviters[:3]) + (", ..." if len(inviters) > 3 else "")
            return Local(
                f"{len(inviters)} invitations are open ({shown}): "
                f"/{name} {inviters[0]} or /{name} {inviters[1]}, for instance.",
                is_error=True,
            )
        if not inviters:
            return Local(f"There is no open invitation to {name.lower()}.", is_error=True)
        nick = inviters[0]
    if " " in nick or not is_valid_nick(nick):
        return _bad_nick(nick)
    return Send(verb, (nick,))


def parse_input(line: str, *, inviters: Sequence[str] = ()) -> Action:
    """
    Turn one line the user typed into an action.

    @param inviters: who invited the user, oldest first: a bare C{/accept}
        or C{/reject} answers the only one, and names them if there are more.
    @return: C{None} when there is nothing to do (a blank line).
    """
    line = sendable(line.rstrip("\r\n"))
    if line.startswith("//"):
        return _message(line[1:])
    if line.startswith("@") and len(line) > 1 and not line[1].isspace():
        return _dm(line[1:], "@NICK TEXT")
    if not line.startswith("/"):
        return _message(line)
    name, _, rest = line[1:].partition(" ")
    command = _ALIASES.get(name.lower())
    if command == "users":
        return Send("USERS")
    if command == "pair":
        return _nick_command("PAIR", name, rest)
    if command == "accept":
        return _nick_command("ACCEPT", name, rest, inviters)
    if command == "reject":
        return _nick_command("REJECT", name, rest, inviters)
    if command == "unpair":
        return Send("UNPAIR")
    if command == "dm":
        return _dm(rest.lstrip(" "), f"/{name} NICK TEXT")
    if command in ("register", "passwd"):
        if rest.strip(" \t"):
            # Typed where everyone behind you can read it, and kept in the
            # history: refused, and not sent.
            return Local(
                f"Type /{name} alone: the password is asked for without showing it.",
                is_error=True,
            )
        return Secret("REGISTER" if command == "register" else "PASSWD")
    if command == "help":
        return Local(HELP)
    if command == "reconnect":
        # Between connections twisted_chat.client.reconnect takes it first.
        # A connection that works is not dropped for it: what is in flight,
        # and a private conversation, would be lost for nothing.
        return Local(CONNECTED, is_notice=True)
    if command == "nick":
        return Local(NICK_FIXED, is_error=True)
    if command == "quit":
        return Quit(rest.strip(" \t"))
    shown = name if len(name) <= 20 else name[:20] + "..."
    return Local(
        f"Unknown command /{shown}. Type /help for the commands; "
        "start a line with // to send a message that begins with /.",
        is_error=True,
    )
