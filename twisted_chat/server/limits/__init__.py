"""
The limits a connection and its address are held to (docs/security.md).

  - L{flood}: the per-connection token bucket and flood penalty; pure;
  - L{floodaccount}: a connection's flood control, a token for each line
    (a mixin of the connection);
  - L{records}: whether a read is one TLS record, and the reads of a
    connection whose reads are (a record that ends no line spends a flood
    token: a mixin of the connection);
  - L{buckets}: the refill and drain rules every limit shares (token
    buckets, the flood penalty, the login failure limits); pure;
  - L{addresses}: the limits per source address, shared by its connections;
  - L{handshakes}: the connections still choosing a nick, overall (the
    pool that makes room rather than refuse);
  - L{refusals}: what a refused connection is told, and how it is closed;
  - L{heldinput}: the input a connection holds while a command is decided
    elsewhere, and the bound on what all connections hold together;
  - L{inputholding}: a connection's side of it, its hold made when needed
    (a mixin of the connection);
  - L{socketbuffers}: the kernel's share of a connection's traffic, each
    socket's send and receive buffers fixed at C{--sndbuf} and C{--rcvbuf};
  - L{stalls}: notices a stall of the whole process, so that what every
    connection sent meanwhile is not taken for a flood;
  - L{idle}: a connection's idle deadline, its C{PING} and the close for
    no answer (a mixin of the connection);
  - L{deadlines}: many deadlines on one reactor timer (every connection's
    idle deadline; the looks and aborts of the closes under way);
  - L{closing}: how the server ends a connection (chat or web): the close,
    then an abort after the grace, every close under way on one timer
    (and the stand-in transport of a peer gone while lines it sent wait);
  - L{descriptors}: fitting C{--max-clients} to the file descriptor limit.
"""
