"""
The process around the chat: the ports it listens on and the signals and
privileges of a C{twistd} daemon.

  - L{listening}: the ports it listens on, each endpoint checked before
    anything is made (the one reader of Twisted's private port and
    interface);
  - L{httpports}: what the two HTTP ports (C{--metrics}, C{--web}) share:
    a request that announces a body is refused unread;
  - L{certificates}: an C{ssl:} port's certificate, key and chain, loaded
    at start and again when renewed;
  - L{reloading}: SIGHUP reloads the TLS certificates, never stops the
    server; changed certificate files are reloaded without it;
  - L{rotating}: SIGUSR1 rotates the log file, if there is one, never
    stops the server;
  - L{privileges}: under twistd's C{--uid}/C{--gid}, the files start-up
    makes are made as the user the server will run as;
  - L{pidfile}: twistd's C{--pidfile}, checked before anything is made;
  - L{stopping}: a second SIGTERM or SIGINT during the shutdown is harmless;
  - L{signalled}: how SIGHUP and SIGUSR1 are taken, from the services'
    start on (before the reactor's);
  - L{epollturn}: the epoll reactor's poll without the legacy log context
    Twisted sets up around each read.
"""
