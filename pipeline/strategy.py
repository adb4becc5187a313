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
chief is the task of type "chief", or worker 0 when the cluster has no chief.
"""

from __future__ import annotations

import json
import logging
import os
import re

import tensorflow as tf

from architectures.errors import UserError

logger = logging.getLogger(__name__)


def make_strategy(name: str, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """Create the strategy; must run before any other TensorFlow op touches the devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi_worker":
        return _multi_worker_strategy(len(gpus))
    if name == "auto" and (slurm := slurm_cluster_resolver(len(gpus))) is not None:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm)
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


def _multi_worker_strategy(local_gpus: int) -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw and (slurm := slurm_cluster_resolver(local_gpus)) is not None:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm)
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
    return tf.distribute.MultiWorkerMirroredStrategy()


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
