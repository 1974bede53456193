"""
The twisted-chat terminal client: C{python -m twisted_chat.client HOST [PORT]}.

It speaks chat/1 over TCP or TLS on the Twisted reactor.  The modules:

  - L{sanitize}: makes any text from the network safe to print on a terminal;
  - L{events}: splits the server's lines into verb, words and free text;
  - L{render}: turns events into human-readable lines (plain or coloured);
  - L{commands}: parses what the user types (C{/pair bob}, C{@bob hi}, ...);
  - L{complete}: what Tab completes (nicknames and commands);
  - L{protocol}: the connection: the server's lines handed to L{replies},
    what the user types to L{input};
  - L{replies}: acts on each line the server sends (one method a verb);
  - L{input}: what the user types, the queue it waits in, and leaving;
  - L{session}: the session's states, and how it ended (the exit code);
  - L{login}: C{NICK}, and C{PASS}, until the server says C{READY};
  - L{passwords}: the password prompt, the unencrypted warning, C{/register}
    and C{/passwd};
  - L{roster}: who is online (for Tab), and the user list;
  - L{pairing}: the private conversation: the partner and the invitations;
  - L{display}: what the client shows things on (a terminal or a pipe);
  - L{diagnose}: why a connection failed, in one sentence;
  - L{outbox}: the lines waiting to be sent, their pace and their counts;
  - L{pace}: the token bucket that keeps sending under the server's flood
    control;
  - L{liveness}: notices a server that stopped answering (C{PING}, and a
    word to the user);
  - L{flow}: back-pressure: stops reading the server while stdout or the
    connection cannot take more;
  - L{lines}: line splitting that skips an over-long line (server and pipe);
  - L{terminal}: the interactive line editor on a terminal (conch insults);
  - L{cells}: what a typed line takes on its row (widths, grapheme clusters);
  - L{pipe}: plain line input and output when stdin is not a terminal;
  - L{reconnect}: on a terminal, connects again after a server restart or a
    lost connection;
  - L{lobbyview}: the lobby messages shown (a reconnection's history does
    not repeat them) and the joins and leaves held while paired;
  - L{main}: options, connecting, and the exit code.
"""
