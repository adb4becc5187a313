"""Table 7: what a preemption costs with 2 workers on loopback: steps lost and seconds to exit.

Each repeat starts two `run_pipeline.py train --strategy multi_worker` processes with
`cluster-config`'s TF_CONFIG (as `launch` and the Kubernetes template do) on Fashion-MNIST, waits
for the first periodic backup (the workers have then completed that step), sends SIGTERM to
worker 1 only and times until both have exited. A step is lost when the backup the workers
saved on the way out holds fewer steps than were completed at the signal; the steps after the
signal are the ones run before every worker had agreed to stop. GKE gives a preempted node
30 s between SIGTERM and SIGKILL.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchContext, median

logger = logging.getLogger(__name__)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
GKE_NOTICE_SECONDS = 30
STOPPED_LINE = re.compile(r"stopped: .*saved a backup at epoch (\d+) step (\d+)")


@dataclass(frozen=True)
class PreemptionSettings:
    arch: str
    train_examples: int
    batch_size: int
    backup_every_steps: int  # the signal follows the first periodic backup, at this step
    repeats: int


FULL = PreemptionSettings("resnet20", train_examples=12_800, batch_size=128, backup_every_steps=20, repeats=5)
QUICK = PreemptionSettings("resnet20", train_examples=640, batch_size=32, backup_every_steps=5, repeats=1)


def run(context: BenchContext) -> dict[str, Any]:
    from pipeline.cluster import worker_tf_config
    from pipeline.launch import free_loopback_ports

    if not FASHION_MNIST.exists():
        return {"status": "not measured (Debian's dataset-fashion-mnist is not installed)", "rows": []}
    settings = QUICK if context.quick else FULL
    rows = []
    for repeat in range(settings.repeats):
        run_name = f"preemption-{repeat}"
        run_dir = Path(context.runs_dir) / run_name
        addresses = [f"localhost:{port}" for port in free_loopback_ports(2)]
        arguments = [
            sys.executable, str(REPO_ROOT / "run_pipeline.py"), "train", "--strategy", "multi_worker", "--overwrite",
            "--arch", settings.arch, "--epochs", "2", "--batch-size", str(settings.batch_size),
            "--output-dir", str(context.runs_dir), "--run-name", run_name,
            "--set", f"data.max_train_examples={settings.train_examples}", "--set", "data.max_eval_examples=256",
            "--set", "train.steps_per_execution=1", "--set", f"train.backup_every_steps={settings.backup_every_steps}",
        ]  # fmt: skip
        logs = [Path(context.runs_dir) / f"{run_name}.worker-{index}.log" for index in range(2)]
        Path(context.runs_dir).mkdir(parents=True, exist_ok=True)
        workers = []
        for index, log_path in enumerate(logs):
            with open(log_path, "w") as log:
                environment = {**os.environ, "TF_CONFIG": worker_tf_config(addresses, index), "TF_CPP_MIN_LOG_LEVEL": "2"}
                workers.append(subprocess.Popen(arguments, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT))
        rows.append(_preempt_once(workers, logs, run_dir / "backup", settings.backup_every_steps))
        logger.info("preemption %d: %s", repeat + 1, rows[-1])
    return {
        "status": "measured",
        "settings": {**asdict(settings), "workers": 2, "gke_notice_seconds": GKE_NOTICE_SECONDS},
        "rows": rows,
        "median_seconds_to_exit": round(median([row["seconds_to_exit"] for row in rows]), 2),
        "max_steps_lost": max(row["steps_lost"] for row in rows),
    }


def _preempt_once(workers: list[subprocess.Popen], logs: list[Path], backup_dir: Path, step_at_signal: int) -> dict[str, Any]:
    try:
        deadline = time.monotonic() + 600
        while not list(backup_dir.glob("ckpt-1.index")):
            if any(worker.poll() is not None for worker in workers) or time.monotonic() > deadline:
                raise RuntimeError(f"the workers ended before the first backup: {logs[0].read_text()[-2000:]}")
            time.sleep(0.05)
        signalled = time.perf_counter()
        workers[1].send_signal(signal.SIGTERM)
        exit_codes = [worker.wait(timeout=120) for worker in workers]
        seconds_to_exit = time.perf_counter() - signalled
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    saved = [STOPPED_LINE.findall(log.read_text()) for log in logs]
    if not saved[0] or saved[0] != saved[1]:
        raise RuntimeError(f"the workers did not agree on one step: {saved}")
    (epoch, step), = saved[0]
    if int(epoch) != 1:
        raise RuntimeError(f"the stop came in epoch {epoch}: raise the settings' training examples")
    return {
        "step_at_signal": step_at_signal,
        "step_saved": int(step),
        "steps_after_signal": int(step) - step_at_signal,
        "steps_lost": max(0, step_at_signal - int(step)),
        "seconds_to_exit": round(seconds_to_exit, 2),
        "exit_codes": exit_codes,
    }
