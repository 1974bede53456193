"""
The one thing pyproject.toml cannot declare without a warning: the fan-out's
send loop in C (docs/fanout.md, "The direct pass").  It is optional: an
install without a C compiler warns and runs the same loop in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "twisted_chat.server._sendmany",
            sources=["twisted_chat/server/_sendmany.c"],
            optional=True,
        )
    ]
)
