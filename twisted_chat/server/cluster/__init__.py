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
"""
