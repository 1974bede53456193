"""twistd plugin: C{twistd -n chat --port 7000}.  Kept tiny on purpose: if a
plugin module fails to import, twistd silently leaves it out."""

from twisted.application.service import ServiceMaker

chat = ServiceMaker(
    "twisted-chat",
    "twisted_chat.server.service",
    "A chat/1 terminal chat server (lobby, history, DMs, private pairs).",
    "chat",
)
