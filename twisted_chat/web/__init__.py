"""
The web client: a page served by C{twisted.web} and a WebSocket gateway that
makes each browser one more chat/1 connection to the same hub.

L{twisted_chat.web.gateway} is the WebSocket-to-chat/1 adapter;
L{twisted_chat.web.site} the HTTP side (page, static files, security headers);
C{static/} the page itself (plain HTML, CSS and JavaScript, no build step).
"""
