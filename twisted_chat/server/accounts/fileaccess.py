"""
Why this process may not use the accounts file, by the Unix owners and
modes of the file and its folder, in words naming both users
(docs/accounts.md, "Where accounts live").
"""

from __future__ import annotations

import os

__all__ = ["access_problem", "describe_user"]


def describe_user(uid: int) -> str:
    """C{alice (uid 1000)}, or C{uid 1000} for a number with no name."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _allows(st: os.stat_result, need: int, uid: int, groups: set[int]) -> bool:
    """Whether the mode of C{st} gives C{need} (of 4 read, 2 write, 1
    search) to a process of C{uid} and C{groups} that is not root."""
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def access_problem(path: str) -> str | None:
    """
    Why this process may not use the accounts file C{path}, by the owners
    and modes of the file and its folder (SQLite reads and writes the file,
    and makes its journal in the folder), in words naming both users; or
    C{None} when they allow it, or cannot be looked at.  Root is allowed
    everything.
    """
    uid = os.geteuid()
    if uid == 0:
        return None
    groups = {os.getegid(), *os.getgroups()}
    folder = os.path.dirname(os.path.abspath(path))
    for target, need, what in ((folder, 3, "folder"), (path, 6, "file")):
        try:
            st = os.stat(target)
        except OSError:
            continue
        if not _allows(st, need, uid, groups):
            return (f"permission denied: the {what} {target} is owned by "
                    f"{describe_user(st.st_uid)}, mode {st.st_mode & 0o7777:04o}, and this "
                    f"process runs as {describe_user(uid)}; the server's user must be able "
                    "to read and write both the file and its folder (chown them to it)")
    return None
