"""A real one-node Slurm cluster in a temporary directory, for tests: `munged`, `slurmctld` and
`slurmd` from Debian's slurm-wlm and munge (installed by scripts/bootstrap.sh), as the current
user, on loopback, with every state, log, pid and spool path and the munge key inside the
directory. No cgroups and no systemd: proctrack/linuxproc and task/none work in a container.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.launch import free_loopback_ports

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sinfo")
NODE_NAME = "localhost"  # the step's node list: SlurmClusterResolver turns it into worker addresses
NODE_CPUS = 2
START_SECONDS = 30


class SlurmUnavailable(RuntimeError):
    """slurm-wlm or munge is missing, or its daemons do not start here: the reason, for a skip."""


@dataclass
class SlurmCluster:
    directory: Path
    environment: dict[str, str]  # os.environ plus SLURM_CONF: what srun needs
    processes: list[subprocess.Popen]

    def log_tail(self, characters: int = 3000) -> str:
        return "".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}\n"
            for path in sorted(self.directory.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if _find(name) is None]


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(path) for path in (Path("/usr/sbin") / name, Path("/sbin") / name) if path.is_file()), None
    )


def slurm_conf(directory: Path, user: str, controller_port: int, node_port: int, step_ports: tuple[int, int]) -> str:
    """slurm.conf for one node of NODE_CPUS CPUs on 127.0.0.1, everything under `directory`."""
    return f"""\
ClusterName=convnets-test
SlurmctldHost={NODE_NAME}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={directory}/munge.socket
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
# srun --resv-ports hands each step ports from here (SLURM_STEP_RESV_PORTS), so a test never
# collides with TensorFlow's default 8888 used by another test on this machine.
MpiParams=ports={step_ports[0]}-{step_ports[1]}
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=30
NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} State=UNKNOWN
PartitionName=test Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def start_cluster(directory: Path) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in `directory`; raises SlurmUnavailable with the reason."""
    missing = missing_programs()
    if missing:
        raise SlurmUnavailable(
            f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs slurm-wlm and munge; "
            "see /tmp/convnets-apt-slurm.log)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # munged refuses a key or socket in a directory others can write
    for name in ("state", "spool"):
        (directory / name).mkdir(exist_ok=True)
    controller_port, node_port, step_base = free_loopback_ports(3)
    step_ports = (20000 + step_base % 20000, 20000 + step_base % 20000 + 99)
    conf = directory / "slurm.conf"
    conf.write_text(slurm_conf(directory, getpass.getuser(), controller_port, node_port, step_ports))
    environment = {**os.environ, "SLURM_CONF": str(conf)}
    for name in [name for name in environment if name.startswith("SLURM_") and name != "SLURM_CONF"]:
        del environment[name]  # a test run inside a Slurm job must not leak that job's variables
    cluster = SlurmCluster(directory, environment, [])
    try:
        _run([_find("mungekey"), "--create", f"--keyfile={directory}/munge.key"], directory)
        _run([_find("munged"), f"--key-file={directory}/munge.key", f"--socket={directory}/munge.socket",
              f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
              f"--seed-file={directory}/munged.seed", "--force"], directory)  # fmt: skip
        # munged daemonises itself; slurmctld and slurmd stay in the foreground (-D) as our children.
        cluster.processes.append(_daemon([_find("slurmctld"), "-D", "-c", "-f", str(conf)], directory, "slurmctld.out"))
        cluster.processes.append(_daemon([_find("slurmd"), "-D", "-N", NODE_NAME, "-f", str(conf)], directory, "slurmd.out"))
        _wait_for_idle_node(cluster)
    except BaseException:
        cluster.stop()
        stop_munged(directory)
        raise
    return cluster


def stop_munged(directory: Path) -> None:
    pid_file = directory / "munged.pid"
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (ValueError, ProcessLookupError):
            pass


def _run(command: list[str], directory: Path) -> None:
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SlurmUnavailable(f"{Path(command[0]).name} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def _daemon(command: list[str], directory: Path, output_name: str) -> subprocess.Popen:
    with open(directory / output_name, "w") as output:
        return subprocess.Popen(command, cwd=directory, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_idle_node(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + START_SECONDS
    state = ""
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise SlurmUnavailable(f"{Path(process.args[0]).name} exited with {process.returncode}:\n{cluster.log_tail()}")
        sinfo = subprocess.run([_find("sinfo"), "--noheader", "--Node", "--format=%T"], env=cluster.environment,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        state = sinfo.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    raise SlurmUnavailable(f"the node did not become idle within {START_SECONDS} s (state {state!r}):\n{cluster.log_tail()}")
