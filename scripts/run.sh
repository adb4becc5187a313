#!/usr/bin/env bash
# The main job: set up what is missing, then run the pipeline (arguments go to run_pipeline.py).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/scripts/bootstrap.sh"
exec "$repo_root/.venv/bin/python" "$repo_root/run_pipeline.py" "$@"
