"""
twistd's C{--pidfile}, checked at start-up.  twistd writes it itself, once
the server has started (as a daemon, after the fork), where a folder that
is not there was a C{FileNotFoundError}'s traceback; now it is one line
before anything is made, as a bad C{--logfile} is.
"""

from __future__ import annotations

import errno
import os
from typing import Any


def problem(twistd: Any) -> str | None:
    """
    Why twistd could not write its C{--pidfile}, as one line naming the
    option, or C{None}: it can, there is none, or C{--chroot} puts it
    somewhere not looked at here.  C{twistd} is twistd's options (the
    plugin's C{parent}), or C{None} when there is no twistd (the tests).
    """
    if twistd is None or not twistd.get("pidfile") or twistd.get("chroot"):
        return None
    path = os.path.abspath(twistd["pidfile"])
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        code = errno.ENOTDIR if os.path.exists(folder) else errno.ENOENT
        why = f"{os.strerror(code)} (its folder {folder} must exist first)"
    elif os.path.isdir(path):
        why = os.strerror(errno.EISDIR)
    elif not os.access(path if os.path.exists(path) else folder, os.W_OK):
        why = os.strerror(errno.EACCES)
    else:
        return None
    return f"twistd chat: cannot write --pidfile {path}: {why}"
