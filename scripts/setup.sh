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
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[all,test]'
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

# The AWS Lambda Runtime Interface Emulator for `python -m serve_lambda local` and the
# serving tests: the one binary taken out of the pinned aws-sam-cli wheel (not the whole
# of SAM CLI, whose dependencies conflict with ours; and no Docker needed).
SAM_CLI_VERSION=1.170.0
rie_stamp=".venv/.aws-lambda-rie-$SAM_CLI_VERSION"
if [ ! -f "$rie_stamp" ] || [ ! -x .venv/bin/aws-lambda-rie ]; then
  case "$(uname -m)" in
    x86_64) rie_arch=x86_64 ;;
    aarch64 | arm64) rie_arch=arm64 ;;
    *) rie_arch="" ;;
  esac
  if [ -n "$rie_arch" ]; then
    echo "extracting aws-lambda-rie from aws-sam-cli $SAM_CLI_VERSION..." >&2
    wheel_dir=$(mktemp -d)
    .venv/bin/python -m pip download -q --no-deps -d "$wheel_dir" "aws-sam-cli==$SAM_CLI_VERSION"
    .venv/bin/python - "$wheel_dir"/aws_sam_cli-*.whl "samcli/local/rapid/aws-lambda-rie-$rie_arch" \
      .venv/bin/aws-lambda-rie <<'PY'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod +x .venv/bin/aws-lambda-rie
    rm -rf "$wheel_dir" .venv/.aws-lambda-rie-*
    touch "$rie_stamp"
  else
    echo "warning: no aws-lambda-rie for $(uname -m); the serving tests will be skipped" >&2
  fi
fi
