"""
Cluster mode (C{--redis}): several server processes, one chat.

Every state-changing command is an event appended to one Redis stream, so
the whole cluster has one order of events.  Every node reads the stream and
applies each event, in that order, to its own replica of the L{Hub} (see
L{replica}); the same deterministic code then decides nick races, pairing
races and the lobby's order identically on every node, and each node writes
lines only to its own connections.  L{node.ClusterState} is the connection
layer's L{twisted_chat.server.state.ChatState}; L{redislog} is the Redis side,
on connections opened by L{redisconn}, with the history's scripts in
L{redishistory}.
See docs/cluster.md.

The modules:

  - L{node}: L{node.ClusterState}, a command as an event, decided when the
    log hands it back;
  - L{replica}: the node's replica of the hub, every event applied in the
    log's order;
  - L{afterloss}: what a replica keeps after Redis lost data (the users
    it lacks, what they were shown), and the C{hello}s applied against it;
  - L{remote}: the users of other nodes as the replica holds them, with a
    connection that writes nowhere;
  - L{listeners}: the hub listeners the replica puts in front of the node's
    while its users must not hear every change (a rebuild, a C{hello});
  - L{own}: the node's own users, the index its fan-out walks;
  - L{redislog}: the node's event log in Redis: its connections, the
    commands until acknowledged, the heartbeat;
  - L{redisread}: reading the stream and the channel into the replica,
    loading, and the recovery when Redis lost data (the log is its host);
  - L{redisstream}: the cluster's keys in Redis, the stream's scripts, and
    how an entry names the one it follows;
  - L{redishistory}: the history's keys, scripts and rows in Redis;
  - L{snapshots}: a node's snapshots of its replica, and the stream's
    trimming behind them;
  - L{doubts}: refused resends whose first copy may be in the stream,
    answered once the replica has read that far;
  - L{leases}: a node's lease, and its judging of the others';
  - L{kepthistory}: the history writes Redis refused, kept and written
    again;
  - L{pruning}: the retention a node prunes the history by, agreed with the
    cluster's, and the pruning;
  - L{redisconfig}: what a node checks of its database at each connection:
    the kinds of the C{chat:} keys, and the cluster's one retention;
  - L{streambound}: C{--stream-bytes}, agreed with the cluster's;
  - L{redisconn}: one Redis connection, and the C{--redis} URL;
  - L{streamids}: the stream's ids, as the replica, the log and the
    history compare them;
  - L{budgets}: the per-address buckets the whole cluster shares, in Redis;
  - L{accounts}: the cluster's accounts, one namespace in Redis;
  - L{metrics}: the cluster's gauges on a node's C{--metrics} port;
  - L{service}: C{twistd chat --redis}: the factory on the cluster's state,
    and the service that joins and leaves the cluster (with the accounts in
    Redis, as the options say).
"""
