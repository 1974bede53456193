"""
The one thing pyproject.toml cannot declare without a warning: the fan-out's
send loop in C (docs/fanout.md, "The direct pass").  It is optional: an
install without a C compiler or Python's headers skips it, and the server
runs the same loop in Python (and says so in its log at start).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    """
    setuptools' build_ext, but an editable install does not fail when the
    optional extension was not built: in strict mode (what `make venv` uses)
    setuptools links every file of build_ext's output mapping into
    build/__editable__.*, the extension's built file included whether or not
    it exists ("can't copy ...: doesn't exist").  Only the files that exist
    are mapped.
    """

    def get_output_mapping(self) -> dict[str, str]:
        return {built: inplace for built, inplace in super().get_output_mapping().items()
                if os.path.exists(inplace)}


setup(
    ext_modules=[
        Extension(
            "twisted_chat.server.output._sendmany",
            sources=["twisted_chat/server/output/_sendmany.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": optional_build_ext},
)
