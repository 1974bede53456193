"""
twistd's privilege drop (C{twistd --uid U --gid G chat ...}, started as
root): the files the server makes are made as the user it will run as.

twistd runs L{twisted_chat.server.service.makeService} as root, then binds
the ports (C{privilegedStartService}, still root: a port below 1024, a
root-only TLS key), then sheds privileges and starts the service.  The
history database, the accounts file and the log file are made in
C{makeService}; made as root (mode 0600), the server could not open them
once it ran as U, and every later start failed on the files the first one
left behind.  L{as_runner} makes them as U and G instead (the effective
ids only, given back at once): the files are U's, and a folder U cannot
write, or a file left by root, is the usual one-line start-up error, before
anything is left behind, with L{Runner.note} saying which user it was for.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@dataclasses.dataclass(frozen=True)
class Runner:
    """The user and group twistd will run the server as, once started."""

    uid: int
    gid: int

    def note(self) -> str:
        """What an error about a file says of why it is this user's."""
        return (f" (twistd --uid {self.uid} --gid {self.gid}: the server makes and uses "
                "its files as that user, who must be able to write them and their folder)")


def note(who: Runner | None) -> str:
    """What an error about a file adds for C{who} (L{Runner.note}), or
    nothing: no switch (L{runner})."""
    return who.note() if who is not None else ""


def runner(twistd: Any) -> Runner | None:
    """
    Whom twistd (its options C{twistd}) will switch to after start-up, as
    its C{startApplication} works it out (a C{--uid} without C{--gid}: that
    user's group), or C{None}: no switch that changes who owns a file (not
    root, no C{--uid}/C{--gid}, or the ids are root's own).

    @raise SystemExit: a C{--uid} without C{--gid} that names no user
        (twistd itself would stop on it with a traceback).
    """
    if os.geteuid() != 0:
        return None  # not root: twistd's switch (if any) fails by itself, or changes nothing
    try:
        uid, gid = twistd["uid"], twistd["gid"]
    except (KeyError, TypeError):
        return None  # not twistd's options (a test)
    if not uid:
        return None  # root still (a --gid alone changes no file's owner that matters)
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            raise SystemExit(f"twistd chat: --uid {uid} names no user: give --gid too") from None
    return Runner(uid, gid)


@contextmanager
def as_runner(who: Runner | None) -> Iterator[None]:
    """
    Within, files are made and opened as C{who} (effective uid, gid and
    groups; the real ones stay root's, so they are given back after).
    C{None}: as now.
    """
    if who is None:
        yield
        return
    groups, egid, euid = os.getgroups(), os.getegid(), os.geteuid()
    try:
        name = _name(who.uid)
        os.setgroups(os.getgrouplist(name, who.gid) if name is not None else [who.gid])
        os.setegid(who.gid)
        os.seteuid(who.uid)
        yield
    finally:
        os.seteuid(euid)
        os.setegid(egid)
        os.setgroups(groups)


def _name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
