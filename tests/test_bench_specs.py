"""
The benchmark's columns of our server: which program each starts.  A column
run under another interpreter must start that venv's twistd, or its figures
are this interpreter's under another name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench import ab as bench_ab
from bench import run as bench_run
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


def test_interpreter_column_runs_from_its_workdir_with_a_relative_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server starts in a workdir of its own: a relative venv path
    named from here must still find that venv's twistd, not be resolved
    through the python's symlink to the system's."""
    monkeypatch.chdir(tmp_path)
    specs = server_specs(True, None, interpreters=["deb=venv/bin/python"])
    argv = _chat_argv("chat-deb", specs, tmp_path / "work")
    assert argv[0] == str(tmp_path / "venv" / "bin" / "twistd")


class _Ran(Exception):
    """The benchmark got past its arguments (it would start servers)."""


def _no_run() -> int:
    raise _Ran


# Marked bench, as test_docs asks of a bench test that calls a main: were
# the refusal gone, main would go on to start servers (stopped at _no_run).
@pytest.mark.bench
@pytest.mark.parametrize("module", [bench_run, bench_ab], ids=["run", "ab"])
@pytest.mark.parametrize("given", ["deb", "deb=", "=/tmp/venv/bin/python"])
def test_an_interpreter_without_name_or_python_is_refused_by_the_parser(
        module: Any, given: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused with a usage line, not a traceback when the column starts."""
    monkeypatch.setattr(module, "raise_nofile", _no_run)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--interpreter", given, "--servers", "chat"])
    assert exit_.value.code == 2
    assert "give NAME=PYTHON" in capsys.readouterr().err


def test_the_servers_run_in_the_order_given() -> None:
    """What ran before a server moves its figures: the order is the user's."""
    specs = server_specs(False, ["ngircd", "chat", "inspircd"])
    assert [s.key for s in specs] == ["ngircd", "chat", "inspircd"]


def test_an_unknown_server_is_named() -> None:
    with pytest.raises(ValueError, match="no server column ngirc in this run"):
        server_specs(False, ["chat", "ngirc"])


@pytest.mark.bench
def test_an_unknown_server_is_refused_by_the_parser(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a run of nothing: --quick has only our server's column."""
    monkeypatch.setattr(bench_run, "raise_nofile", lambda: 1024)
    with pytest.raises(SystemExit) as exit_:
        bench_run.main(["--quick", "--servers", "ngircd"])
    assert exit_.value.code == 2
    assert "no server column ngircd in this run (its columns: chat)" in capsys.readouterr().err
