"""The `tf.distribute` strategy of a run, and which process is the chief.

    auto          inside a Slurm job step of several tasks (`srun`), MultiWorkerMirroredStrategy over
                  them; else all local GPUs with MirroredStrategy when there are several, else the default
    default       tf.distribute's default strategy (one device, no distribution)
    one_device    OneDeviceStrategy on the first GPU, else the CPU
    mirrored      MirroredStrategy over local GPUs; on a CPU-only machine over
                  `cpu_replicas` logical CPU devices (to try distribution, and for tests)
    multi_worker  MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment variable, or
                  from the Slurm job step when TF_CONFIG is unset

Only the chief writes checkpoints, logs, plots and exports (TF Model Garden's rule): the
chief is the task of type "chief", or worker 0 when the cluster has no chief. A worker that
cannot reach the others within `distribute.connect_timeout_seconds` exits naming the missing
address; one started with a different config from the chief's is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time

import tensorflow as tf

from architectures.errors import UserError

logger = logging.getLogger(__name__)

PEER_POLL_SECONDS = 0.5  # between connection attempts to a worker that is not up yet


def make_strategy(name: str, cpu_replicas: int = 1, connect_timeout_seconds: float = 300.0) -> tf.distribute.Strategy:
    """Create the strategy; must run before any other TensorFlow op touches the devices.
    `connect_timeout_seconds`: how long a multi-worker task waits for the others (DistributeConfig's)."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi_worker":
        return _multi_worker_strategy(len(gpus), connect_timeout_seconds)
    if name == "auto" and (slurm := slurm_cluster_resolver(len(gpus))) is not None:
        return _joined_cluster(slurm, connect_timeout_seconds)
    if name == "mirrored" and not gpus and cpu_replicas > 1:
        _split_cpu(cpu_replicas)
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _split_cpu(replicas: int) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        # Already initialised in this process (a second run in the same interpreter): keep what exists.
        logger.debug("CPU devices already configured: %s", tf.config.list_logical_devices("CPU"))


def _multi_worker_strategy(local_gpus: int, connect_timeout_seconds: float) -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw and (slurm := slurm_cluster_resolver(local_gpus)) is not None:
        return _joined_cluster(slurm, connect_timeout_seconds)
    if not raw:
        raise UserError(
            "strategy multi_worker needs the TF_CONFIG environment variable or a Slurm job step of several tasks "
            "(see README, 'Slurm and Kubernetes')"
        )
    try:
        tf_config = json.loads(raw)
        task = tf_config["task"]
        cluster = tf_config["cluster"]
        _ = task["type"], task["index"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"TF_CONFIG must be JSON with 'cluster' and 'task' {{type, index}}; got {raw!r}") from None
    logger.info("multi-worker: %s %s of cluster %s", task["type"], task["index"], cluster)
    return _joined_cluster(tf.distribute.cluster_resolver.TFConfigClusterResolver(), connect_timeout_seconds)


def _joined_cluster(
    resolver: tf.distribute.cluster_resolver.ClusterResolver, connect_timeout_seconds: float
) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy once every other task answers on its address, else a UserError
    naming the ones that did not within `connect_timeout_seconds`.

    The strategy's constructor waits for all tasks inside TensorFlow's coordination service with
    no timeout, holding the GIL (a watchdog thread never runs): so the tasks meet first on their
    own ports, each listening on its address while it connects to the others'.
    """
    cluster_spec = resolver.cluster_spec()
    own_address = cluster_spec.task_address(resolver.task_type, resolver.task_id)
    peers = {
        f"{job} {index}": cluster_spec.task_address(job, index)
        for job in cluster_spec.jobs
        for index in cluster_spec.task_indices(job)
        if (job, index) != (resolver.task_type, resolver.task_id)
    }
    _wait_for_peers(own_address, peers, connect_timeout_seconds)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def _wait_for_peers(own_address: str, peers: dict[str, str], timeout_seconds: float) -> None:
    port = int(own_address.rpartition(":")[2])
    try:
        # Closed again before the strategy's gRPC server binds the same port (create_server sets SO_REUSEADDR).
        listener = socket.create_server(("", port), backlog=64)
    except OSError as error:
        raise UserError(f"this worker's address {own_address}: cannot listen on port {port} ({error.strerror})") from None
    deadline = time.monotonic() + timeout_seconds
    with listener:
        while peers:
            peers = {name: address for name, address in peers.items() if not _accepts_connections(address)}
            if peers and time.monotonic() > deadline:
                missing = ", ".join(f"{name} at {address}" for name, address in peers.items())
                raise UserError(
                    f"{own_address} could not reach {missing} within distribute.connect_timeout_seconds="
                    f"{timeout_seconds:g} (unreachable: not started, a wrong address, or a firewall)"
                )
            if peers:
                time.sleep(PEER_POLL_SECONDS)


def _accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PEER_POLL_SECONDS):
            return True
    except OSError:
        return False


def refuse_a_different_config(strategy: tf.distribute.Strategy, config_text: str) -> None:
    """Raise UserError on every worker when any worker's config differs from the chief's.

    A collective call, so every worker makes it once, right after the strategy: the workers
    exchange a hash of their resolved config (`config.yaml`'s text). A worker trained with
    another batch size or data would hang or silently diverge later.
    """
    if not strategy.extended._in_multi_worker_mode():
        return
    digest = hashlib.sha256(config_text.encode()).hexdigest()
    # Two 24-bit numbers: float32 holds each exactly, and every collective implementation takes float32.
    local_hash = tf.constant([int(digest[:6], 16), int(digest[6:12], 16)], tf.float32)
    per_replica = _gather_over_replicas(strategy, local_hash).numpy().reshape(strategy.num_replicas_in_sync, 2)
    per_worker = per_replica.reshape(strategy.extended._num_workers, -1, 2)[:, 0]  # the chief's replicas come first
    hashes = ["".join(f"{int(part):06x}" for part in worker_hash) for worker_hash in per_worker]
    differing = [index for index, worker_hash in enumerate(hashes) if worker_hash != hashes[0]]
    if differing:
        raise UserError(
            f"worker {differing[0]} was started with a different config from the chief's (config hash "
            f"{hashes[differing[0]]}, chief {hashes[0]}): start every worker with the same command line and config file"
        )


@tf.function
def _gather_over_replicas(strategy: tf.distribute.Strategy, local_value: tf.Tensor) -> tf.Tensor:
    return strategy.gather(strategy.run(lambda: tf.identity(local_value)), axis=0)


def slurm_cluster_resolver(local_gpus: int) -> tf.distribute.cluster_resolver.ClusterResolver | None:
    """This Slurm job step's cluster when `srun` started several tasks, else None (not Slurm, or one task).

    TF's SlurmClusterResolver reads SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST and
    SLURM_STEP_TASKS_PER_NODE and expands the node list itself (no `scontrol`). An sbatch script
    is one process even when the job has several tasks (SLURM_NTASKS): it stays a single worker.
    """
    step_tasks = os.environ.get("SLURM_STEP_NUM_TASKS")
    if step_tasks is None or step_tasks == "1":
        job_tasks = os.environ.get("SLURM_NTASKS", "1")
        if step_tasks is None and job_tasks != "1":
            logger.warning(
                "Slurm job of %s tasks, but this process was not started by srun: training as a single worker "
                "(start it with srun, as scripts/slurm/train.sbatch does)", job_tasks
            )
        elif "SLURM_JOB_ID" in os.environ:
            logger.info("Slurm job step of one task: training as a single worker")
        return None
    if not step_tasks.isdigit():
        raise UserError(f"SLURM_STEP_NUM_TASKS must be a number of tasks, got {step_tasks!r}")
    # srun --resv-ports reserves this step's ports on every node; else TF's default base, 8888.
    reserved_ports = re.match(r"\d+", os.environ.get("SLURM_STEP_RESV_PORTS", ""))
    try:
        # The resolver lays a node's tasks on GPU slots (range(0, gpus_per_node, gpus_per_task)) and asks
        # nvidia-smi for gpus_per_node, which fails on CPU nodes: one slot per task keeps only its port layout.
        slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=int(reserved_ports.group()) if reserved_ports else 8888,
            gpus_per_node=int(step_tasks),
            gpus_per_task=1,
            auto_set_gpu=False,
        )
        cluster_spec = slurm.cluster_spec()
    except (RuntimeError, ValueError) as error:
        raise UserError(f"Slurm job step of {step_tasks} tasks: {error}".replace("\n", " ")) from None
    logger.info("Slurm job step: worker %d of cluster %s", slurm.task_id, cluster_spec.as_dict())
    # The task uses the GPUs Slurm made visible to it (all of the node's with one task per node).
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster_spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={"GPU": local_gpus},
        rpc_layer="grpc",
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def describe(strategy: tf.distribute.Strategy, global_batch_size: int) -> str:
    """One log line: strategy, replicas, per-replica batch."""
    replicas = strategy.num_replicas_in_sync
    return (
        f"{strategy_name(strategy)} with {replicas} replica(s); global batch {global_batch_size} = "
        f"{global_batch_size // replicas} per replica"
    )


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if type(strategy).__name__ == "_DefaultDistributionStrategy":
        return "DefaultStrategy"
    return type(strategy).__name__
