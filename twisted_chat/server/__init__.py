"""
The chat/1 server (C{twistd chat}).

Inside out (docs/fanout.md, "Module layout"):

  - L{hub}: who is online, the lobby, invitations and pairs; no sockets, no
    bytes, time injected; every consequence goes out through its C{Listener};
  - L{history}: the lobby history a newcomer is shown, a ring in memory in
    front of an optional durable store;
  - L{state}: the seam every command goes through: L{state.LocalState} (this
    process's hub) or, in a cluster, L{cluster.node.ClusterState};
  - L{session}: the chat/1 commands of a framed line, decided through the
    state; it knows a connection only as L{session.Connection};
  - L{login}: a connection's accounts side (C{PASS}, C{REGISTER},
    C{PASSWD});
  - L{loginlimits}: the failure limits of logins and the bounds of the
    password work;
  - L{passwordwork}: the password threads every hash runs on, bounded;
  - L{protocol}: one connection: framing, its limits, its writes, its close;
  - L{context}: what a connection knows of its server, one object per server;
  - L{heldinput}: the input a connection holds while a command is decided
    elsewhere, and the bound on what all connections hold together;
  - L{stalls}: notices a stall of the whole process, so that what every
    connection sent meanwhile is not taken for a flood;
  - L{factory}: builds connections, enforces the connection limits, and is
    the hub's C{Listener}: every hub decision becomes lines there;
  - L{fanout}: when lobby lines leave (gathering, pacing by backlog);
  - L{sendqueue}: a connection's send queue and the direct pass of a batch to
    every member (in C where C{_sendmany} was built);
  - L{outputwatch}: the timers that police what the send queues hold
    (C{--sendq-timeout}, C{--sendq-total});
  - L{flood}: the per-connection token bucket and flood penalty; pure;
  - L{buckets}: the refill and drain rules every limit shares (token
    buckets, the flood penalty, the login failure limits); pure;
  - L{deadlines}: every connection's idle deadline on one reactor timer;
  - L{closing}: how the server ends a connection (chat or web): the close,
    then an abort after the grace (and the stand-in transport of a peer
    gone while lines it sent wait);
  - L{addresses}: the limits per source address, shared by its connections;
  - L{service}: C{twistd chat}'s options and the service tree;
  - L{listening}: the ports it listens on, each endpoint checked before
    anything is made (the one reader of Twisted's private port and
    interface);
  - L{stopping}: a second SIGTERM or SIGINT during the shutdown is harmless;
  - L{reloading}: SIGHUP reloads the TLS certificates, never stops the
    server; changed certificate files are reloaded without it;
  - L{certificates}: an C{ssl:} port's certificate, key and chain, loaded
    at start and again when renewed;
  - L{privileges}: under twistd's C{--uid}/C{--gid}, the files start-up
    makes are made as the user the server will run as;
  - L{config}: the settings, one frozen value;
  - L{store}: durable lobby history in SQLite, written by a thread of its own;
  - L{storefile}: what a chat database file is, checked as it is opened, and
    the schema with its upgrades;
  - L{accounts}: the accounts file (salted scrypt hashes), no reactor in it;
  - L{accountsetup}: the accounts as start-up makes them, and the log line
    that says which;
  - L{metrics}: the Prometheus counters and collector;
  - L{histogram}: the histograms they export, observed without loading
    prometheus_client;
  - L{metricsport}: the metrics port (C{--metrics}) that serves them, and
    its limits;
  - L{httpports}: what the two HTTP ports (C{--metrics}, C{--web}) share:
    a request that announces a body is refused unread;
  - L{logs}: the C{--log-level} filter every logger goes through, and the
    limiter of an address's repeated lines;
  - L{descriptors}: fitting C{--max-clients} to the file descriptor limit;
  - L{cluster}: cluster mode (C{--redis}): the same hub, replicated through
    Redis.
"""
