"""Table 6: ResNet-50 training images/s on GPUs: float32, mixed precision, XLA, MirroredStrategy.

Only where TensorFlow sees a GPU (never in CI); otherwise the table says "not measured (no GPU)".
Each configuration is the pipeline's `Trainer` (default TrainConfig but for the precision, XLA
and the batch) on in-memory synthetic 224x224x3 batches, 1000 classes; all configurations are
built first and their epochs alternate (float32, mixed, float32 + XLA, ...), so the ratio to
float32 is a median of neighbouring samples. "mixed" is what `precision: auto` picks on the GPU
(bfloat16 from compute capability 8.0, float16 before). MirroredStrategy runs over every visible
GPU with the same per-GPU batch (so the global batch grows with the GPU count).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from bench.common import BenchContext, TrainingProbe, alternate, median, paired_ratio, release_models

logger = logging.getLogger(__name__)

NUM_CLASSES = 1000


@dataclass(frozen=True)
class GpuSettings:
    arch: str
    image_size: int
    batch_size_per_gpu: int
    steps_per_call: int
    calls_per_epoch: int
    repeats: int  # epochs per configuration, alternating


FULL = GpuSettings("resnet50", image_size=224, batch_size_per_gpu=128, steps_per_call=10, calls_per_epoch=3, repeats=5)
QUICK = GpuSettings("resnet50", image_size=64, batch_size_per_gpu=8, steps_per_call=2, calls_per_epoch=2, repeats=1)


def run(context: BenchContext) -> dict[str, Any]:
    import tensorflow as tf

    from pipeline.config import TrainConfig
    from pipeline.strategy import make_strategy
    from pipeline.train import resolve_precision

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"status": "not measured (no GPU)", "rows": []}
    settings = QUICK if context.quick else FULL
    mixed = resolve_precision("auto")
    configurations = [  # (label, precision, XLA, MirroredStrategy)
        ("float32", "float32", False, False),
        (mixed, mixed, False, False),
        ("float32 + XLA", "float32", True, False),
        (f"{mixed} + XLA", mixed, True, False),
        (f"{mixed}, MirroredStrategy", mixed, False, True),
    ]
    probes, facts = {}, {}
    for label, precision, xla, mirrored in configurations:
        strategy = make_strategy("mirrored") if mirrored else None
        replicas = strategy.num_replicas_in_sync if strategy else 1
        config = dataclasses.replace(
            TrainConfig(), precision=precision, jit_compile=xla, steps_per_execution=settings.steps_per_call,
            batch_size=settings.batch_size_per_gpu * replicas,
        )  # fmt: skip
        probes[label] = TrainingProbe(
            arch=settings.arch, image_shape=(settings.image_size, settings.image_size, 3), num_classes=NUM_CLASSES,
            train_config=config, calls_per_epoch=settings.calls_per_epoch, strategy=strategy,
        )  # fmt: skip
        facts[label] = {"precision": precision, "xla": xla, "replicas": replicas, "global_batch": config.batch_size}
    samples = alternate({label: probe.epoch_rate for label, probe in probes.items()}, settings.repeats)
    del probes
    release_models()
    rows = [
        {
            "configuration": label,
            **facts[label],
            "images_per_second": round(median(samples[label]), 1),
            "vs_float32": round(paired_ratio(samples[label], samples["float32"]), 3),
        }
        for label in samples
    ]
    for row in rows:
        logger.info("gpu: %s", row)
    return {
        "status": "measured",
        "settings": {**dataclasses.asdict(settings), "classes": NUM_CLASSES},
        "devices": [_describe(gpu) for gpu in gpus],
        "rows": rows,
    }


def _describe(gpu: Any) -> str:
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(gpu)
    capability = ".".join(map(str, details.get("compute_capability", ())))
    return f"{details.get('device_name', gpu.name)} (compute capability {capability or 'unknown'})"
