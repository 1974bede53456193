"""
The twistd plugin is found: in the project's environment, and in a fresh
virtual environment after the two ways a user installs the project (a plain
``pip install ROOT``, and the README's editable install in strict mode).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import LineClient, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 300
# pytest-timeout's bound for a test that runs pip: a venv made and three pip
# runs at most, each under its own timeout, well past pyproject's default.
PIP_TEST_TIMEOUT = 120 + 3 * PIP_TIMEOUT
pytestmark = pytest.mark.timeout(PIP_TEST_TIMEOUT)
# The plugin line in twistd's list of commands.
LISTED = re.compile(r"^\s+chat\s+A chat/1 ", re.MULTILINE)


def run(command: list[str], timeout: float = 60, cwd: Path | None = None,
        stderr: bool = False, env: dict[str, str] | None = None) -> str:
    """Run C{command}, which must succeed; its stdout (and stderr, if asked).
    C{env}: variables to set for it, on top of this process's."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           **(env or {})}
    result = subprocess.run(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout + (result.stderr if stderr else "")


def test_twistd_lists_chat_in_the_project_environment(tmp_path):
    # Run from elsewhere: twistd must find the plugin through the install,
    # not through the current directory.
    twistd = str(Path(sys.executable).with_name("twistd"))
    assert LISTED.search(run([twistd, "--help"], cwd=tmp_path))
    options = run([twistd, "chat", "--help"], cwd=tmp_path)
    for option in ("--port", "--history", "--max-line", "--invite-timeout", "--max-clients",
                   "--show-addresses", "--server-name", "--flood-rate", "--flood-burst",
                   "--sendq", "--idle-timeout", "--ping-timeout", "--nick-timeout",
                   "--max-per-ip"):
        assert option in options


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {".venv", ".git", "__pycache__", "build", "dist", "_trial_temp", ".pytest_cache",
            ".mypy_cache", ".ruff_cache", ".hypothesis", "dropin.cache"}
    # .so: the C extension an editable install built in place; a copy is
    # what a clean checkout would be, so every install here builds its own.
    return {n for n in names
            if n in skip or n.endswith((".egg-info", ".sqlite3", ".log", ".so"))}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtual environment, and a copy of the project's tree to
    install from (so that building it writes nothing into the checkout)."""
    base = tmp_path_factory.mktemp("fresh")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_ignore)
    return venv, source


def check_install(venv: Path, source: Path, workdir: Path, *pip_args: str) -> None:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "uninstall", "--yes", "twisted-chat"], timeout=PIP_TIMEOUT)
    said = run([*pip, "install", *pip_args], timeout=PIP_TIMEOUT, cwd=workdir, stderr=True)
    # Neither setuptools nor pip finds anything of ours deprecated.
    assert not re.search(r"deprecat", said, re.I), said
    twistd = venv / "bin" / "twistd"
    assert LISTED.search(run([str(twistd), "--help"], cwd=workdir))
    # And it runs: a real server from that environment says HELLO.
    server = ServerProcess(workdir, twistd=str(twistd)).start()
    try:
        client = LineClient(server.port)
        try:
            assert client.readline().startswith("HELLO chat/1 ")
            assert client.register("fresh") == ["USER fresh lobby", "USERS 1"]
        finally:
            client.close()
    finally:
        server.kill()


@pytest.mark.e2e
def test_fresh_install_lists_chat(fresh_venv, tmp_path):
    venv, source = fresh_venv
    check_install(venv, source, tmp_path, str(source))
    # A real install: the plugin file lives in the environment.
    plugins = list((venv / "lib").glob("python3*/site-packages/twisted/plugins/"
                                       "twisted_chat_plugin.py"))
    assert plugins, "the plugin module was not installed"
    # The web client's page is package data: it ships in the wheel.
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):
        assert list((venv / "lib").glob(
            f"python3*/site-packages/twisted_chat/web/static/{name}")), name


@pytest.mark.e2e
def test_fresh_editable_strict_install_lists_chat(fresh_venv, tmp_path):
    venv, source = fresh_venv
    check_install(venv, source, tmp_path, "-e", str(source),
                  "--config-settings", "editable_mode=strict")
    # An editable install: the code is the source tree's, not a copy.
    out = run([str(venv / "bin" / "python"), "-c",
               "import twisted_chat; print(twisted_chat.__file__)"], cwd=tmp_path)
    assert Path(out.strip()).resolve().is_relative_to(source.resolve())
