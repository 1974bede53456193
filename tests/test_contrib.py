"""
contrib/twisted-chat.service, the example systemd unit: hardened as the
README says, its C{twistd} command line one the server accepts, and (where
systemd's tools are installed) a unit systemd itself accepts.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twisted_chat.server.service import Options

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "twisted-chat.service"


def settings() -> dict[str, str]:
    """The unit's C{[Service]} keys (continuation lines joined)."""
    text = UNIT.read_text().replace("\\\n", " ")
    section, found = "", {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            if key in found and key in ("SystemCallFilter",):
                value = found[key] + " " + value
            found[key] = value
    return found


def test_the_unit_is_hardened() -> None:
    unit = settings()
    expected = {
        "DynamicUser": "yes", "StateDirectory": "twisted-chat", "ProtectSystem": "strict",
        "NoNewPrivileges": "yes", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    assert {key: unit.get(key) for key in expected} == expected


def test_the_command_line_is_twistd_n_and_one_the_server_accepts() -> None:
    argv = shlex.split(settings()["ExecStart"].replace("%S", "/var/lib"))
    assert argv[0].endswith("/twistd") and argv[1] == "-n"
    chat = argv.index("chat")
    assert "--pidfile=" in argv[1:chat]
    options = Options()
    options.parseOptions(argv[chat + 1:])  # raises UsageError if not
    config = options.config()
    # The history lives in the state directory, the only place it may write.
    assert config.db == "/var/lib/twisted-chat/chat.sqlite3"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify wants the ExecStart program to exist: point it at ours.
    twistd = str(Path(sys.executable).with_name("twistd"))
    unit = tmp_path / "twisted-chat.service"
    unit.write_text(UNIT.read_text().replace("/opt/twisted-chat/bin/twistd", twistd))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
