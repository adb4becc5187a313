"""Table 1, the zoo: parameters, GMACs, CPU inference and training images/s of every variant.

Parameters and GMACs are at the variant's default input (`architectures.zoo_table.zoo_row`, the
`models` command's numbers): 1000 classes for the ImageNet families, 10 for the 32-px families
(the CIFAR convention their references count with). Speed is on a small input, 32x32x3 with
`small_input=True` and 10 classes, so that every variant, ViT-B and ConvNeXt-L included, runs
on a CPU in seconds:
- inference: a `tf.function` forward (training=False) on one batch, float32; after an untimed
  tracing call and a warm-up call, the median images/s of `inference_repeats` calls;
- training (the 32-px variants only): the pipeline's `Trainer` with the default `TrainConfig`
  (batch 128, SGD, `precision: auto`) on in-memory synthetic batches; the median of
  `training_repeats` epochs' timed images/s (see `common.TrainingProbe`).
A variant whose calls are slow gets fewer repeats (and, for training, fewer steps per call) so
that it stays within the per-variant cap; the row records how many it got.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchContext,
    TrainingProbe,
    forward_function,
    median,
    precision_policy,
    release_models,
    seconds_of,
)

logger = logging.getLogger(__name__)

SMALL_INPUT_SHAPE = (32, 32, 3)
SPEED_CLASSES = 10
SMALL_FAMILY_MAX_SIDE = 32  # variants whose default input is at most this are trained (32-px families)
TRAINING_COST_PER_FORWARD = 3.0  # a training step costs about 3 forward passes (forward, two backward matmuls)


@dataclass(frozen=True)
class ZooSettings:
    variants: tuple[str, ...] | None  # None: every registered variant
    inference_batch: int
    inference_repeats: int  # timed calls per variant, at most
    inference_cap_seconds: float  # timed calls per variant stop adding repeats past this
    training_repeats: int  # timed epochs per variant, at most
    training_cap_seconds: float
    training_overrides: dict[str, Any]  # changes to the default TrainConfig (quick runs only)


FULL = ZooSettings(
    variants=None, inference_batch=32, inference_repeats=5, inference_cap_seconds=60.0,
    training_repeats=5, training_cap_seconds=120.0, training_overrides={},
)  # fmt: skip
QUICK = ZooSettings(
    variants=("resnet20", "mobilenet_v2"), inference_batch=4, inference_repeats=1, inference_cap_seconds=5.0,
    training_repeats=1, training_cap_seconds=10.0, training_overrides={"batch_size": 16, "steps_per_execution": 2},
)  # fmt: skip


def run(context: BenchContext) -> dict[str, Any]:
    import architectures

    settings = QUICK if context.quick else FULL
    variants = list(settings.variants or architectures.names())
    rows = []
    for index, name in enumerate(variants, start=1):
        row = measure_variant(name, settings)
        logger.info("zoo %d/%d %s: %s", index, len(variants), name, row)
        rows.append(row)
    return {
        "status": "measured",
        "settings": {
            "small_input_shape": list(SMALL_INPUT_SHAPE),
            "inference_batch": settings.inference_batch,
            "inference_repeats": settings.inference_repeats,
            "inference_cap_seconds": settings.inference_cap_seconds,
            "training_repeats": settings.training_repeats,
            "training_cap_seconds": settings.training_cap_seconds,
            "training_config": dataclasses.asdict(_training_config(settings)),
        },
        "rows": rows,
    }


def _training_config(settings: ZooSettings):
    from pipeline.config import TrainConfig

    return dataclasses.replace(TrainConfig(), **settings.training_overrides)


def measure_variant(name: str, settings: ZooSettings) -> dict[str, Any]:
    """One row: size at the default input, inference speed, and training speed for 32-px variants."""
    import architectures
    from architectures.zoo_table import zoo_row

    variant = architectures.info(name)
    small_family = variant.default_size <= SMALL_FAMILY_MAX_SIDE
    classes = SPEED_CLASSES if small_family else 1000
    with precision_policy("float32"):
        size = zoo_row(name, num_classes=classes)  # builds at the default input, then clears the session
        inference = _inference_rate(name, settings)
    row: dict[str, Any] = {
        "name": name,
        "family": variant.family,
        "default_input": size.default_input,
        "classes": classes,
        "parameters": size.trainable_parameters,
        "gmacs": round(size.gmacs, 4),
        **inference,
        "training_images_per_second": None,
        "training_precision": None,
        "training_steps_per_call": None,
        "training_repeats": 0,
    }
    if small_family:
        row.update(_training_rate(name, settings, inference["inference_images_per_second"]))
    return row


def _inference_rate(name: str, settings: ZooSettings) -> dict[str, Any]:
    import architectures
    import numpy as np
    import tensorflow as tf

    model = architectures.build(name, num_classes=SPEED_CLASSES, input_shape=SMALL_INPUT_SHAPE, small_input=True)
    forward = forward_function(model)
    images = tf.random.stateless_uniform((settings.inference_batch, *SMALL_INPUT_SHAPE), seed=[0, 0])

    def call() -> None:
        np.asarray(tf.nest.flatten(forward(images))[0])  # GoogLeNet returns its auxiliary heads too

    call()  # traces
    warmup_seconds = seconds_of(call)
    repeats = max(1, min(settings.inference_repeats, int(settings.inference_cap_seconds / warmup_seconds)))
    rates = [settings.inference_batch / seconds_of(call) for _ in range(repeats)]
    del model, forward
    release_models()
    return {"inference_images_per_second": round(median(rates), 1), "inference_repeats": repeats}


def _training_rate(name: str, settings: ZooSettings, inference_rate: float) -> dict[str, Any]:
    """Training images/s within the cap: fewer repeats, then fewer steps per call, for slow variants.

    The cost of a step is estimated from the measured inference rate (a training step is about
    three forward passes); an epoch is two calls, the first untimed.
    """
    config = _training_config(settings)
    step_seconds = config.batch_size * TRAINING_COST_PER_FORWARD / inference_rate
    epochs_in_cap = settings.training_cap_seconds / (2 * config.steps_per_execution * step_seconds)
    repeats = max(1, min(settings.training_repeats, int(epochs_in_cap)))
    steps_per_call = max(1, min(config.steps_per_execution, int(settings.training_cap_seconds / (2 * repeats * step_seconds))))
    config = dataclasses.replace(config, steps_per_execution=steps_per_call)
    probe = TrainingProbe(arch=name, image_shape=SMALL_INPUT_SHAPE, num_classes=SPEED_CLASSES, train_config=config)
    rates = [probe.epoch_rate() for _ in range(repeats)]
    precision = probe.precision
    del probe
    release_models()
    return {
        "training_images_per_second": round(median(rates), 1),
        "training_precision": precision,
        "training_steps_per_call": steps_per_call,
        "training_repeats": repeats,
    }
