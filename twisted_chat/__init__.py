"""twisted-chat: a self-hostable terminal chat server (chat/1) and client on Twisted."""

__version__ = "0.1.0"
