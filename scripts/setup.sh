#!/usr/bin/env bash
# Create .venv and install the project with every dependency pinned (requirements.lock).
# Idempotent: does nothing when pyproject.toml and the lock are unchanged since last time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing into .venv (first run: a few minutes, torch is large)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
