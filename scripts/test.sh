#!/usr/bin/env bash
# The test suite: set up what is missing, then run pytest (arguments go to pytest).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/scripts/bootstrap.sh"
cd "$repo_root"
exec .venv/bin/python -m pytest "$@"
