"""MobileNet v2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Copies keras.applications (keras-team/keras `keras/src/applications/mobilenet_v2.py`) layer
for layer: names, weight order, explicit padding, BatchNorm epsilon and momentum, the width
multiplier's rounding. So its ImageNet `.h5` files load by name and randomised
keras.applications weights give the same outputs (tested to 1e-4).

A 3x3 stride-2 conv, 17 inverted residual blocks (1x1 expand -> BN -> ReLU6 -> 3x3 depthwise ->
BN -> ReLU6 -> 1x1 linear projection -> BN, plus the input where shapes allow), a 1x1 conv to
1280 channels, average pool and `predictions`. Only Conv2D, DepthwiseConv2D,
BatchNormalization, ReLU6, ZeroPadding2D, Add and pooling layers, so it converts to TFLite
builtin ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.registry import Option, default_head, register_family

# keras.applications' BatchNorm settings, whose weights we load: momentum 0.999 (the TF-Slim
# training recipe), epsilon 1e-3.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999
RELU6 = 6.0


@dataclass(frozen=True)
class MobileNetV2Spec:
    stem_filters: int  # the first 3x3 stride-2 full convolution
    stages: tuple[tuple[int, int, int, int], ...]  # (t expansion, c channels, n blocks, s first stride)
    last_filters: int  # the final 1x1 convolution (Conv_1), not thinned when alpha < 1


# Sandler et al. Table 2.
SPECS = {
    "mobilenet_v2": MobileNetV2Spec(
        stem_filters=32,
        stages=(
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ),
        last_filters=1280,
    ),
}


def mobilenet_v2_head(
    spec: MobileNetV2Spec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, C) -> (batch, num_classes): the shared average pool + dense `predictions`,
    after a dropout only if one is asked for."""
    x = feature_maps["features"]
    if options["dropout"] > 0:
        # No weights, so the keras.applications files still load.
        x = keras.layers.Dropout(options["dropout"], name="predictions_dropout")(x)
    return default_head(
        spec,
        {"features": x},
        num_classes=num_classes,
        classifier_activation=classifier_activation,
        options=options,
    )


@register_family(
    "mobilenet_v2",
    SPECS,
    default_size=224,
    reference="Sandler et al. 2018; keras.applications mobilenet_v2.py",
    min_size=32,  # as keras.applications
    small_input_min_size=8,  # total stride 8 with small_input: 8 px ends at 1x1
    options=(
        # keras.applications accepts any alpha without ImageNet weights; its published weights
        # exist for alpha 0.35/0.5/0.75/1.0/1.3/1.4.
        Option(
            "alpha",
            float,
            1.0,
            "width multiplier: every layer's filters times alpha, rounded to multiples of 8",
            above=0.0,
        ),
        # None in keras.applications; torchvision's recipe uses 0.2.
        Option.rate("dropout", 0.0, "rate before the classifier"),
    ),
    head=mobilenet_v2_head,
)
def mobilenet_v2_features(
    spec: MobileNetV2Spec, images: keras.KerasTensor, *, small_input: bool, alpha: float, dropout: float
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, 1280 or more).

    small_input=True makes the stem and the first stride-2 stage stride 1, as CIFAR versions
    of MobileNet do: total stride 8, so 32 px ends at 4x4 (batch, H/8, W/8, C). dropout acts
    in the head.
    """
    x = keras.layers.Conv2D(
        make_divisible(spec.stem_filters * alpha, 8),
        3,
        strides=1 if small_input else 2,
        padding="same",
        use_bias=False,
        name="Conv1",
    )(images)
    x = _batch_norm(x, name="bn_Conv1")
    x = keras.layers.ReLU(RELU6, name="Conv1_relu")(x)
    first_strided_stage = next(index for index, stage in enumerate(spec.stages) if stage[-1] == 2)
    block_id = 0
    for stage_index, (expansion, filters, blocks, stride) in enumerate(spec.stages):
        if small_input and stage_index == first_strided_stage:
            stride = 1
        for block in range(blocks):
            x = inverted_residual_block(
                x,
                expansion=expansion,
                filters=make_divisible(int(filters * alpha), 8),
                strides=stride if block == 0 else 1,
                block_id=block_id,
            )
            block_id += 1
    # Not thinned below alpha 1 (Sandler et al. section 6.1: "we do not apply the width
    # multiplier to the last convolutional layer"), widened above it.
    last_filters = make_divisible(spec.last_filters * alpha, 8) if alpha > 1.0 else spec.last_filters
    x = keras.layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = _batch_norm(x, name="Conv_1_bn")
    return keras.layers.ReLU(RELU6, name="out_relu")(x)


def inverted_residual_block(
    inputs: keras.KerasTensor, *, expansion: int, filters: int, strides: int, block_id: int
) -> keras.KerasTensor:
    """keras.applications' `_inverted_res_block`: (batch, H, W, C) -> (batch, H/s, W/s, filters).

    Block 0 has no expansion conv and is named `expanded_conv_*`; the others `block_N_*`. A
    stride-2 depthwise conv is preceded by keras's `correct_pad` padding (see `_correct_pad`),
    which its weights were trained with.
    """
    in_channels = inputs.shape[-1]
    x = inputs
    if block_id:
        prefix = f"block_{block_id}_"
        x = keras.layers.Conv2D(
            expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand"
        )(x)
        x = _batch_norm(x, name=f"{prefix}expand_BN")
        x = keras.layers.ReLU(RELU6, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    if strides == 2:
        x = keras.layers.ZeroPadding2D(_correct_pad(x), name=f"{prefix}pad")(x)
    x = keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        use_bias=False,
        padding="same" if strides == 1 else "valid",
        name=f"{prefix}depthwise",
    )(x)
    x = _batch_norm(x, name=f"{prefix}depthwise_BN")
    x = keras.layers.ReLU(RELU6, name=f"{prefix}depthwise_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _batch_norm(x, name=f"{prefix}project_BN")
    if in_channels == filters and strides == 1:
        return keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def make_divisible(value: float, divisor: int) -> int:
    """keras.applications' (and TF-Slim's) `_make_divisible`: the nearest multiple of
    `divisor`, at least `divisor`, and never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _correct_pad(x: keras.KerasTensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """keras.applications' `imagenet_utils.correct_pad` for a 3x3 kernel, ((top, bottom), (left,
    right)): one pixel at the bottom/right of an even side, one on each side of an odd one."""
    height, width = x.shape[1:3]
    return ((height % 2, 1), (width % 2, 1))


def _batch_norm(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)
