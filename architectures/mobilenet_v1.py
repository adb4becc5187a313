"""MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications").

Copies keras.applications (keras-team/keras `keras/src/applications/mobilenet.py`) layer for
layer: names, weight order, "same" padding, BatchNorm epsilon and momentum, the width
multiplier's rounding. So its ImageNet `.h5` files load by name and randomised
keras.applications weights give the same outputs (tested to 1e-4).

A 3x3 stride-2 conv, then 13 depthwise-separable blocks (3x3 depthwise -> BN -> ReLU6 -> 1x1
pointwise -> BN -> ReLU6), then keras's convolutional classifier (average -> dropout -> 1x1
`conv_preds` -> reshape). Only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU6,
ZeroPadding2D, Reshape and pooling layers, so it converts to TFLite builtin ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.registry import Option, register_family

# keras.applications' BatchNorm settings, whose weights we load: the Keras defaults, epsilon 1e-3.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
RELU6 = 6.0


@dataclass(frozen=True)
class MobileNetV1Spec:
    stem_filters: int  # the first 3x3 stride-2 full convolution
    stages: tuple[tuple[int, int, int], ...]  # (c pointwise filters, n blocks, s first block's stride)


# Howard et al. Table 1, grouped by width (the 13 dw/pw pairs; the last stays at stride 1 as in
# keras.applications and the authors' code).
SPECS = {
    "mobilenet_v1": MobileNetV1Spec(
        stem_filters=32,
        stages=((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)),
    ),
}


def mobilenet_v1_head(
    spec: MobileNetV1Spec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, C) -> average (kept 1x1) -> dropout -> 1x1 conv `conv_preds` with bias ->
    reshape -> activation: (batch, num_classes), as keras.applications builds it."""
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(feature_maps["features"])
    # keras.applications calls the weightless dropout and reshape "dropout" and "reshape_2",
    # which read as auto-names; only weighted layers need its names.
    x = keras.layers.Dropout(options["dropout"], name="conv_preds_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, padding="same", name="conv_preds")(x)
    x = keras.layers.Reshape((num_classes,), name="conv_preds_reshape")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "mobilenet_v1",
    SPECS,
    default_size=224,
    reference="Howard et al. 2017; keras.applications mobilenet.py",
    min_size=32,  # as keras.applications
    small_input_min_size=8,  # total stride 8 with small_input: 8 px ends at 1x1
    options=(
        # keras.applications accepts any alpha without ImageNet weights; its published weights
        # exist for alpha 0.25/0.5/0.75/1.0. Below 1/32 the stem would have no channel.
        Option(
            "alpha",
            float,
            1.0,
            "width multiplier: every layer's filters times alpha, truncated as keras.applications does",
            at_least=1 / SPECS["mobilenet_v1"].stem_filters,
        ),
        Option.rate("dropout", 1e-3, "rate before conv_preds (keras.applications')"),
    ),
    head=mobilenet_v1_head,
)
def mobilenet_v1_features(
    spec: MobileNetV1Spec, images: keras.KerasTensor, *, small_input: bool, alpha: float, dropout: float
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, int(1024 * alpha)).

    small_input=True makes the stem and the first stride-2 stage stride 1, as CIFAR versions
    of MobileNet do: total stride 8, so 32 px ends at 4x4 (batch, H/8, W/8, C). dropout acts
    in the head.
    """
    # keras's "same" with stride 2 pads bottom/right only; copied, as its weights expect it.
    x = keras.layers.Conv2D(
        int(spec.stem_filters * alpha),
        3,
        strides=1 if small_input else 2,
        padding="same",
        use_bias=False,
        name="conv1",
    )(images)
    x = _batch_norm(x, name="conv1_bn")
    x = keras.layers.ReLU(RELU6, name="conv1_relu")(x)
    first_strided_stage = next(index for index, stage in enumerate(spec.stages) if stage[-1] == 2)
    block_id = 1
    for stage_index, (filters, blocks, stride) in enumerate(spec.stages):
        if small_input and stage_index == first_strided_stage:
            stride = 1
        for block in range(blocks):
            x = depthwise_separable_block(
                x, int(filters * alpha), strides=stride if block == 0 else 1, block_id=block_id
            )
            block_id += 1
    return x


def depthwise_separable_block(
    x: keras.KerasTensor, filters: int, *, strides: int, block_id: int
) -> keras.KerasTensor:
    """keras.applications' `_depthwise_conv_block`: (batch, H, W, C) -> (batch, H/s, W/s, filters).

    A stride-2 depthwise conv pads one pixel at the bottom/right (`conv_pad_N`), whatever the
    side's parity, exactly as keras.applications does.
    """
    if strides != 1:
        x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
    x = keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=False,
        name=f"conv_dw_{block_id}",
    )(x)
    x = _batch_norm(x, name=f"conv_dw_{block_id}_bn")
    x = keras.layers.ReLU(RELU6, name=f"conv_dw_{block_id}_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
    x = _batch_norm(x, name=f"conv_pw_{block_id}_bn")
    return keras.layers.ReLU(RELU6, name=f"conv_pw_{block_id}_relu")(x)


def _batch_norm(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)
