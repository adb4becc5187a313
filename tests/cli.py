"""Run `run_pipeline.py` as a user does: a separate process, real files, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = REPO_ROOT / "run_pipeline.py"

# Small, fast runs on the real Fashion-MNIST files: 640 training images, 256 to evaluate.
TINY_RUN = [
    "--epochs", "2", "--batch-size", "32",
    "--set", "data.max_train_examples=640", "--set", "data.max_eval_examples=256",
    "--set", "train.learning_rate=0.05", "--set", "train.steps_per_execution=4",
]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **extra}


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=cwd or REPO_ROOT,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start the CLI in the background with stdout and stderr going to `log_path`."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, str(CLI), *args], cwd=cwd or REPO_ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT
    )
