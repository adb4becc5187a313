"""VGG (Simonyan and Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale
Image Recognition"); layer names as keras.applications VGG16/VGG19, counts as torchvision.

Reference implementations: keras-team/keras `keras/src/applications/vgg16.py` and
`vgg19.py` (names, weight order) and pytorch/vision `torchvision/models/vgg.py` (the
configurations A/B/D/E, the `_bn` variants, dropout in the classifier).

Five stages of 3x3 convolutions ("same" padding, bias, ReLU), each closed by a 2x2 max
pool, then Flatten -> fc1 4096 -> fc2 4096 -> predictions. The non-BN variants name every
weighted layer exactly as keras.applications does (`block1_conv1` ... `block5_conv3`,
`fc1`, `fc2`, `predictions`), so its legacy `.h5` ImageNet weights load; keras.applications
has no VGG11/13, so vgg11/vgg13 simply follow the same grammar. The `_bn` variants add
BatchNorm between each convolution (which keeps its bias, as in torchvision) and its ReLU:
`block1_conv1` -> `block1_conv1_bn` -> `block1_conv1_relu`.

The flatten head is sized by the input: fc1 has (H/32 * W/32 * 512) x 4096 weights, 25088 x
4096 at 224 px as in the paper and keras.applications. torchvision instead pools to 7x7
(`AdaptiveAvgPool2d`) so fc1 never changes; we keep keras.applications' layout, whose
weights we load, so a model built at another size has a different fc1 (same parameter
count as torchvision only at 224 px). With small_input, block5_pool is dropped and fc1 has
H/16 * W/16 * 512 inputs: 2048 at 32 px, 512 at 28 px. The head's `flatten` is
keras.applications' name, which happens to equal Keras's auto-name for a first Flatten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import BN_EPSILON
from architectures.registry import Option, register_family

FC_UNITS = 4096  # fc1 and fc2 width, Simonyan and Zisserman Table 1


@dataclass(frozen=True)
class VGGSpec:
    configuration: str  # the paper's Table 1 column: "A" (11 layers), "B" (13), "D" (16), "E" (19)
    stage_depths: tuple[int, ...]  # 3x3 convolutions per stage
    batch_norm: bool = False  # BatchNorm after every convolution (torchvision's `_bn` variants)
    stage_widths: tuple[int, ...] = (64, 128, 256, 512, 512)  # filters per stage


SPECS = {
    "vgg11": VGGSpec("A", (1, 1, 2, 2, 2)),
    "vgg13": VGGSpec("B", (2, 2, 2, 2, 2)),
    "vgg16": VGGSpec("D", (2, 2, 3, 3, 3)),
    "vgg19": VGGSpec("E", (2, 2, 4, 4, 4)),
    "vgg11_bn": VGGSpec("A", (1, 1, 2, 2, 2), batch_norm=True),
    "vgg13_bn": VGGSpec("B", (2, 2, 2, 2, 2), batch_norm=True),
    "vgg16_bn": VGGSpec("D", (2, 2, 3, 3, 3), batch_norm=True),
    "vgg19_bn": VGGSpec("E", (2, 2, 4, 4, 4), batch_norm=True),
}


def _conv(x: keras.KerasTensor, filters: int, batch_norm: bool, *, name: str) -> keras.KerasTensor:
    """3x3 "same" conv with bias, then (BatchNorm and) ReLU: (batch, H, W, C) -> (batch, H, W, filters)."""
    if not batch_norm:
        # ReLU inside the Conv2D, exactly as keras.applications builds it.
        return keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=name)(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def vgg_head(
    spec: VGGSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, 512) -> Flatten -> fc1 4096 -> fc2 4096 -> (batch, num_classes).

    Dropout after fc1 and fc2 as in the paper and torchvision; it has no weights, so
    keras.applications' files (which have no dropout) still load.
    """
    # keras.applications calls this "flatten", which reads as an auto-name here; it has no weights.
    x = keras.layers.Flatten(name="head_flatten")(feature_maps["features"])
    for index in (1, 2):
        x = keras.layers.Dense(FC_UNITS, activation="relu", name=f"fc{index}")(x)
        x = keras.layers.Dropout(options["dropout"], name=f"fc{index}_dropout")(x)
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)


@register_family(
    "vgg",
    SPECS,
    default_size=224,
    reference="Simonyan and Zisserman 2015; keras.applications VGG16/VGG19, torchvision vgg",
    # Five 2x2 pools: 32 px ends at 1x1. With small_input the last pool is dropped, so four
    # pools need at least 16 px (16 -> 1x1; 28 -> 1x1; 32 -> 2x2).
    min_size=32,
    small_input_min_size=16,
    options=(
        Option.rate("dropout", 0.5, "rate after fc1 and fc2 (0 disables them)"),
    ),
    head=vgg_head,
)
def vgg_features(
    spec: VGGSpec, images: keras.KerasTensor, *, small_input: bool, dropout: float
) -> keras.KerasTensor:
    """(batch, H, W, 3) -> (batch, H/32, W/32, 512); with small_input, (batch, H/16, W/16, 512).

    small_input drops block5_pool so a 32 px image keeps a 2x2 map for the flatten head.
    dropout acts in the head.
    """
    x = images
    last_stage = len(spec.stage_depths)
    for stage, (depth, filters) in enumerate(zip(spec.stage_depths, spec.stage_widths), start=1):
        for conv in range(1, depth + 1):
            x = _conv(x, filters, spec.batch_norm, name=f"block{stage}_conv{conv}")
        if not (small_input and stage == last_stage):
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{stage}_pool")(x)
    return x
