"""
Shipping (issue 17, part 5): the standard C{python -m build} makes a wheel
and an sdist, without setuptools' deprecation warnings; the wheel installed
into a fresh virtual environment has C{twistd} list C{chat}, the client
runs, and the web page's files are there whenever the source tree has them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.test_plugin_install import LISTED, PIP_TEST_TIMEOUT, PIP_TIMEOUT, ROOT, _ignore, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(PIP_TEST_TIMEOUT)]

WEB = ROOT / "twisted_chat" / "web"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The wheel and the sdist built from a copy of the tree, and what the
    build printed."""
    base = tmp_path_factory.mktemp("build")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_ignore)
    dist = base / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PIP_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (wheel,) = dist.glob("twisted_chat-*.whl")
    (sdist,) = dist.glob("twisted_chat-*.tar.gz")
    return wheel, sdist, output


def test_build_warns_of_nothing(built: tuple[Path, Path, str]) -> None:
    """No deprecation, and no other setuptools warning (a package "that
    would be ignored", say); byte-compiling being off here is not ours."""
    _wheel, _sdist, output = built
    noise = [line for line in output.splitlines()
             if re.search(r"deprecat|^warning\b|\w+Warning\b", line, re.I)
             and "byte-compiling is disabled" not in line]
    assert noise == []


def test_the_wheel_has_the_package_and_the_plugin_only(built: tuple[Path, Path, str]) -> None:
    wheel, _sdist, _output = built
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/twisted_chat_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names  # Twisted's namespace
    # Every module of the source tree (the packages are listed by hand in
    # pyproject.toml: a new subpackage left out of the list would be missing).
    modules = sorted(p.relative_to(ROOT).as_posix()
                     for p in (ROOT / "twisted_chat").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert [m for m in modules if m not in names] == []
    # The license pyproject.toml names travels with the wheel.
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/"))]
    assert not [n for n in names if n.endswith(".c")], "C sources belong in the sdist only"


def test_the_sdist_has_what_a_packager_needs(built: tuple[Path, Path, str]) -> None:
    _wheel, sdist, _output = built
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "twisted/plugins/twisted_chat_plugin.py",
                   "twisted_chat/server/service.py", "contrib/twisted-chat.service",
                   "docs/protocol.md", "docs/metrics.md", "LICENSE",
                   "setup.py", "twisted_chat/server/output/_sendmany.c"):
        assert needed in names, needed


def test_the_wheel_in_a_fresh_venv(built: tuple[Path, Path, str], tmp_path: Path) -> None:
    wheel, _sdist, _output = built
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "--disable-pip-version-check", "install", "-q", str(wheel)],
        timeout=PIP_TIMEOUT, cwd=tmp_path)
    # twistd finds the plugin (run from elsewhere: through the install only).
    assert LISTED.search(run([str(venv / "bin" / "twistd"), "--help"], cwd=tmp_path))
    assert "--metrics" in run([str(venv / "bin" / "twistd"), "chat", "--help"], cwd=tmp_path)
    # The client runs.
    usage = run([python, "-m", "twisted_chat.client", "--help"], cwd=tmp_path)
    assert "usage" in usage.lower() and "--nick" in usage
    # The web page: checked whenever the source tree has the web package
    # (and then every file of it must be installed), else it must not be there.
    installed = Path(run([python, "-c", "import twisted_chat, os; "
                          "print(os.path.dirname(twisted_chat.__file__))"],
                         cwd=tmp_path).strip())
    if WEB.is_dir():
        wanted = sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
        assert wanted, "twisted_chat/web is empty"
        missing = [name for name in wanted if not (installed / "web" / name).is_file()]
        assert missing == []
    else:
        assert not (installed / "web").exists()


def test_a_strict_editable_install_without_a_c_compiler(tmp_path: Path) -> None:
    """The C send loop is optional: with no working C compiler (CC=false;
    missing Python headers fail the same compile) the strict editable
    install, `make venv`'s, still succeeds (setuptools once failed it,
    linking a built file that did not exist) and the server's package
    imports with the loop in Python (send_many is send_each)."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_ignore)  # without the checkout's built .so
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "--disable-pip-version-check", "install", "-q",
         "-e", str(source), "--config-settings", "editable_mode=strict"],
        timeout=PIP_TIMEOUT, cwd=tmp_path, env={"CC": "false"})
    output = source / "twisted_chat" / "server" / "output"
    built = sorted(p.name for p in output.glob("_sendmany*"))
    assert built == ["_sendmany.c", "_sendmany.pyi"], "nothing was compiled"
    said = run([python, "-c", "from twisted_chat.server.output import sendqueue; "
                "print(sendqueue.send_many is sendqueue.send_each); print(sendqueue.__file__)"],
               cwd=tmp_path)
    loop, where = said.split()
    assert loop == "True"
    assert Path(where).resolve().is_relative_to(source.resolve()), "the editable install's"
