"""`launch --workers N`: a multi-worker run on this machine, for trying a cluster setup.

Starts N `run_pipeline.py train --strategy multi_worker` processes on loopback ports, each
with its own TF_CONFIG (worker 0 is the chief), streams the chief's output, keeps the other
workers' output in `<run_dir>.workers/worker-<i>.log`, and stops everything cleanly when one
worker fails. On a real cluster, start the same `train --strategy multi_worker` command on
each machine with that machine's TF_CONFIG (`cluster-config` prints it; README, "Slurm and
Kubernetes").
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from architectures.errors import UserError
from pipeline.cluster import worker_tf_config

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
GRACE_SECONDS = 20  # how long the others get to save a backup and exit after one fails or a stop


def free_loopback_ports(count: int) -> list[int]:
    """Ports the OS hands out now; held open together so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]
    finally:
        for listener in sockets:
            listener.close()


def launch(workers: int, cli_arguments: list[str], run_dir: Path, cli_path: Path) -> int:
    """Run `workers` processes of `cli_path` with `cli_arguments` (a `train` command line) and
    `--strategy multi_worker` to completion; returns the exit code to report."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if any(argument.startswith(("--strategy", "--set=distribute.strategy")) for argument in cli_arguments):
        raise UserError("launch sets --strategy multi_worker itself; drop --strategy and distribute.strategy")
    ports = free_loopback_ports(workers)
    log_dir = Path(f"{run_dir}.workers")
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(cli_path), *cli_arguments, "--strategy", "multi_worker"]
    processes: list[subprocess.Popen] = []
    log_files = []
    addresses = [f"localhost:{port}" for port in ports]
    for index in range(workers):
        environment = {**os.environ, "TF_CONFIG": worker_tf_config(addresses, index), "PYTHONUNBUFFERED": "1"}
        if index == 0:
            process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            threading.Thread(target=_stream, args=(process.stdout,), daemon=True).start()
        else:
            log_file = open(log_dir / f"worker-{index}.log", "w")
            log_files.append(log_file)
            process = subprocess.Popen(command, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
        processes.append(process)
    logger.info("launched %d workers on ports %s; other workers log to %s", workers, ports, log_dir)
    try:
        return _supervise(processes, log_dir)
    finally:
        for log_file in log_files:
            log_file.close()


def _stream(stream) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()


def _supervise(processes: list[subprocess.Popen], log_dir: Path) -> int:
    """Wait for all; if one fails, stop the rest and report which one and why."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    stop = {"signal": None}

    def forward(number, frame):
        stop["signal"] = number
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    for number in previous:
        signal.signal(number, forward)
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
            if failed and stop["signal"] is None:
                index = failed[0]
                _stop_all(processes)
                where = "the output above" if index == 0 else str(log_dir / f"worker-{index}.log")
                raise UserError(f"worker {index} exited with code {codes[index]} (see {where}); the other workers were stopped")
            if all(code is not None for code in codes):
                return 0 if stop["signal"] is None else 128 + stop["signal"]
            time.sleep(POLL_SECONDS)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
