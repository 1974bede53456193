"""
A session's states, and how it ended: L{Ending} gathers what the client
learns on the way (a failure, Ctrl-C, the server's goodbye) and, once the
connection is gone, says it as an L{Outcome}, the exit code and one
sentence for stderr (docs/client.md, "Exit status and errors").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

# Exit code after Ctrl-C (or SIGINT) before the chat was joined, or in a
# script, or with typed lines still waiting: 128 + SIGINT, as shells report
# an interrupted command.
INTERRUPTED = 130
BEFORE_JOINING = "Interrupted before joining the chat."


class State(Enum):
    CONNECTING = auto()  # no connection yet
    GREETING = auto()  # connected, waiting for the server to ask for a nick
    ASK_NICK = auto()  # the server wants a nick and the user has to type one
    NICK_SENT = auto()  # waiting for READY, PASS or RETRY (also after PASS was sent)
    ASK_PASSWORD = auto()  # the nick has an account and the user has to type its password
    READY = auto()  # in the lobby
    PAIRED = auto()  # in a private conversation
    QUITTING = auto()  # BYE sent, waiting for the server's answer
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the session ended: the exit code and a sentence for stderr."""

    code: int
    message: str | None = None


def _sentences(first: str, then: str | None) -> str:
    return first if then is None else f"{first} {then}"


def interrupted_before_joining(last: Outcome) -> Outcome:
    """
    Ctrl-C (or SIGINT) between connections, none of which got in: status
    130, with what ended the C{last} connection after L{BEFORE_JOINING}.
    """
    return Outcome(INTERRUPTED, _sentences(BEFORE_JOINING, last.message))


@dataclass(slots=True)
class Ending:
    """What is known, so far, of how the session ends."""

    failure: str | None = None  # why it failed, for stderr
    interrupted: bool = False  # Ctrl-C: the exit code says so
    heard: bool = False  # any byte came from the server
    said_bye: bool = False  # we sent BYE (lines typed after it are not counted)
    bye_received: bool = False
    bye_reason: str | None = None  # the server's BYE reason, once received
    bye_at_nick_prompt: bool = False  # that BYE came while the nickname prompt was open
    bye_answered: bool = False  # the server answered our BYE
    gave_up: bool = False  # we closed the connection after an unanswered BYE
    cut_short: bool = False  # a second Ctrl-C closed it while BYE waited for its answer

    def _unanswered(self, server: str, quit_timeout: float) -> str | None:
        """What became of our C{BYE} the server never answered, if that is how it ended."""
        if self.bye_received:
            return None
        if self.gave_up:
            return f"No answer from {server} to the goodbye within {quit_timeout:g} seconds."
        if self.cut_short:
            return f"Left before {server} answered the goodbye."
        return None

    def outcome(
        self,
        server: str,
        *,
        quitting: bool,
        joined: bool,
        tls_error: str | None,
        losses: str | None,
        tls_hint: str,
        quit_timeout: float,
    ) -> Outcome:
        """
        The session's outcome once the connection is lost.

        @param quitting: the session was leaving (C{BYE} sent or received).
        @param joined: the server had accepted a nickname.
        @param tls_error: the sentence for a TLS failure, if the loss was one.
        @param losses: what was not sent or not confirmed (the outbox's C{losses}).
        @param tls_hint: added where the server may speak TLS.
        """
        unanswered = self._unanswered(server, quit_timeout) if quitting else None
        if self.failure is not None:
            return Outcome(1, _sentences(self.failure, losses))
        if self.interrupted:
            said = "Interrupted." if joined else BEFORE_JOINING
            return Outcome(INTERRUPTED, _sentences(_sentences(said, unanswered), losses))
        if quitting and self.bye_received:
            return Outcome(1, losses) if losses else Outcome(0)
        if unanswered is not None:
            # Without the server's answer nothing says that the last lines
            # arrived: not a normal quit (docs/client.md, exit status).
            return Outcome(1, _sentences(unanswered, losses))
        if tls_error is not None:
            return Outcome(1, tls_error)
        if not self.heard:
            return Outcome(
                1, f"{server} closed the connection without a word: is it a chat server?{tls_hint}"
            )
        # A server that is killed leaves either a clean close or a reset
        # (when our BYE, or anything else, reached it after it died):
        # whichever it is, the chat is over without the server's goodbye.
        return Outcome(1, _sentences(f"The connection to {server} was lost.", losses))
