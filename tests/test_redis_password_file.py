"""
C{--redis-password-file}: Redis's password read from a file, kept out of
the command line that every local user can read (C{/proc/PID/cmdline}, a
unit file); the server's and the accounts tool's (rev12 newuser #5).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LineClient, ServerProcess
from twisted_chat.server.cluster.redisconn import parse_url, with_password_file
from twisted_chat.server.service import Options, makeService

SECRET = "s3cret:/pw"


def password_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_first_line_of_the_file_is_the_password(tmp_path: Path) -> None:
    target = parse_url("redis://127.0.0.1:6379/2")
    read = with_password_file(target, str(password_file(tmp_path, SECRET + "\n")))
    assert read.password == SECRET
    assert (read.endpoint, read.db, read.display) == (target.endpoint, 2, target.display)
    assert with_password_file(target, None) is target
    crlf = with_password_file(target, str(password_file(tmp_path, "pw\r\nsecond line\n")))
    assert crlf.password == "pw"


@pytest.mark.parametrize(("url", "content", "why"), [
    ("redis://:pw@h/0", "pw\n", "the URL gives a password too"),
    ("redis://h/0?password=pw", "pw\n", "the URL gives a password too"),
    ("redis://h/0", "\nsecond\n", "is empty"),
    ("redis://h/0", "", "is empty"),
    ("redis://h/0", None, "cannot read the password file"),
])
def test_a_password_file_that_cannot_be_used_stops_the_start(
        tmp_path: Path, url: str, content: str | None, why: str) -> None:
    path = tmp_path / "redis-password"
    if content is not None:
        path.write_text(content)
    options = Options()
    options.parseOptions(["--redis", url, "--redis-password-file", str(path)])
    with pytest.raises(SystemExit) as e:
        makeService(options)
    message = str(e.value)
    assert message.startswith("twistd chat: --redis-password-file: "), message
    assert why in message and "\n" not in message


def test_the_password_file_is_for_cluster_mode_only(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--redis-password-file is for cluster mode"):
        Options().parseOptions(["--redis-password-file", str(tmp_path / "pw")])


def test_the_accounts_tool_checks_its_password_file_before_connecting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_chat.accounts", "list", "--redis",
         "redis://:pw@127.0.0.1:1/0", "--redis-password-file", str(tmp_path / "pw")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--redis-password-file: the URL gives a password too" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_node_and_the_tool_reach_a_redis_with_requirepass(tmp_path: Path) -> None:
    """The password only in the file: the node logs in to Redis (a nick is
    registered), its command line does not hold the password, nor its
    log; the accounts tool, given the same file, reaches the same Redis."""
    redis = RedisServer(tmp_path, password=SECRET, persist=False).start()
    try:
        secret = password_file(tmp_path, SECRET + "\n")
        url = redis.url.replace(f":{SECRET}@", "")
        assert SECRET not in url
        node = ServerProcess(tmp_path, ["--redis", url, "--redis-password-file",
                                        str(secret)]).start()
        client = None
        try:
            node.wait_log("cluster: connected to")
            client = LineClient(node.port)
            assert client.register("alice")[-1] == "USERS 1"
            cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes()
            assert b"redis-password" in cmdline and SECRET.encode() not in cmdline
            assert SECRET not in node.log()
        finally:
            if client is not None:
                client.close()
            node.stop()
        tool = [sys.executable, "-m", "twisted_chat.accounts"]
        added = subprocess.run(
            [*tool, "add", "--redis", url, "--redis-password-file", str(secret), "bob"],
            input="a-long-password\n", capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        listed = subprocess.run(
            [*tool, "list", "--redis", url, "--redis-password-file", str(secret)],
            capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "bob" in listed.stdout
        # Without the password, Redis refuses the tool: the file is what let it in.
        refused = subprocess.run([*tool, "list", "--redis", url],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
    finally:
        redis.stop()
