"""
The chat/1 server (C{twistd chat}).

Inside out (docs/fanout.md, "Module layout"), the domain and the connection
here, each other concern in a package of its own:

  - L{hub}: who is online, the lobby, invitations and pairs; no sockets, no
    bytes, time injected; every consequence goes out through its C{Listener};
  - L{history}: the lobby history a newcomer is shown, a ring in memory in
    front of an optional durable store;
  - L{state}: the seam every command goes through: L{state.LocalState} (this
    process's hub) or, in a cluster, L{cluster.node.ClusterState};
  - L{session}: the chat/1 commands of a framed line, decided through the
    state; it knows a connection only as L{session.Connection};
  - L{protocol}: one connection: framing, its limits, its writes, its close;
  - L{context}: what a connection knows of its server, one object per server;
  - L{factory}: builds connections and enforces the connection limits;
  - L{lines}: the hub's C{Listener}: every hub decision becomes lines there;
  - L{batches}: the one rule for which batch (the lobby's, the paired
    users') a user's lobby lines go out in;
  - L{service}: C{twistd chat}'s options and the service tree;
  - L{config}: the settings, one frozen value;
  - L{store}: durable lobby history in SQLite, written by a thread of its own;
  - L{storefile}: what a chat database file is, checked as it is opened, and
    the schema with its upgrades;
  - L{logs}: the C{--log-level} filter every logger goes through, and the
    limiter of an address's repeated lines;
  - L{output}: how lines leave: the fan-out, the send queues and what
    polices them;
  - L{limits}: flood, per-address limits, held input, stalls, idle
    deadlines, closing, and fitting C{--max-clients} to the descriptors;
  - L{accounts}: the accounts store, a connection's login, its failure
    limits and the password threads;
  - L{metrics}: the Prometheus counters, histograms and the metrics port;
  - L{ports}: listening, the HTTP ports' shared rules, TLS certificates,
    SIGHUP, SIGTERM and the privilege drop;
  - L{cluster}: cluster mode (C{--redis}): the same hub, replicated through
    Redis.
"""
