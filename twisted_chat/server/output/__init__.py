"""
The output side: how lines leave for the connections (docs/fanout.md).

  - L{fanout}: when lobby lines leave (gathering, pacing by backlog);
  - L{sendqueue}: a connection's send queue and the direct pass of a batch to
    every member (in C where C{_sendmany} was built);
  - L{memberoutput}: a connection's writes, and its cuts for its output;
  - L{privateheld}: the private lines a connection still holds, which the
    C{--sendq} cut leaves out;
  - L{outputwatch}: the timers that police what the send queues hold
    (C{--sendq-timeout}, C{--sendq-total}).
  - L{heaptrim}: giving memory back after an output burst (glibc's
    C{malloc_trim}).
"""
