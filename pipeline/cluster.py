"""TF_CONFIG for one worker of a cluster: the one place `launch`, `cluster-config` (Kubernetes,
plain SSH) and the README's recipes build it. No TensorFlow here, so a pod's start-up shell
can call it cheaply.

TF_CONFIG is TensorFlow's cluster description for MultiWorkerMirroredStrategy
(tensorflow.org/guide/distributed_training#TF_CONFIG); with no "chief" task, worker 0 is the
chief (`pipeline.strategy.is_chief`).
"""

from __future__ import annotations

import json

from architectures.errors import UserError


def parse_workers(text: str) -> list[str]:
    """Split "host1:port,host2:port" into its addresses, each checked."""
    workers = [address.strip() for address in text.split(",") if address.strip()]
    if not workers:
        raise UserError(f"--workers needs host:port addresses separated by commas, got {text!r}")
    for address in workers:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"worker address {address!r} is not host:port with a port in 1-65535")
    duplicates = sorted({address for address in workers if workers.count(address) > 1})
    if duplicates:
        raise UserError(f"worker addresses appear twice: {', '.join(duplicates)}")
    return workers


def worker_tf_config(workers: list[str], index: int) -> str:
    """The TF_CONFIG JSON of worker `index` in a cluster of `workers` (worker 0 is the chief)."""
    if not 0 <= index < len(workers):
        raise UserError(f"--index must be in 0..{len(workers) - 1} for {len(workers)} worker(s), got {index}")
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})
