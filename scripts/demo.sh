#!/usr/bin/env bash
# The main command: install what is needed, then run the product on embedded defaults
# (local Ray, a local S3 endpoint, the sample lake). Extra flags go to devkit.demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devkit.demo "$@"
