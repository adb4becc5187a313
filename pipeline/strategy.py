"""The `tf.distribute` strategy of a run, and which process is the chief.

    auto          all local GPUs with MirroredStrategy when there are several, else the default
    default       tf.distribute's default strategy (one device, no distribution)
    one_device    OneDeviceStrategy on the first GPU, else the CPU
    mirrored      MirroredStrategy over local GPUs; on a CPU-only machine over
                  `cpu_replicas` logical CPU devices (to try distribution, and for tests)
    multi_worker  MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment variable

Only the chief writes checkpoints, logs, plots and exports (TF Model Garden's rule): the
chief is the task of type "chief", or worker 0 when the cluster has no chief.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from architectures.errors import UserError

logger = logging.getLogger(__name__)


def make_strategy(name: str, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """Create the strategy; must run before any other TensorFlow op touches the devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi_worker":
        return _multi_worker_strategy()
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


def _multi_worker_strategy() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError("strategy multi_worker needs the TF_CONFIG environment variable (see README, 'Multi-worker')")
    try:
        tf_config = json.loads(raw)
        task = tf_config["task"]
        cluster = tf_config["cluster"]
        _ = task["type"], task["index"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"TF_CONFIG must be JSON with 'cluster' and 'task' {{type, index}}; got {raw!r}") from None
    logger.info("multi-worker: %s %s of cluster %s", task["type"], task["index"], cluster)
    return tf.distribute.MultiWorkerMirroredStrategy()


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
