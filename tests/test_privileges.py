"""
twisted_chat.server.ports.privileges without switching users (rev15-mut F1, F4):
whom twistd's C{--uid}/C{--gid} will run the server as, and the ids and
groups the files are made with, on stand-ins for C{pwd} and the C{os}
calls.  (The real switch, as root: tests/test_e2e_privileges.py.)
"""

from __future__ import annotations

import pwd
from typing import Any

import pytest

from twisted_chat.server.ports import privileges
from twisted_chat.server.ports.privileges import Runner, as_runner, runner

USER = pwd.struct_passwd(("chat", "x", 4242, 77, "", "/nonexistent", "/usr/sbin/nologin"))


@pytest.fixture
def users(monkeypatch: pytest.MonkeyPatch) -> dict[int, pwd.struct_passwd]:
    """Root's view: the effective uid is 0; the users are these alone."""
    known = {USER.pw_uid: USER}

    def getpwuid(uid: int) -> pwd.struct_passwd:
        return known[uid]  # KeyError, as pwd's, for no such user

    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    monkeypatch.setattr(privileges.pwd, "getpwuid", getpwuid)
    return known


def test_a_uid_without_gid_runs_as_the_user_s_own_group(users: Any) -> None:
    """twistd's own rule: --uid alone means that user's primary group (77),
    not a group numbered as the uid."""
    assert runner({"uid": 4242, "gid": None}) == Runner(4242, 77)
    assert runner({"uid": 4242, "gid": 5}) == Runner(4242, 5)


def test_a_uid_without_gid_that_names_no_user_is_one_line(users: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        runner({"uid": 4242424, "gid": None})
    assert str(stopped.value) == "twistd chat: --uid 4242424 names no user: give --gid too"
    assert runner({"uid": 4242424, "gid": 9}) == Runner(4242424, 9)  # with --gid: no look-up


class Calls:
    """The process's ids and groups, as the os calls see and change them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[tuple[str, Any]] = []
        self.groups, self.egid, self.euid = [0, 3], 0, 0
        for name in ("getgroups", "getegid", "geteuid"):
            monkeypatch.setattr(privileges.os, name, getattr(self, name))
        for name in ("setgroups", "setegid", "seteuid"):
            monkeypatch.setattr(privileges.os, name, self.recorder(name))
        monkeypatch.setattr(privileges.os, "getgrouplist", self.getgrouplist)

    def getgroups(self) -> list[int]:
        return list(self.groups)

    def getegid(self) -> int:
        return self.egid

    def geteuid(self) -> int:
        return self.euid

    def getgrouplist(self, name: str, gid: int) -> list[int]:
        assert (name, gid) == ("chat", 77)
        return [77, 500, 501]  # its primary group, then those it is a member of

    def recorder(self, name: str) -> Any:
        def call(value: Any) -> None:
            self.made.append((name, value))
        return call


def test_the_files_are_made_with_the_user_s_supplementary_groups(
        users: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder the user may write only through a group it is a member of
    (a shared data group) is writable within, as it is to the server once
    it runs as the user; after, root's ids and groups are back."""
    calls = Calls(monkeypatch)
    with as_runner(Runner(4242, 77)):
        assert calls.made == [("setgroups", [77, 500, 501]), ("setegid", 77), ("seteuid", 4242)]
    assert calls.made[3:] == [("seteuid", 0), ("setegid", 0), ("setgroups", [0, 3])]


def test_a_uid_that_names_no_user_has_its_group_alone(
        users: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)
    with pytest.raises(OSError), as_runner(Runner(4242424, 9)):
        assert calls.made == [("setgroups", [9]), ("setegid", 9), ("seteuid", 4242424)]
        raise OSError("cannot create the database")
    assert calls.made[3:] == [("seteuid", 0), ("setegid", 0), ("setgroups", [0, 3])]


def test_no_runner_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(monkeypatch)
    with as_runner(None):
        pass
    assert calls.made == []
