"""Table 2: our builders against keras.applications, training-step and inference images/s.

Both models of a pair are built with 10 classes and softmax, float32, at the same input (96x96x3:
small enough for a CPU, large enough that no stem is cramped; 224 px would make VGG-16 steps
take tens of seconds on 2 cores), and run on the same batches of 16 with the same code: a plain
`tf.function` step (SGD 0.01, categorical cross-entropy, training=True) and a `tf.function`
forward (training=False). Samples alternate ours, theirs, ours, theirs...; each sample times
`calls_per_sample` consecutive calls after two untimed ones (tracing, warm-up). The ratio is the
median of the paired ratios ours / theirs (> 1: ours is faster).

The pairs are the same networks (equal trainable parameters at 96 px) but for two choices: our
ResNet-50 is built with `layout="v1"` (stride in the first 1x1 convolution, as keras.applications)
and has no conv biases before BatchNorm (26,560 parameters fewer, no effect on the outputs);
ConvNeXt-Tiny's keras model is built without its preprocessing layer, which ours does not have;
its depthwise convolutions are grouped Conv2D layers where ours are DepthwiseConv2D (same weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchContext,
    alternate,
    forward_function,
    median,
    paired_ratio,
    precision_policy,
    release_models,
    seconds_of,
)

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class Pair:
    label: str
    ours: str  # registry name
    ours_options: dict[str, Any]
    theirs: str  # keras.applications constructor
    theirs_options: dict[str, Any]
    note: str = ""  # where the two models are not the same network, said in the row


PAIRS = (
    Pair("ResNet-50", "resnet50", {"layout": "v1"}, "ResNet50", {},
         "ours has no conv biases before BatchNorm (which cancels them): 26,560 parameters fewer"),  # fmt: skip
    Pair("DenseNet-121", "densenet121", {}, "DenseNet121", {}),
    Pair("ConvNeXt-Tiny", "convnext_tiny", {}, "ConvNeXtTiny", {"include_preprocessing": False},
         "keras's model built without its preprocessing layer"),  # fmt: skip
    Pair("MobileNetV2", "mobilenet_v2", {}, "MobileNetV2", {}),
    Pair("VGG-16", "vgg16", {}, "VGG16", {}),
)


@dataclass(frozen=True)
class VsKerasSettings:
    pairs: tuple[Pair, ...]
    image_size: int
    batch_size: int
    repeats: int  # samples per model and mode
    calls_per_sample: int


FULL = VsKerasSettings(PAIRS, image_size=96, batch_size=16, repeats=5, calls_per_sample=2)
QUICK = VsKerasSettings(PAIRS[3:4], image_size=32, batch_size=2, repeats=1, calls_per_sample=1)


def run(context: BenchContext) -> dict[str, Any]:
    settings = QUICK if context.quick else FULL
    rows = []
    for pair in settings.pairs:
        row = measure_pair(pair, settings)
        logger.info("vs keras %s: %s", pair.label, row)
        rows.append(row)
    return {
        "status": "measured",
        "settings": {
            "image_shape": [settings.image_size, settings.image_size, 3],
            "batch_size": settings.batch_size,
            "repeats": settings.repeats,
            "calls_per_sample": settings.calls_per_sample,
            "precision": "float32",
            "optimizer": f"SGD {LEARNING_RATE}",
        },
        "rows": rows,
    }


def measure_pair(pair: Pair, settings: VsKerasSettings) -> dict[str, Any]:
    import architectures
    import keras
    import numpy as np
    import tensorflow as tf

    shape = (settings.image_size, settings.image_size, 3)
    with precision_policy("float32"):
        models = {
            "ours": architectures.build(pair.ours, num_classes=NUM_CLASSES, input_shape=shape, **pair.ours_options),
            "theirs": getattr(keras.applications, pair.theirs)(
                weights=None, input_shape=shape, classes=NUM_CLASSES, **pair.theirs_options
            ),
        }
    images = tf.random.stateless_uniform((settings.batch_size, *shape), seed=[0, 0], maxval=255.0)
    labels = tf.one_hot(tf.range(settings.batch_size) % NUM_CLASSES, NUM_CLASSES)
    images_per_sample = settings.batch_size * settings.calls_per_sample

    def sampler(call) -> Any:
        call()  # traces
        call()  # warm-up

        def rate() -> float:
            return images_per_sample / seconds_of(lambda: [call() for _ in range(settings.calls_per_sample)])

        return rate

    train_calls = {name: _train_call(model, images, labels) for name, model in models.items()}
    train = alternate({name: sampler(call) for name, call in train_calls.items()}, settings.repeats)
    forwards = {name: forward_function(model) for name, model in models.items()}
    infer = alternate(
        {name: sampler(lambda forward=forward: np.asarray(forward(images))) for name, forward in forwards.items()},
        settings.repeats,
    )
    parameters = {name: sum(int(np.prod(weight.shape)) for weight in model.trainable_weights) for name, model in models.items()}
    del models, train_calls, forwards
    release_models()
    return {
        "model": pair.label,
        "note": pair.note,
        "ours": pair.ours + "".join(f", {key}={value!r}" for key, value in pair.ours_options.items()),
        "theirs": f"keras.applications.{pair.theirs}"
        + "".join(f", {key}={value!r}" for key, value in pair.theirs_options.items()),
        "ours_parameters": parameters["ours"],
        "theirs_parameters": parameters["theirs"],
        "train_ours_images_per_second": round(median(train["ours"]), 1),
        "train_theirs_images_per_second": round(median(train["theirs"]), 1),
        "train_ratio": round(paired_ratio(train["ours"], train["theirs"]), 3),
        "inference_ours_images_per_second": round(median(infer["ours"]), 1),
        "inference_theirs_images_per_second": round(median(infer["theirs"]), 1),
        "inference_ratio": round(paired_ratio(infer["ours"], infer["theirs"]), 3),
        "repeats": settings.repeats,
    }


def _train_call(model: Any, images: Any, labels: Any):
    """The same plain training step for any model: forward, cross-entropy, gradients, SGD."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy()

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return lambda: step(images, labels).numpy()
