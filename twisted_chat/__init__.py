"""twisted-chat: a self-hostable terminal chat server (chat/1) and client on Twisted."""

__version__ = "0.1.0"


def version_line() -> str:
    """
    What C{--version} prints (the server's, the client's and the accounts
    tool's): this package's version, then Twisted's and Python's, which an
    upgrade may have changed too.
    """
    import platform

    from twisted import __version__ as twisted_version

    return (f"twisted-chat {__version__} (Twisted {twisted_version}, "
            f"Python {platform.python_version()})")
