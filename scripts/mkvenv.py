"""
Create the project's virtual environment with pip in it, using nothing but
python3.  Debian splits ensurepip into the python3-venv package; where it is
missing, the venv is made without pip and pip is installed from its wheel on
PyPI (the one registry this needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
from pathlib import Path


def main(target: str) -> None:
    path = Path(target)
    python = path / "bin" / "python"
    if python.exists() and subprocess.call([python, "-m", "pip", "--version"],
                                           stdout=subprocess.DEVNULL) == 0:
        return
    try:
        if os.environ.get("MKVENV_NO_ENSUREPIP"):
            raise subprocess.CalledProcessError(1, "ensurepip (disabled for testing)")
        venv.create(path, with_pip=True, clear=True)
        return
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"mkvenv: no ensurepip ({e}); installing pip from PyPI", file=sys.stderr)
    venv.create(path, with_pip=False, clear=True)
    index = os.environ.get("MKVENV_PYPI", "https://pypi.org/pypi/pip/json")
    with urllib.request.urlopen(index, timeout=60) as response:
        release = json.load(response)
        base = response.geturl()
    wheel = next(u for u in release["urls"] if u["filename"].endswith(".whl"))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / wheel["filename"]
        # Mirrors may answer with addresses relative to the index.
        url = urllib.parse.urljoin(base, wheel["url"])
        with urllib.request.urlopen(url, timeout=120) as response:
            file.write_bytes(response.read())
        # A pip wheel can run itself: python pip.whl/pip install pip.
        subprocess.check_call([python, str(file / "pip"), "install", "-q", str(file)])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv")
