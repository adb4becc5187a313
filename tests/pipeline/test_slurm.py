"""A real Slurm cluster on this machine (tests/pipeline/slurm_cluster.py): `srun` starts the
workers, `strategy: auto` finds them, and a SIGTERM to one task costs at most one step."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import TINY_RUN
from tests.pipeline.slurm_cluster import SlurmUnavailable, start_cluster, stop_munged

REPO_ROOT = Path(__file__).resolve().parents[2]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# One step per call and a backup every 5 steps: a run of 2 x 20 steps has room to be stopped mid-epoch.
PREEMPTIBLE_RUN = [*TINY_RUN, "--set", "train.steps_per_execution=1", "--set", "train.backup_every_steps=5"]

# The signalled task says which signal; the others that another worker was asked to stop.
STOPPED_LINE = re.compile(
    r"stopped: (?:received SIGTERM|another worker was asked to stop): saved a backup at epoch (\d+) step (\d+)"
)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as reason:
        pytest.skip(f"no Slurm cluster on this machine: {reason}")
    yield cluster
    cluster.stop()
    stop_munged(cluster.directory)


def srun(tasks: int, command: list[str]) -> list[str]:
    """The srun line of scripts/slurm/train.sbatch, with --label to tell the tasks' lines apart."""
    return ["srun", f"--ntasks={tasks}", "--kill-on-bad-exit=1", "--label", sys.executable, *command]


def task_lines(output: str, task: int) -> str:
    return "\n".join(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith(f"{task}: "))


def run_environment(cluster, scratch: Path) -> dict[str, str]:
    return {**cluster.environment, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}


def task_pid(cluster, procid: int, marker: str) -> int | None:
    """The pid of this cluster's task `procid` whose command line contains `marker`."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace")
            environment = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = {f"SLURM_PROCID={procid}".encode(), f"SLURM_CONF={cluster.environment['SLURM_CONF']}".encode()}
        if marker in command and "run_pipeline.py" in command and wanted <= set(environment):
            return int(proc.name)
    return None


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_srun_preempted_task_stops_every_task_at_one_step_and_the_same_srun_resumes(slurm_cluster, tmp_path):
    scratch = tmp_path / "tmp"  # the tasks' TMPDIR: task 1 writes its throw-away backups there
    scratch.mkdir()
    train = ["run_pipeline.py", "train", *PREEMPTIBLE_RUN, "--output-dir", str(tmp_path / "runs"), "--run-name", "slurm"]
    command = srun(2, train)
    backup_dir = tmp_path / "runs" / "slurm" / "backup"

    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=run_environment(slurm_cluster, scratch),
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(backup_dir.glob("ckpt-1.index")):  # the first periodic backup: training is under way
            assert first.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        os.kill(task_pid(slurm_cluster, 1, str(tmp_path)), signal.SIGTERM)
        first_code = first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    output = log_path.read_text()
    stops = [STOPPED_LINE.findall(task_lines(output, task)) for task in (0, 1)]
    assert stops[0] and stops[0] == stops[1], output[-4000:]  # both tasks stopped at the same step
    assert first_code == 128 + signal.SIGTERM, output[-3000:]
    assert not (tmp_path / "runs" / "slurm" / "metrics.json").exists()
    (stopped_epoch, stopped_step), = stops[0]

    resumed = subprocess.run(command, cwd=REPO_ROOT, env=run_environment(slurm_cluster, scratch),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    for task in (0, 1):
        lines = task_lines(resumed.stdout, task)
        # "resumed from backup <path>: epoch E, step S (n epochs done)", on each task
        assert f"epoch {stopped_epoch}, step {stopped_step} " in lines, lines[-3000:]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in task_lines(resumed.stdout, 0)
    fingerprints = [re.findall(r"final weights fingerprint (\w+)", task_lines(resumed.stdout, task)) for task in (0, 1)]
    assert fingerprints[0] and fingerprints[0] == fingerprints[1]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["slurm"]  # only task 0 wrote
    assert (tmp_path / "runs" / "slurm" / "metrics.json").is_file()
    assert len((tmp_path / "runs" / "slurm" / "history.csv").read_text().splitlines()) == 1 + 2
    assert not list(scratch.glob("convnets-worker-*")), "task 1 left its temporary directory behind"


ONE_TASK_SCRIPT = """
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
from pipeline.strategy import make_strategy, strategy_name
print(strategy_name(make_strategy("auto")))
"""


def test_a_one_task_srun_step_trains_as_a_single_worker_and_says_so(slurm_cluster, tmp_path):
    result = subprocess.run(
        ["srun", "--ntasks=1", sys.executable, "-c", ONE_TASK_SCRIPT], cwd=REPO_ROOT,
        env=run_environment(slurm_cluster, tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "DefaultStrategy"
    assert "Slurm job step of one task: training as a single worker" in result.stderr
