#!/usr/bin/env bash
# The benchmark's one command: bash bench/run.sh [--quick] [python -m bench options]
# Installs what it needs (ngircd and InspIRCd from Debian's packages, unless
# --quick; matplotlib for the plot), raises the open-files limit, and runs
# `python -m bench` with the project's venv. See docs/benchmark.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
quick=no
for a in "$@"; do [ "$a" = "--quick" ] && quick=yes; done
if [ "$quick" = no ]; then
    missing=()
    command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || missing+=(ngircd)
    command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || missing+=(inspircd)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    fi
    "$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install -q matplotlib
fi
# 10,000 idle clients need as many descriptors in the generator and the server
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" -m bench "$@"
