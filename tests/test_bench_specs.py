"""
The benchmark's columns of our server: which program each starts.  A column
run under another interpreter must start that venv's twistd, or its figures
are this interpreter's under another name.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.run import server_specs


def _chat_argv(key: str, specs: list, tmp_path: Path) -> list[str]:
    spec = next(s for s in specs if s.key == key)
    return spec.argv(7000, tmp_path)


def test_chat_runs_this_interpreters_twistd(tmp_path: Path) -> None:
    specs = server_specs(True, None)
    assert _chat_argv("chat", specs, tmp_path)[0] == str(
        Path(sys.executable).with_name("twistd"))


def test_interpreter_column_runs_that_venvs_twistd(tmp_path: Path) -> None:
    other = tmp_path / "venv" / "bin" / "python"
    specs = server_specs(True, None, interpreters=[f"deb={other}"])
    argv = _chat_argv("chat-deb", specs, tmp_path)
    assert argv[0] == str(other.with_name("twistd"))
    # the same server options as the chat column: only the interpreter differs
    assert argv[1:] == _chat_argv("chat", specs, tmp_path)[1:]


def test_interpreter_column_is_unavailable_without_its_twistd(tmp_path: Path) -> None:
    specs = server_specs(True, None, interpreters=[f"deb={tmp_path / 'bin' / 'python'}"])
    spec = next(s for s in specs if s.key == "chat-deb")
    assert spec.available() == "no twistd beside the interpreter"
