#!/bin/sh
# Create .venv and install the project (pinned by requirements.lock) when missing or out of date.
# A stamp keyed on the lock and pyproject hashes means a half-finished install is retried, not trusted.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Meterline needs Python 3.11 or newer: set PYTHON=/path/to/python3.11 (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
want=$(cat requirements.lock pyproject.toml sdk/python/pyproject.toml 2>/dev/null | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
stamp=.venv/.installed-$want
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "Installing dependencies into .venv (first run only) ..." >&2
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -d sdk/python ]; then sdk="-e sdk/python[livekit]"; else sdk=""; fi
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet -c requirements.lock -e ".[dev]" $sdk
rm -f .venv/.installed-*
touch "$stamp"
