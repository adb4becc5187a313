"""TF Serving's configuration files for an export directory, in protobuf text format:

    models.config              `--model_config_file`: a ModelServerConfig naming every SavedModel
                               of the directory with its absolute base path
    batching_parameters.txt    `--batching_parameters_file` (with `--enable_batching`): a
                               BatchingParameters for CPU serving

Batching follows the CPU-only recipe of TF Serving's batching guide
(tensorflow_serving/batching/README.md): one batch thread per core, no waiting for a batch to
fill (batch_timeout_micros 0; the guide suggests trying 1-10 ms, and that 0 may be best), and
for online serving at most as many queued batches as threads.
"""

from __future__ import annotations

import os
from pathlib import Path

SERVING_CONFIG_FILE, BATCHING_FILE = "models.config", "batching_parameters.txt"
# The guide's "max_batch_size to infinity", bounded: a batch of 128 RGB 224 px images is 77 MB of
# float32 input. It must be at least the 32 images `predict --server` sends per request.
MAX_BATCH_SIZE = 128


def serving_config_text(export_dir: Path) -> str:
    """A ModelServerConfig for every model directory in `export_dir` that holds a numbered SavedModel."""
    entries = []
    for model_dir in sorted(export_dir.iterdir()) if export_dir.is_dir() else []:
        if model_dir.is_dir() and any(
            child.name.isdigit() and (child / "saved_model.pb").is_file() for child in model_dir.iterdir()
        ):
            base_path = str(model_dir.resolve()).replace("\\", "\\\\").replace('"', '\\"')
            entries.append(
                f'  config {{\n    name: "{model_dir.name}"\n    base_path: "{base_path}"\n'
                f'    model_platform: "tensorflow"\n  }}\n'
            )
    return "model_config_list {\n" + "".join(entries) + "}\n"


def batching_parameters_text(num_batch_threads: int | None = None) -> str:
    """A BatchingParameters text proto; `num_batch_threads` defaults to this machine's usable cores."""
    threads = num_batch_threads or len(os.sched_getaffinity(0))
    return (
        f"# TF Serving batching for CPUs (the batching guide's CPU-only recipe); written for a machine with\n"
        f"# {threads} cores: set num_batch_threads and max_enqueued_batches to the serving machine's cores.\n"
        f"max_batch_size {{ value: {MAX_BATCH_SIZE} }}\n"
        f"batch_timeout_micros {{ value: 0 }}\n"
        f"num_batch_threads {{ value: {threads} }}\n"
        f"max_enqueued_batches {{ value: {threads} }}\n"
    )
