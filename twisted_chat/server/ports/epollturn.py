"""
The epoll reactor's poll, without a log context set up around each read.

Twisted's epoll reactor runs every ready descriptor's read or write inside
C{log.callWithLogger}: a copy of the legacy log context, with the
connection's C{logPrefix} as its C{system}.  Only Twisted's own legacy
C{log.msg}/C{log.err} read that context (the server logs through
C{twisted.logger}, which never looks at it), yet at a light load that
wrapper is about a tenth of the interpreter's work per lobby message
(docs/benchmark.md).  L{lighten} has the reactor dispatch each event
directly.  What changes: an unhandled error in a read, which Twisted logs
with C{log.err}, shows C{-} as its system rather than the connection;
an error escaping the dispatch itself (any but C{KeyboardInterrupt}) is
logged here and the turn goes on to the next descriptor, as
C{callWithLogger} had it.  A plain read event
(the commonest) runs Twisted's C{_doReadOrWrite} path for it written out,
a call less per read, with the same outcomes: a C{-1} descriptor, a
reason to stop returned by C{doRead}, or an error raised in it (logged
with C{log.err}) disconnects the descriptor.
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN
from typing import Any

from twisted.internet import posixbase
from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

from twisted_chat.server import logs

_log = logs.logger()
# What the poll below uses of the reactor: if a Twisted release renames any
# of them, the reactor is left as it is.
_PRIVATE = ("_doReadOrWrite", "_disconnectSelectable", "_selectables", "_poller")


def lighten(reactor: Any) -> bool:
    """
    Replace C{reactor}'s poll with L{EPollReactor.doPoll} less the log
    context; C{False} (and nothing changed) unless it is exactly Twisted's
    epoll reactor with the internals this relies on.
    """
    no_descriptor = getattr(posixbase, "_NO_FILEDESC", None)
    if (type(reactor) is not EPollReactor or no_descriptor is None
            or not all(hasattr(reactor, n) for n in _PRIVATE)):
        return False
    epoll: Any = reactor  # its private parts, untyped
    dispatch = epoll._doReadOrWrite
    disconnect = epoll._disconnectSelectable

    def doPoll(timeout: float | None) -> None:
        selectables = epoll._selectables
        try:
            events = epoll._poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:  # gone since: an earlier event closed it
                try:
                    if event == EPOLLIN:
                        # _doReadOrWrite's path for a plain read, less its call.
                        # In a read only once doRead has returned, as there.
                        in_read = False
                        try:
                            if selectable.fileno() == -1:
                                why = no_descriptor
                            else:
                                why = selectable.doRead()
                                in_read = True
                        except BaseException:
                            why = sys.exc_info()[1]
                            log.err()  # type: ignore[no-untyped-call]
                        if why:
                            disconnect(selectable, why, in_read)
                    else:
                        dispatch(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # As callWithLogger: only Ctrl-C ends the turn.
                    _log.failure("Unhandled error handling descriptor {fd}", fd=fd)

    epoll.doPoll = epoll.doIteration = doPoll
    return True
