"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions").

Built as torchvision 0.29 builds it (`torchvision/models/googlenet.py`), so the parameter
count is torchvision's 6,624,904 (13,004,888 with both auxiliary classifiers):

- BatchNorm (eps 0.001) after every convolution, and convolutions without bias; the paper
  predates BatchNorm, torchvision added it for its weights.
- The "5x5" branch of every Inception module convolves 3x3, a known torchvision bug kept
  because its weights were trained that way (`ch5x5` still names the branch).
- Max pools use `ceil_mode=True`, so 224 px runs 112 -> 56 -> 28 -> 14 -> 7.
- The auxiliary classifiers average-pool adaptively to 4x4 (the paper's 5x5/3 pool gives
  4x4 only from 14x14), so they work at any input size.

Inception layers are named after the reference Caffe model's (bvlc_googlenet `inception_4a/
3x3_reduce`): `inception4a_3x3_reduce_conv`, `inception4a_pool_proj_bn`, `inception4a_concat`;
the stem `conv1`..`conv3` and pools `pool1`..`pool4` after torchvision's modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import conv_bn_act
from architectures.registry import Option, register_family

# torchvision's BasicConv2d uses BatchNorm2d(eps=0.001), not the zoo's 1.001e-5.
GOOGLENET_BN_EPSILON = 1e-3


@dataclass(frozen=True)
class InceptionModule:
    """Output channels of one Inception module's four branches (paper Table 1)."""

    name: str  # the paper's label, "3a" .. "5b"
    ch1x1: int  # branch 1: 1x1
    ch3x3_reduce: int  # branch 2: 1x1 reduce, then 3x3
    ch3x3: int
    ch5x5_reduce: int  # branch 3: 1x1 reduce, then "5x5" (3x3 in torchvision)
    ch5x5: int
    pool_proj: int  # branch 4: 3x3/1 max pool, then 1x1 projection


@dataclass(frozen=True)
class GoogLeNetSpec:
    """Inception stages 3, 4 and 5, each entered through a stride-2 max pool (STAGE_POOLS)."""

    stages: tuple[tuple[InceptionModule, ...], ...]
    aux_after: tuple[str, ...]  # modules whose outputs feed the auxiliary classifiers
    dropout: float  # before the main classifier
    aux_dropout: float  # inside each auxiliary classifier


SPECS = {
    "googlenet": GoogLeNetSpec(
        stages=(
            #              name  1x1 3x3red 3x3 5x5red 5x5 pool_proj
            (
                InceptionModule("3a", 64, 96, 128, 16, 32, 32),
                InceptionModule("3b", 128, 128, 192, 32, 96, 64),
            ),
            (
                InceptionModule("4a", 192, 96, 208, 16, 48, 64),
                InceptionModule("4b", 160, 112, 224, 24, 64, 64),
                InceptionModule("4c", 128, 128, 256, 24, 64, 64),
                InceptionModule("4d", 112, 144, 288, 32, 64, 64),
                InceptionModule("4e", 256, 160, 320, 32, 128, 128),
            ),
            (
                InceptionModule("5a", 256, 160, 320, 32, 128, 128),
                InceptionModule("5b", 384, 192, 384, 48, 128, 128),
            ),
        ),
        aux_after=("4a", "4d"),
        dropout=0.2,
        aux_dropout=0.7,
    ),
}

# Pool before each Inception stage (3, 4, 5): torchvision's maxpool2, maxpool3, maxpool4.
STAGE_POOLS = (("pool2", 3), ("pool3", 3), ("pool4", 2))  # (name, pool size), stride 2


def _conv(
    x: keras.KerasTensor, filters: int, kernel_size: int, *, name: str, strides: int = 1
) -> keras.KerasTensor:
    """torchvision's BasicConv2d: conv (no bias) -> BN (eps 0.001) -> ReLU."""
    return conv_bn_act(
        x, filters, kernel_size, strides=strides, bn_epsilon=GOOGLENET_BN_EPSILON, name=name
    )


def _max_pool_ceil(x: keras.KerasTensor, pool_size: int, *, name: str) -> keras.KerasTensor:
    """MaxPool2d(pool_size, stride=2, ceil_mode=True): (batch, H, W, C) ->
    (batch, ceil((H - k) / 2) + 1, ceil((W - k) / 2) + 1, C).

    ceil_mode keeps a last window that overhangs the bottom/right edge (112 -> 56 where
    "valid" gives 55). Padding that overhang with zeros is exact: every tensor pooled here
    comes out of a ReLU (>= 0), and each window still covers at least one real pixel.
    """
    overhang = [(side - pool_size) % 2 for side in x.shape[1:3]]
    if any(overhang):
        x = keras.layers.ZeroPadding2D(((0, overhang[0]), (0, overhang[1])), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool_size, strides=2, name=f"{name}_pool")(x)


def _inception_module(x: keras.KerasTensor, module: InceptionModule) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H, W, ch1x1 + ch3x3 + ch5x5 + pool_proj): four branches,
    concatenated."""
    name = f"inception{module.name}"
    branch1 = _conv(x, module.ch1x1, 1, name=f"{name}_1x1")
    branch2 = _conv(x, module.ch3x3_reduce, 1, name=f"{name}_3x3_reduce")
    branch2 = _conv(branch2, module.ch3x3, 3, name=f"{name}_3x3")
    branch3 = _conv(x, module.ch5x5_reduce, 1, name=f"{name}_5x5_reduce")
    # 3x3, not 5x5: torchvision's known bug, kept because its weights and count rely on it.
    branch3 = _conv(branch3, module.ch5x5, 3, name=f"{name}_5x5")
    # Padding 1 with -inf as in torchvision: Keras "same" max pooling ignores the padding.
    branch4 = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch4 = _conv(branch4, module.pool_proj, 1, name=f"{name}_pool_proj")
    return keras.layers.Concatenate(name=f"{name}_concat")([branch1, branch2, branch3, branch4])


def _stem(images: keras.KerasTensor, small_input: bool) -> keras.KerasTensor:
    """(batch, H, W, 3) -> (batch, H/4, W/4, 192), or (batch, H, W, 192) with small_input.

    small_input swaps the 7x7/2 convolution for a 3x3/1 one and drops pool1, so a 32 px
    image enters stage 3 at 16x16 (after pool2) and leaves stage 5 at 4x4, not 1x1.
    """
    if small_input:
        x = _conv(images, 64, 3, name="conv1")
    else:
        x = _conv(images, 64, 7, strides=2, name="conv1")
        x = _max_pool_ceil(x, 3, name="pool1")
    x = _conv(x, 64, 1, name="conv2")
    return _conv(x, 192, 3, name="conv3")


def googlenet_head(
    spec: GoogLeNetSpec,
    feature_maps: dict[str, keras.KerasTensor],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor | list[keras.KerasTensor]:
    """Global average pool -> dropout 0.2 -> "predictions" (batch, num_classes); with
    aux_logits, the list [predictions, aux1_predictions, aux2_predictions]."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feature_maps["features"])
    x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
    predictions = keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    if not options["aux_logits"]:
        return predictions
    aux_predictions = [
        _aux_classifier(
            feature_maps[f"inception{module_name}"],
            spec,
            num_classes=num_classes,
            classifier_activation=classifier_activation,
            name=f"aux{index}",
        )
        for index, module_name in enumerate(spec.aux_after, start=1)
    ]
    return [predictions, *aux_predictions]


def _aux_classifier(
    x: keras.KerasTensor,
    spec: GoogLeNetSpec,
    *,
    num_classes: int,
    classifier_activation: str | None,
    name: str,
) -> keras.KerasTensor:
    """torchvision's InceptionAux: (batch, H, W, C) -> (batch, num_classes).

    Adaptive average pool to 4x4 -> 1x1 conv 128 + BN + ReLU -> fc 1024 + ReLU ->
    dropout 0.7 -> fc num_classes. Adaptive pooling (torchvision's, not the paper's 5x5/3)
    reaches 4x4 from any map size, so the heads also run at small inputs.
    """
    x = keras.layers.AdaptiveAveragePooling2D((4, 4), name=f"{name}_pool")(x)
    x = _conv(x, 128, 1, name=name)
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name=f"{name}_fc1")(x)
    x = keras.layers.Dropout(spec.aux_dropout, name=f"{name}_dropout")(x)
    return keras.layers.Dense(num_classes, activation=classifier_activation, name=f"{name}_predictions")(x)


@register_family(
    "googlenet",
    SPECS,
    default_size=224,
    reference="Szegedy et al. 2015; torchvision 0.29 googlenet (BatchNorm, 3x3 '5x5' branch)",
    small_input_min_size=8,  # the stride-1 stem leaves three halvings: 8 px ends at 1x1
    options=(
        Option(
            "aux_logits",
            bool,
            False,
            "torchvision's two auxiliary classifiers as extra model outputs (part of the top)",
        ),
    ),
    head=googlenet_head,
)
def googlenet_features(
    spec: GoogLeNetSpec, images: keras.KerasTensor, *, small_input: bool, aux_logits: bool
) -> dict[str, keras.KerasTensor]:
    """(batch, H, W, 3) -> {"features": (batch, H/32, W/32, 1024)} (H/8 with small_input),
    plus the outputs of the modules in `spec.aux_after` ("4a", "4d") when aux_logits is on: the
    auxiliary classifiers are part of the top, so include_top=False leaves them out.
    """
    x = _stem(images, small_input)
    aux_inputs = {}  # the head's auxiliary classifiers read these by module name
    for (pool_name, pool_size), stage in zip(STAGE_POOLS, spec.stages):
        x = _max_pool_ceil(x, pool_size, name=pool_name)
        for module in stage:
            x = _inception_module(x, module)
            if aux_logits and module.name in spec.aux_after:
                aux_inputs[f"inception{module.name}"] = x
    return {"features": x, **aux_inputs}
