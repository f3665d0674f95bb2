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

# Debian's Chromium renders report.html in the tests (headless, no download at run time).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser tests..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium not found and cannot apt-get it; browser tests will be skipped" >&2
  fi
fi
