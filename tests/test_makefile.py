"""
The Makefile redoes the install when anything it builds from changes (the
install is what builds the C send loop: a stale one would be what `make
test` tests), and `make clean` leaves no built extension behind.  Run in a
copy of what the Makefile reads, with a stand-in for the venv's python that
only writes down how it was called: nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from tests.test_plugin_install import ROOT, _ignore

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


class Tree:
    def __init__(self, base: Path) -> None:
        self.root = base / "src"
        self.root.mkdir()
        shutil.copy(ROOT / "Makefile", self.root)
        for name in ("pyproject.toml", "setup.py"):
            shutil.copy(ROOT / name, self.root)
        for name in ("scripts", "twisted_chat", "twisted"):
            shutil.copytree(ROOT / name, self.root / name, ignore=_ignore)
        (self.root / ".venv").mkdir()  # what scripts/mkvenv.py would make (PYTHON=true)
        self.calls = base / "calls"
        python = base / "bin" / "python"
        python.parent.mkdir()
        python.write_text(f'#!/bin/sh\necho "$@" >> {self.calls}\n')
        python.chmod(0o755)
        for tool in ("ruff", "mypy"):  # make lint's, likewise
            stand_in = python.parent / tool
            stand_in.write_text(f'#!/bin/sh\necho "{tool} $@" >> {self.calls}\n')
            stand_in.chmod(0o755)

    def make(self, *targets: str) -> list[str]:
        """Run make; the stand-in python's calls (pip's), one a line."""
        self.calls.unlink(missing_ok=True)
        assert MAKE is not None
        subprocess.run([MAKE, "-s", *targets, "PYTHON=true", f"BIN={self.calls.parent / 'bin'}"],
                       cwd=self.root, check=True, stdin=subprocess.DEVNULL, timeout=60)
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def age(self) -> None:
        """Every file an hour old but the install's stamp: all up to date."""
        old = time.time() - 3600
        for path in self.root.rglob("*"):
            os.utime(path, (old, old), follow_symlinks=False)
        stamp = self.root / ".venv" / ".installed-stamp"
        os.utime(stamp, (old + 60, old + 60))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    tree = Tree(tmp_path)
    assert any("pip install" in call for call in tree.make("venv")), "the first install"
    tree.age()
    assert tree.make("venv") == [], "nothing changed: no install"
    return tree


@pytest.mark.parametrize("changed", ["setup.py", "twisted_chat/server/output/_sendmany.c",
                                     "pyproject.toml"])
def test_a_change_to_what_the_build_reads_redoes_the_install(tree: Tree, changed: str) -> None:
    (tree.root / changed).touch()
    assert any("pip install -q -e" in call for call in tree.make("venv"))


def test_clean_removes_the_built_extension(tree: Tree) -> None:
    output = tree.root / "twisted_chat" / "server" / "output"
    built = output / ("_sendmany" + sysconfig.get_config_var("EXT_SUFFIX"))
    built.write_bytes(b"")
    tree.make("clean")
    assert not built.exists()
    assert (output / "_sendmany.c").exists()


def test_lint_type_checks_the_package_and_bench_in_one_mypy(tree: Tree) -> None:
    """One process, one cache: what the two share (twisted_chat, which
    bench imports) is checked once.  CI runs this very target."""
    assert tree.make("lint") == ["ruff check twisted_chat tests bench",
                                 "mypy twisted_chat bench"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make lint" in ci
    assert not [line for line in ci if line.startswith((".venv/bin/mypy", ".venv/bin/ruff"))]
