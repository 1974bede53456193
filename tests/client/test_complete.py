"""Tab completion: what the word before the cursor becomes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twisted_chat.client.complete import COMMANDS, Completion, complete

NICKS = ("bob", "Bobby", "carol", "dave")


def test_a_nick_at_the_start_of_the_line_is_addressed() -> None:
    assert complete("ca", 2, NICKS) == Completion(0, 2, ("carol: ",))
    # Case is ignored; choices are sorted without regard to case.
    assert complete("BO", 2, NICKS) == Completion(0, 2, ("bob: ", "Bobby: "))


def test_a_nick_elsewhere_is_bare() -> None:
    assert complete("hi ca", 5, NICKS) == Completion(3, 5, ("carol",))
    assert complete("/pair bo", 8, NICKS) == Completion(6, 8, ("bob", "Bobby"))


def test_the_word_before_the_cursor_is_completed() -> None:
    assert complete("hi ca and more", 5, NICKS) == Completion(3, 5, ("carol",))


def test_at_nick_for_a_private_message() -> None:
    assert complete("@d", 2, NICKS) == Completion(0, 2, ("@dave ",))


def test_at_nick_elsewhere_is_a_mention() -> None:
    # docs/client.md: "@bo becomes @bob", anywhere in the line (no space
    # after it there: the sentence goes on).
    assert complete("thanks @bo", 10, NICKS) == Completion(7, 10, ("@bob", "@Bobby"))
    assert complete("thanks @D", 9, NICKS) == Completion(7, 9, ("@dave",))


def test_commands() -> None:
    assert complete("/pa", 3, NICKS) == Completion(0, 3, ("/pair ", "/passwd "))
    assert complete("/", 1, NICKS) == Completion(0, 1, tuple(f"/{c} " for c in COMMANDS))
    # In alphabetical order, as docs/client.md says Tab cycles.
    assert complete("/re", 3, NICKS) == Completion(0, 3, ("/reconnect ", "/register ", "/reject "))
    assert list(COMMANDS) == sorted(COMMANDS)
    assert complete("/USE", 4, NICKS) == Completion(0, 4, ("/users ",))
    # Only at the start of the line; // starts a message.
    assert complete("hi /pa", 6, NICKS) is None
    assert complete("//pa", 4, NICKS) is None


def test_nothing_to_complete() -> None:
    assert complete("zed", 3, NICKS) is None
    assert complete("anything", 8, ()) is None


def test_an_empty_word_offers_everyone() -> None:
    assert complete("", 0, NICKS) == Completion(
        0, 0, ("bob: ", "Bobby: ", "carol: ", "dave: ")
    )


@given(st.text(alphabet="ab /@"), st.data())
def test_choices_replace_only_the_word_before_the_cursor(line: str, data: st.DataObject) -> None:
    cursor = data.draw(st.integers(0, len(line)))
    found = complete(line, cursor, ("ab", "Abba", "b"))
    if found is not None:
        assert found.end == cursor and " " not in line[found.start : found.end]
        assert found.choices
