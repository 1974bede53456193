"""
The server's log: one level for all its loggers (C{--log-level}, default
C{info}), and a limiter for lines an address can cause over and over.

Every module of the server and of its web gateway makes its logger with
L{logger} (tests/test_logs.py checks); those loggers emit through
L{observer}, a level filter in front of Twisted's global log, so the level
applies to the server's lines whatever twistd's own log settings are (twistd
writes every level it is given, debug included); L{twistds_log} makes
the observer twistd would make, behind the same filter, given to twistd as
the application's C{ILogObserver} (its supported hook), so that the level
applies to Twisted's own lines too.

L{Repeats} keeps an address's repeated lines (a refused reconnect loop, a
flood of sendq drops) from filling the log: per (address, kind) at most
C{burst} lines per C{window} seconds; the next line let through after a
quiet says how many were left out.

L{Throttle} does the same for one line the server itself may repeat (a
bound reached over and over): at most one every so many seconds, with how
many were left out since the last.

L{quote} is how a line quotes what a peer sent (a header, a reason that
quotes one): escaped, and clipped to L{QUOTE_LIMIT} characters, so that a
peer cannot put a line break, or 16 KB of its own text, in the log.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = ("debug", "info", "warn", "error", "critical")
DEFAULT_LEVEL = "info"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(DEFAULT_LEVEL))
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def counted(n: int, noun: str) -> str:
    """C{n} and C{noun}, plural unless C{n} is 1: a log line says "1 port",
    not "1 ports"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# Characters of a peer's text (escaped) a log line quotes at most.
QUOTE_LIMIT = 100


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """
    C{text}, sent by a peer, as a log line quotes it: its C{repr} (control
    characters and line breaks escaped), at most C{limit} characters of
    that, and, if cut, C{...} and how long C{text} was.
    """
    quoted = repr(text)
    if len(quoted) <= limit:
        return quoted
    return f"{quoted[:limit]}... ({len(text)} characters)"


def set_level(name: str) -> None:
    """Log the server's lines at C{name} (one of L{LEVELS}) and above."""
    _predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))


#: The mode of the log files (L{rotated_log_file}).
LOG_MODE = 0o600

#: Rotated log files daemon mode keeps by default (C{--log-keep}).
DEFAULT_KEEP = 10


def rotated_log_file(path: str, keep: int) -> Any:
    """
    The log file C{path} (a regular file, or none yet: L{rotates}) as a
    Twisted C{LogFile} that keeps at most C{keep} rotated files (C{FILE.1}
    to C{FILE.keep}, the oldest deleted; 0: every one, twistd's own way).
    twistd's rotates every 1,000,000 bytes and deletes nothing, so the
    files, which hold every message with C{--log-messages}, would pile up
    for ever.  It rotates as twistd's does, every 1,000,000 bytes, and on
    SIGUSR1 (ports/rotating.py).

    The file, and each one a rotation makes, is made readable by the
    server's user only (0600, whatever the umask; an existing file is
    changed to it, and so are the rotated files already there, which an
    earlier version left 0644), as the history database is: the log holds
    every user's address, and with C{--log-messages} every private
    message.
    """
    log_file = RotatedLogFile.fromFullPath(  # type: ignore[no-untyped-call]
        path, maxRotatedFiles=keep or None, defaultMode=LOG_MODE)
    # Twisted's LogFile changes only the live file's mode.
    for number in log_file.listLogs():
        rotated = f"{log_file.path}.{number}"
        try:
            # lstat: a link is left alone (chmod would change what it names).
            if stat.S_ISREG(os.lstat(rotated).st_mode):
                os.chmod(rotated, LOG_MODE)
        except FileNotFoundError:
            pass  # removed since it was listed (a log cleaner): nothing to hide
    return log_file


def rotates(path: str) -> bool:
    """
    Whether C{--logfile path} is a log file to rotate: a regular file
    (links followed), or none yet (one is made).  Not a device
    (C{/dev/null}), a FIFO, or C{/dev/stderr}'s terminal or pipe: a
    rotation would rename the node to C{NAME.1} and make a regular file,
    mode copied from it (0666 for C{/dev/null}), in its place.  Nor a
    file no path names any more (C{/dev/stderr} onto a deleted file): its
    L{os.path.realpath}, which L{twistds_log} rotates, is another file.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return True
    real = os.path.realpath(path)
    return stat.S_ISREG(mode) and os.path.exists(real) and os.path.samefile(real, path)


class TwistdsLog(NamedTuple):
    """Where the server logs in place of twistd (L{twistds_log})."""

    #: The application's observer; C{None}: leave it to twistd.
    observer: ILogObserver | None
    #: What the log goes to, as a log line names it.
    where: str
    #: The log file SIGUSR1 rotates (a Twisted C{LogFile}); C{None}: none.
    rotating: Any = None


def twistds_log(twistd: Any, keep: int) -> TwistdsLog:
    """
    The observer twistd would log to, as its C{_getLogObserver} makes it
    from its options C{twistd}, behind the server's level filter, so that
    C{--log-level} applies to Twisted's and twistd's own lines too (its
    start-up lines, "Received SIGTERM", a factory's "Starting factory"):
      - its log file (C{--logfile FILE}, or C{twistd.log} when it
        daemonizes without one), keeping C{keep} rotated files
        (L{rotated_log_file}, C{--log-keep}; through a link, the file it
        names is rotated, the link left alone); a path that is not a
        regular file (L{rotates}: C{/dev/null}, a FIFO) is written to as
        it is, never rotated nor changed;
      - stdout with C{-n} and no C{--logfile}, or C{--logfile=-};
      - syslog with C{--syslog}.
    It is for the application's C{ILogObserver} component, which twistd
    uses in place of its own (C{AppLogger.start}).  C{None}: leave it to
    twistd, where
      - C{--logger} names the operator's observer (it would take precedence
        over the component anyway; Twisted's lines reach it unfiltered, the
        server's still filtered);
      - C{--logfile=-} without C{-n}: twistd then refuses to daemonize onto
        stdout, as it should;
      - C{twistd} is not what parsed the options (a test).
    The only reader of twistd's log options.
    """
    try:
        if twistd["logger"]:
            return TwistdsLog(None, "the --logger observer")
        if twistd["syslog"]:
            from twisted.python import syslog

            emit: Any = syslog.SyslogObserver(twistd["prefix"]).emit  # type: ignore[no-untyped-call]
            return TwistdsLog(filtering(LegacyLogObserverWrapper(emit)), "syslog")
        name, nodaemon = twistd["logfile"], twistd["nodaemon"]
    except (KeyError, TypeError):
        return TwistdsLog(None, "twistd's observer")
    if name == "-" or (nodaemon and not name):
        return TwistdsLog(filtering(textFileLogObserver(sys.stdout)) if nodaemon else None,
                          "stdout")
    path = name or "twistd.log"
    if not rotates(path):
        # As a shell's `>> path` would: no rotation, no mode of its own.
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open while the server logs)
        return TwistdsLog(filtering(textFileLogObserver(stream)),
                          f"{path}, not a regular file")
    # The file a link names, so that a rotation renames it, not the link
    # (/dev/stderr when stderr is a file: a rename in /dev).
    log_file = rotated_log_file(os.path.realpath(path), keep)
    return TwistdsLog(filtering(textFileLogObserver(log_file)), path, log_file)


def filtering(observer: ILogObserver) -> ILogObserver:
    """C{observer} behind the server's level filter."""
    return FilteringLogObserver(observer, [_predicate])


def level() -> str:
    return str(_predicate.logLevelForNamespace("").name)


def logger(namespace: str | None = None) -> Logger:
    """
    A logger whose lines pass the server's level filter.  Without
    C{namespace} it is the calling module's name (Twisted's own default would
    name this module); as a class attribute it becomes C{module.Class}.
    """
    if namespace is None:
        namespace = str(sys._getframe(1).f_globals.get("__name__", "<unknown>"))
    return Logger(namespace=namespace, observer=observer)


class Repeats:
    """
    Per key, at most C{burst} lines in any C{window} seconds.  Bounded: at
    most C{max_keys} keys are remembered (the least recently used go).
    """

    def __init__(self, clock: Any, window: float = 10.0, burst: int = 3,
                 max_keys: int = 10_000) -> None:
        self.clock = clock
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        # key -> [window start, lines logged in it, lines left out since the last logged]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def allow(self, address: str, kind: str) -> int | None:
        """
        Whether to log a line: C{None} to leave it out, else how many lines
        of this kind from this address were left out before it.
        """
        now = self.clock.seconds()
        key = (address, kind)
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.window:
            left_out = 0 if seen is None else int(seen[2])
            self._seen[key] = [now, 1.0, 0.0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return left_out
        self._seen.move_to_end(key)
        if seen[1] < self.burst:
            seen[1] += 1
            left_out = int(seen[2])
            seen[2] = 0
            return left_out
        seen[2] += 1
        return None

    def within(self, address: str, kind: str) -> bool:
        """L{allow} as a yes or no: whether one more of this kind from this
        address is within the burst (it is counted if so)."""
        return self.allow(address, kind) is not None

    def log(self, log: Logger, level: LogLevel, address: str, kind: str,
            fmt: str, /, **kwargs: Any) -> None:
        """C{log.emit(level, fmt, ...)} unless it is one repeat too many
        (positional: C{fmt} may name an C{address} of its own)."""
        left_out = self.allow(address, kind)
        if left_out is None:
            return
        if left_out:
            fmt += " ({left_out} similar lines from this address left out)"
        log.emit(level, fmt, left_out=left_out, **kwargs)


class Throttle:
    """
    One log line that may come over and over (a bound reached again and
    again), written at most once in C{every} seconds: L{allow} says
    whether it is due, and counts the times it is not.
    """

    __slots__ = ("_last", "_left_out", "every")

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -math.inf  # when it was last written
        self._left_out = 0  # the times since then it was not

    def allow(self, now: float) -> int | None:
        """Whether to write the line at C{now}: C{None} to leave it out
        (counted), else how many times it was left out before this one."""
        if now - self._last < self.every:
            self._left_out += 1
            return None
        self._last = now
        left_out, self._left_out = self._left_out, 0
        return left_out


#: Seconds between two warnings that the log file cannot be rotated.
UNROTATED_EVERY = 3600.0

#: Seconds before a rotation or reopen that failed is tried again by size.
RETRY_EVERY = 60.0


def rotation_refused(path: str) -> str | None:
    """
    Why Twisted's C{LogFile} would not rotate C{path} now, or C{None}: it
    skips a rotation, without a word, unless this process may write to
    both the file's directory and the file (C{os.access}, as it asks: the
    real user, after twistd's C{--uid}).
    """
    directory = os.path.dirname(os.path.abspath(path))
    for what, name in (("its directory", directory), ("the file", path)):
        if not os.access(name, os.W_OK):
            state = (f"is not writable by the server's user (uid {os.getuid()})"
                     if os.path.exists(name) else "no longer exists")
            return f"{what} {name} {state}"
    return None


class RotatedLogFile(LogFile):
    """
    Twisted's C{LogFile}, which says when it cannot rotate (L{can_rotate}):
    Twisted's skips the rotation silently (L{rotation_refused}: the log in
    C{/var/log} after C{--uid}), and the file grew on past what
    C{--log-keep} implies with nothing said.  A rotation or reopen that
    failed is tried again by size at most every L{RETRY_EVERY} s
    (L{shouldRotate}), the log going on in the file it has meanwhile.
    """

    log = logger()

    def __init__(self, name: str, directory: str, **options: Any) -> None:
        super().__init__(name, directory, **options)  # type: ignore[no-untyped-call]
        self.unrotated_warning = Throttle(UNROTATED_EVERY)
        self.unreopened_warning = Throttle(UNROTATED_EVERY)
        self.now: Callable[[], float] = time.monotonic
        #: When a rotation by size may be tried again (after one failed).
        self.retry_at = -math.inf

    def shouldRotate(self) -> bool:
        """
        Twisted's rule (the file past its size), except within
        L{RETRY_EVERY} s of a failed try: Twisted tries at every line
        written past the size, each try costing file system calls, and a
        flood of refused connections (a line each) would multiply them.
        """
        return bool(super().shouldRotate()) and self.now() >= self.retry_at  # type: ignore[no-untyped-call]

    def rotate(self) -> None:
        """Rotate, or reopen the file another program moved; by size or by
        SIGUSR1 (which is never held back by L{RETRY_EVERY})."""
        # Set first: a failure's warning is a line this file writes.
        self.retry_at = self.now() + RETRY_EVERY
        if self.replaced():
            # logrotate's way: it renamed the file, then sent SIGUSR1.
            done = self.reopen_here()
        else:
            done = self.can_rotate()
            if done:
                super().rotate()  # type: ignore[no-untyped-call]
        if done:
            self.retry_at = -math.inf

    def replaced(self) -> bool:
        """
        Whether another program moved the file away (or put another in its
        place) in a directory the server may write to: Twisted would rename
        nothing, or the wrong file, and go on writing to the moved one.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK):
            return False
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return True
        written = os.fstat(self._file.fileno())
        return (here.st_dev, here.st_ino) != (written.st_dev, written.st_ino)

    def reopen_here(self) -> bool:
        """
        Write on in a file at the path, made 0600 if new, never through a
        symlink (another user who may write the directory could point it at
        a file of the server's, which Twisted's C{reopen} would append to and
        chmod), nor into anything but a regular file (a FIFO blocks once
        full); if none can be opened, the log goes on in the moved file,
        with one warning at most every L{UNROTATED_EVERY} s (a failed
        reopen is tried again at each SIGUSR1, and past the size at most
        every L{RETRY_EVERY} s).  Whether a new file was opened.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, LOG_MODE)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)  # a FIFO, once full, would block the server
                raise OSError(0, "not a regular file")
            os.set_blocking(fd, True)
        except OSError as e:
            if self.unreopened_warning.allow(self.now()) is not None:
                self.log.warn("the log file {path} was moved or replaced by another "
                              "program, but no new one can be written there ({why}): "
                              "the log goes on in the moved file (tried again at "
                              "most every {every:.0f} s, and at each SIGUSR1)",
                              path=self.path, why=e.strerror, every=RETRY_EVERY)
            return False
        opened = open(fd, "rb+", 0)  # noqa: SIM115 (open while the server logs)
        # logrotate's 'create' file may be another user's: its mode is theirs.
        with contextlib.suppress(OSError):
            os.fchmod(fd, LOG_MODE)
        opened.seek(0, os.SEEK_END)
        self._file.close()
        self._file = opened
        self.size = opened.tell()
        self.log.info("the log file {path} was moved or replaced by another "
                      "program: a new one is written there", path=self.path)
        return True

    def can_rotate(self) -> bool:
        """Whether a rotation can happen now; if not, one warning why (at
        most one every L{UNROTATED_EVERY} s: a refused rotation is tried
        again while the log grows past its size, L{RETRY_EVERY})."""
        why = rotation_refused(self.path)
        if why is None:
            return True
        left_out = self.unrotated_warning.allow(self.now())
        if left_out is None:
            return False
        # Tries, not missed rotations.
        since = {0: "", 1: ": once since the last warning"}.get(
            left_out, f": {left_out} times since the last warning")
        self.log.warn("the log file {path} cannot be rotated: {why}; it grows on past "
                      "{size:,} bytes, --log-keep bounding nothing, until the server's "
                      "user can write there (tried again at most every {every:.0f} s, "
                      "and at each SIGUSR1{since})",
                      path=self.path, why=why, size=self.rotateLength,
                      left_out=left_out, every=RETRY_EVERY, since=since)
        return False
