"""Table 4c: the default model's float32 training step on this CPU, one setting at a time.

On a CPU without native bfloat16 the main job trains resnet20 in float32. Each row is its own
process, because some settings act only when TensorFlow starts (environment variables): the
default model in the pipeline's `Trainer` on in-memory synthetic 28x28x1 batches
(`TrainingProbe`, input never waits), `REPEATS` epochs of `CALLS` timed calls, median images/s.

`ONEDNN_MAX_CPU_ISA=AVX2` has oneDNN run the kernels an AVX2-only CPU gets (no AVX-512, no
bfloat16): the stand-in for such a CPU on this one, which runs them at its own clock and cache
sizes. The rows after it change one setting each, and "vs AVX2 kernels" divides by that row's
rate, measured in the same bench run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from typing import Any

from bench.common import REPO_ROOT, BenchContext, median

logger = logging.getLogger(__name__)

ARCH = "resnet20"
IMAGE_SHAPE = (28, 28, 1)
AVX2_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
BASELINE = "float32, AVX2 kernels"
# (row, environment, TrainConfig changes); every row is float32 unless it says otherwise.
VARIANTS = (
    ("float32, every instruction set of this CPU", {}, {}),
    ("float32, oneDNN off (Eigen kernels)", {"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    (BASELINE, AVX2_KERNELS, {}),
    ("AVX2 kernels, batch 64", AVX2_KERNELS, {"batch_size": 64}),
    ("AVX2 kernels, batch 256", AVX2_KERNELS, {"batch_size": 256}),
    ("AVX2 kernels, 1 step per call", AVX2_KERNELS, {"steps_per_execution": 1}),
    ("AVX2 kernels, 50 steps per call", AVX2_KERNELS, {"steps_per_execution": 50}),
    ("AVX2 kernels, XLA (jit_compile)", AVX2_KERNELS, {"jit_compile": True}),
    ("AVX2 kernels, 1 inter-op thread", {**AVX2_KERNELS, "TF_NUM_INTEROP_THREADS": "1"}, {}),
    ("AVX2 kernels, 1 intra-op thread", {**AVX2_KERNELS, "TF_NUM_INTRAOP_THREADS": "1"}, {}),
    ("precision auto (bfloat16 where native)", {}, {"precision": "auto"}),
)
REPEATS, CALLS = 3, 4
QUICK_VARIANTS = (VARIANTS[0], VARIANTS[2])
QUICK_REPEATS, QUICK_CALLS = 1, 2
QUICK_TRAIN = {"batch_size": 16, "steps_per_execution": 2}


def run(context: BenchContext) -> dict[str, Any]:
    variants = QUICK_VARIANTS if context.quick else VARIANTS
    repeats, calls = (QUICK_REPEATS, QUICK_CALLS) if context.quick else (REPEATS, CALLS)
    rows = []
    for name, environment, changes in variants:
        train = {"precision": "float32", **(QUICK_TRAIN if context.quick else {}), **changes}
        samples = _probe_process(environment, train, repeats, calls)
        rows.append({"variant": name, "environment": environment, "train": train, "samples": samples,
                     "images_per_second": round(median(samples), 1)})  # fmt: skip
        logger.info("float32 step: %s", rows[-1])
    baseline = next(row["images_per_second"] for row in rows if row["variant"] == BASELINE)
    for row in rows:
        row["vs_baseline"] = round(row["images_per_second"] / baseline, 3)
    return {
        "status": "measured",
        "settings": {"arch": ARCH, "image_shape": list(IMAGE_SHAPE), "repeats": repeats, "calls_per_epoch": calls},
        "rows": rows,
    }


def _probe_process(environment: dict[str, str], train: dict[str, Any], repeats: int, calls: int) -> list[float]:
    command = [sys.executable, "-m", "bench.float32_step", "--probe", json.dumps({"train": train, "repeats": repeats, "calls": calls})]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **environment},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"float32 step probe {environment} {train} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["samples"]


def probe(train_changes: dict[str, Any], repeats: int, calls: int) -> list[float]:
    """In a fresh process: images/s of `repeats` epochs of the default model with these TrainConfig changes."""
    from bench.common import TrainingProbe
    from pipeline.config import TrainConfig

    config = dataclasses.replace(TrainConfig(), **train_changes)
    training = TrainingProbe(arch=ARCH, image_shape=IMAGE_SHAPE, num_classes=10, train_config=config, calls_per_epoch=calls)
    return [training.epoch_rate() for _ in range(repeats)]


if __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    request = json.loads(sys.argv[2])
    print(json.dumps({"samples": probe(request["train"], request["repeats"], request["calls"])}))
