"""C{python -m twisted_chat.client}: see L{twisted_chat.client.main}."""

from twisted_chat.client.main import main

if __name__ == "__main__":
    main()
