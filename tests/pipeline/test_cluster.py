"""Clusters started by others: `cluster-config` (TF_CONFIG for Kubernetes, SSH and `launch`),
the Kubernetes template, Slurm detection under `strategy: auto` and the sbatch script."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
import yaml

import run_pipeline
from architectures.errors import UserError
from pipeline.cluster import parse_workers, worker_tf_config
from pipeline.launch import free_loopback_ports, launch
from pipeline.strategy import make_strategy, slurm_cluster_resolver, strategy_name
from tests.cli import TINY_RUN

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "deploy" / "kubernetes" / "train-job.yaml"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# --- TF_CONFIG and cluster-config ---


def test_worker_tf_config_reads_back_through_tensorflows_resolver(monkeypatch):
    workers = ["node-a:2222", "node-b:2222", "node-c:2222"]
    monkeypatch.setenv("TF_CONFIG", worker_tf_config(workers, 2))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert resolver.cluster_spec().as_dict() == {"worker": workers}
    assert (resolver.task_type, resolver.task_id) == ("worker", 2)


def test_cluster_config_prints_the_tf_config_of_the_given_worker(capsys):
    assert run_pipeline.main(["cluster-config", "--workers", "10.0.0.1:12345, 10.0.0.2:12345", "--index", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(
    "workers, index, message",
    [
        ("a:1,b:2", "2", "--index must be in 0..1 for 2 worker(s), got 2"),
        ("a:1,b:2", "-1", "got -1"),
        ("a:1,b", "0", "worker address 'b' is not host:port"),
        ("a:1,b:70000", "0", "worker address 'b:70000' is not host:port with a port in 1-65535"),
        ("a:1,a:1", "0", "worker addresses appear twice: a:1"),
        (",", "0", "--workers needs host:port addresses"),
    ],
)
def test_cluster_config_refuses_a_bad_worker_list_or_index_in_one_line(capsys, workers, index, message):
    assert run_pipeline.main(["cluster-config", f"--workers={workers}", f"--index={index}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1, captured.err


def test_launch_gives_each_worker_the_tf_config_cluster_config_prints(tmp_path):
    # A stand-in for run_pipeline.py that records what launch hands each worker.
    worker = tmp_path / "record_tf_config.py"
    worker.write_text(
        "import json, os, sys\n"
        "config = json.loads(os.environ['TF_CONFIG'])\n"
        f"open(os.path.join({str(tmp_path)!r}, f\"worker-{{config['task']['index']}}.json\"), 'w')"
        ".write(os.environ['TF_CONFIG'])\n"
    )
    assert launch(2, ["train"], tmp_path / "run", worker) == 0
    received = [(tmp_path / f"worker-{index}.json").read_text() for index in range(2)]
    workers = json.loads(received[0])["cluster"]["worker"]
    assert [address.split(":")[0] for address in workers] == ["localhost", "localhost"]
    assert received == [worker_tf_config(workers, index) for index in range(2)]


# --- the Kubernetes template ---


def manifest_documents() -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all(MANIFEST.read_text())}


def test_kubernetes_template_is_a_headless_service_and_an_indexed_job():
    documents = manifest_documents()
    assert set(documents) == {"Service", "Job"}
    service, job = documents["Service"], documents["Job"]
    assert service["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"]
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}


def test_kubernetes_workers_are_the_jobs_pods_on_the_services_port():
    documents = manifest_documents()
    service, job = documents["Service"], documents["Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    workers = parse_workers(environment["WORKERS"])
    (service_port,) = [port["port"] for port in service["spec"]["ports"]]
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    # An Indexed Job's pod i has hostname <job>-<i>; the subdomain puts it under the Service.
    assert workers == [f"{job_name}-{index}.{service_name}:{service_port}" for index in range(job["spec"]["completions"])]
    assert [port["containerPort"] for port in container["ports"]] == [service_port]


def test_kubernetes_pods_build_tf_config_from_their_index_then_train_multi_worker():
    (container,) = manifest_documents()["Job"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    assert 'cluster-config --workers "$WORKERS" --index "$JOB_COMPLETION_INDEX"' in script
    # An assignment carries its command substitution's status, so a cluster-config error stops the pod.
    assert 'TF_CONFIG="$(python run_pipeline.py cluster-config' in script and "&& export TF_CONFIG &&" in script
    train = script.split("exec python run_pipeline.py ", 1)[1].split()
    args = run_pipeline._build_parser().parse_args(train)
    assert (args.command, args.strategy) == ("train", "multi_worker")
    assert (REPO_ROOT / args.config).is_file()


def test_kubernetes_pod_command_runs_in_a_shell_and_prints_each_index(tmp_path):
    """The pod's script, with `python` the test interpreter and `exec` of training replaced by
    printing TF_CONFIG: each index gets its own worker's config."""
    documents = manifest_documents()
    (container,) = documents["Job"]["spec"]["template"]["spec"]["containers"]
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    script = container["args"][0].split("&& exec ")[0] + '&& printf "%s" "$TF_CONFIG"'
    python_shim = tmp_path / "python"
    python_shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python_shim.chmod(0o755)
    for index in range(documents["Job"]["spec"]["completions"]):
        shell = subprocess.run(
            ["/bin/sh", "-c", script],
            env={**os.environ, **environment, "JOB_COMPLETION_INDEX": str(index), "TF_CPP_MIN_LOG_LEVEL": "2",
                 "PATH": f"{tmp_path}:{os.environ['PATH']}"},
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout == worker_tf_config(parse_workers(environment["WORKERS"]), index)


# --- Slurm ---

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                   "SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_STEP_TASKS_PER_NODE",
                   "SLURM_TASKS_PER_NODE", "SLURM_STEP_RESV_PORTS")


def srun_environment(procid: int, tasks: int, nodelist: str, tasks_per_node: str, nodes: int = 1) -> dict[str, str]:
    """The variables `srun -n <tasks>` sets for one task of a step (Slurm's srun(1), OUTPUT ENVIRONMENT VARIABLES)."""
    return {
        "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % (tasks // nodes)),
        "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node, "SLURM_TASKS_PER_NODE": tasks_per_node,
    }


@pytest.fixture
def slurm(monkeypatch):
    """Set a Slurm environment for this test only (none of the runner's own leaks in)."""
    for name in SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_environment(variables: dict[str, str]) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_environment


def test_two_task_step_on_one_node_is_a_two_worker_cluster_on_consecutive_ports(slurm):
    host = socket.gethostname()
    slurm(srun_environment(procid=1, tasks=2, nodelist=host, tasks_per_node="2"))
    resolver = slurm_cluster_resolver(local_gpus=0)
    assert resolver.cluster_spec().as_dict() == {"worker": [f"{host}:8888", f"{host}:8889"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}  # CPU devices: MultiWorkerMirroredStrategy uses the CPU


def test_one_task_per_node_expands_the_node_list_and_uses_the_reserved_ports(slurm):
    variables = srun_environment(procid=0, tasks=3, nodelist="gpu[07-09]", tasks_per_node="1(x3)", nodes=3)
    slurm({**variables, "SLURM_STEP_RESV_PORTS": "12000-12000"})  # srun --resv-ports: one port per task on a node
    resolver = slurm_cluster_resolver(local_gpus=8)
    assert resolver.cluster_spec().as_dict() == {"worker": ["gpu07:12000", "gpu08:12000", "gpu09:12000"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 0)
    assert resolver.num_accelerators() == {"GPU": 8}  # each task uses every GPU Slurm gave it


@pytest.mark.parametrize(
    "variables",
    [
        {},  # not under Slurm
        srun_environment(procid=0, tasks=1, nodelist="node1", tasks_per_node="1"),  # srun -n 1
    ],
    ids=["no_slurm", "one_task_step"],
)
def test_without_a_multi_task_step_auto_keeps_the_default_strategy(slurm, variables):
    slurm(variables)
    assert slurm_cluster_resolver(local_gpus=0) is None
    assert strategy_name(make_strategy("auto")) == "DefaultStrategy"


def test_multi_worker_without_tf_config_or_a_slurm_step_says_what_it_needs(slurm, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="needs the TF_CONFIG environment variable or a Slurm job step of several tasks"):
        make_strategy("multi_worker")


def test_an_sbatch_script_without_srun_trains_alone_and_says_how_to_start_workers(slurm, caplog):
    slurm({"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[1-2]"})
    assert slurm_cluster_resolver(local_gpus=0) is None
    assert "not started by srun" in caplog.text and "single worker" in caplog.text


def test_a_step_without_its_node_list_is_a_one_line_error_naming_the_variable(slurm):
    variables = srun_environment(procid=0, tasks=2, nodelist="node1", tasks_per_node="2")
    del variables["SLURM_STEP_NODELIST"]
    slurm(variables)
    with pytest.raises(UserError, match="SLURM_STEP_NODELIST not found") as raised:
        slurm_cluster_resolver(local_gpus=0)
    assert "\n" not in str(raised.value)


def consecutive_free_ports() -> int:
    """A port p with p and p + 1 free now (SlurmClusterResolver gives a node's tasks consecutive ports)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
        return base
    raise RuntimeError("no two consecutive free ports")


WORKER_SCRIPT = """
import tensorflow as tf
from pipeline.strategy import is_chief, make_strategy, strategy_name
strategy = make_strategy("auto")
total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
print(strategy_name(strategy), strategy.num_replicas_in_sync, is_chief(strategy), float(total))
"""


def test_auto_under_a_two_task_srun_step_trains_as_two_workers_with_task_0_the_chief():
    base = consecutive_free_ports()
    environment = {name: value for name, value in os.environ.items() if name not in SLURM_VARIABLES + ("TF_CONFIG",)}
    processes = []
    for procid in range(2):
        variables = srun_environment(procid=procid, tasks=2, nodelist="localhost", tasks_per_node="2")
        variables["SLURM_STEP_RESV_PORTS"] = f"{base}-{base + 1}"
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT], cwd=REPO_ROOT, text=True,
            env={**environment, **variables, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    try:
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
    assert [stdout.split()[-4:] for stdout, _ in outputs] == [
        ["MultiWorkerMirroredStrategy", "2", "True", "2.0"],
        ["MultiWorkerMirroredStrategy", "2", "False", "2.0"],
    ]


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.skipif(
    shutil.which("slurmctld", path="/usr/sbin:/usr/bin") is not None,
    reason="Slurm is installed: tests/pipeline/test_slurm.py trains under a real srun instead",
)
def test_train_under_a_two_task_srun_step_trains_both_tasks_alike_and_only_task_0_writes(tmp_path):
    base = consecutive_free_ports()
    scratch = tmp_path / "tmp"  # the tasks' TMPDIR: a non-chief task writes there and cleans up
    scratch.mkdir()
    environment = {name: value for name, value in os.environ.items() if name not in SLURM_VARIABLES + ("TF_CONFIG",)}
    command = [sys.executable, str(REPO_ROOT / "run_pipeline.py"), "train", *TINY_RUN,
               "--output-dir", str(tmp_path / "runs"), "--run-name", "slurm"]
    processes = []
    for procid in range(2):
        variables = srun_environment(procid=procid, tasks=2, nodelist="localhost", tasks_per_node="2")
        variables["SLURM_STEP_RESV_PORTS"] = f"{base}-{base + 1}"
        processes.append(subprocess.Popen(
            command, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**environment, **variables, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(scratch)},
        ))
    try:
        outputs = [process.communicate(timeout=600)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0]
    weights = [re.findall(r"final weights fingerprint (\w+)", output) for output in outputs]
    assert weights[0] and weights[0] == weights[1]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["slurm"]
    assert (tmp_path / "runs" / "slurm" / "metrics.json").is_file()
    assert not list(scratch.glob("convnets-worker-*")), "task 1 left its temporary directory behind"


def test_sbatch_script_runs_one_task_per_node_and_passes_its_arguments_to_train():
    script = (REPO_ROOT / "scripts" / "slurm" / "train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    directives = [line.split()[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=1" in directives and any(d.startswith("--nodes=") for d in directives)
    (launch_line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert launch_line.endswith('run_pipeline.py train "$@"')


# --- clear failures when a cluster does not form ---


def start_workers(tf_configs: list[str], extra_arguments: list[list[str]]) -> list[subprocess.Popen]:
    """`train --strategy multi_worker` processes with the given TF_CONFIGs; none needs data before
    the cluster check."""
    environment = {name: value for name, value in os.environ.items() if name not in SLURM_VARIABLES + ("TF_CONFIG",)}
    return [
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "run_pipeline.py"), "train", "--strategy", "multi_worker", *arguments],
            cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**environment, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for tf_config, arguments in zip(tf_configs, extra_arguments)
    ]


def finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit code, stderr) of each; kills what is still running after `timeout` seconds."""
    try:
        return [(process.wait(timeout=timeout), process.communicate()[1]) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_worker_that_cannot_reach_the_cluster_names_the_missing_address_within_the_timeout(tmp_path):
    """cluster-config's TF_CONFIG for 3 workers; only 2 start, the third address is a closed port."""
    addresses = [f"localhost:{port}" for port in free_loopback_ports(3)]
    tf_configs = [
        subprocess.run([sys.executable, "run_pipeline.py", "cluster-config", "--workers", ",".join(addresses),
                        "--index", str(index)], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        for index in range(2)
    ]  # fmt: skip
    arguments = ["--output-dir", str(tmp_path), "--set", "distribute.connect_timeout_seconds=8"]
    results = finish(start_workers(tf_configs, [arguments, arguments]), timeout=90)
    for code, stderr in results:
        assert code == 2, stderr[-2000:]
        last_line = stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and "within distribute.connect_timeout_seconds=8" in last_line
        assert f"could not reach worker 2 at {addresses[2]} within" in last_line  # and only that one
        assert "Traceback" not in stderr


def test_a_worker_started_with_a_different_config_is_refused_by_every_worker(tmp_path):
    addresses = [f"localhost:{port}" for port in free_loopback_ports(2)]
    common = ["--output-dir", str(tmp_path), "--set", "distribute.connect_timeout_seconds=60"]
    results = finish(
        start_workers([worker_tf_config(addresses, index) for index in range(2)],
                      [common, [*common, "--set", "train.learning_rate=0.5"]]),
        timeout=120,
    )  # fmt: skip
    for code, stderr in results:
        assert code == 2, stderr[-2000:]
        last_line = stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: worker 1 was started with a different config from the chief's"), last_line
        assert "Traceback" not in stderr
    assert not list(tmp_path.iterdir()), "a refused run wrote files"

