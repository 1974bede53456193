"""
The web client: a page served by C{twisted.web} and a WebSocket gateway that
makes each browser one more chat/1 connection to the same hub (C{--web},
docs/web.md).  The modules:

  - L{gateway}: the WebSocket-to-chat/1 adapter;
  - L{site}: the HTTP side (page, static files, security headers, C{/chat}),
    and C{--web}'s ports in the service tree;
  - L{admission}: the web port's HTTP connections, counted against the
    chat's limits until the upgrade;
  - L{config}: the web settings, the allowed origins, a client's address
    behind a proxy;
  - C{static/}: the page itself (plain HTML, CSS and JavaScript, no build
    step).
"""
