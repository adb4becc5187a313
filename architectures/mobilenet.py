"""MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications") and MobileNet v2 (Sandler et al. 2018, "MobileNetV2: Inverted
Residuals and Linear Bottlenecks").

Both copy keras.applications (keras-team/keras `keras/src/applications/mobilenet.py` and
`mobilenet_v2.py`) layer for layer: names, weight order, "same"/explicit padding, BatchNorm
epsilon and momentum, the width multiplier's rounding. So its ImageNet `.h5` files load by
name and randomised keras.applications weights give the same outputs (tested to 1e-4).

v1: a 3x3 stride-2 conv, then 13 depthwise-separable blocks (3x3 depthwise -> BN -> ReLU6 ->
1x1 pointwise -> BN -> ReLU6), then keras's convolutional classifier (average -> dropout ->
1x1 `conv_preds` -> reshape).
v2: a 3x3 stride-2 conv, 17 inverted residual blocks (1x1 expand -> BN -> ReLU6 -> 3x3
depthwise -> BN -> ReLU6 -> 1x1 linear projection -> BN, plus the input where shapes allow),
a 1x1 conv to 1280 channels, average pool and `predictions`.

Only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU(6), ZeroPadding2D, Add, Reshape and
pooling layers, so both convert to TFLite builtin ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.errors import UserError
from architectures.registry import default_head, register_family

# keras.applications' BatchNorm settings, whose weights we load: v1 uses the Keras defaults,
# v2 sets momentum 0.999 explicitly (the TF-Slim training recipe). Epsilon is 1e-3 for both.
BN_EPSILON = 1e-3
V1_BN_MOMENTUM = 0.99
V2_BN_MOMENTUM = 0.999
RELU6 = 6.0


@dataclass(frozen=True)
class MobileNetV1Spec:
    stem_filters: int  # the first 3x3 stride-2 full convolution
    stages: tuple[tuple[int, int, int], ...]  # (c pointwise filters, n blocks, s first block's stride)
    dropout: float  # keras.applications' default rate before conv_preds


@dataclass(frozen=True)
class MobileNetV2Spec:
    stem_filters: int  # the first 3x3 stride-2 full convolution
    stages: tuple[tuple[int, int, int, int], ...]  # (t expansion, c channels, n blocks, s first stride)
    last_filters: int  # the final 1x1 convolution (Conv_1), not thinned when alpha < 1
    dropout: float  # none in keras.applications (torchvision uses 0.2)


# v1: Howard et al. Table 1, grouped by width (the 13 dw/pw pairs; the last stays at stride 1
# as in keras.applications and the authors' code). v2: Sandler et al. Table 2.
SPECS = {
    "mobilenet_v1": MobileNetV1Spec(
        stem_filters=32,
        stages=((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)),
        dropout=1e-3,
    ),
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
        dropout=0.0,
    ),
}


def _check_options(
    spec: MobileNetV1Spec | MobileNetV2Spec, small_input: Any, alpha: Any, dropout: Any
) -> None:
    if not isinstance(small_input, bool):
        raise UserError(f"small_input must be True or False, got {small_input!r}")
    # keras.applications accepts any alpha without ImageNet weights; its published weights
    # exist for v1 alpha 0.25/0.5/0.75/1.0 and v2 0.35/0.5/0.75/1.0/1.3/1.4.
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise UserError(f"mobilenet alpha (width multiplier) must be a positive number, got {alpha!r}")
    if isinstance(spec, MobileNetV1Spec) and int(spec.stem_filters * alpha) < 1:
        raise UserError(
            f"mobilenet_v1 alpha must be at least {1 / spec.stem_filters} so every layer keeps a channel, "
            f"got {alpha!r}"
        )
    if dropout is not None and (
        isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0
    ):
        raise UserError(f"mobilenet dropout must be None (the reference rate) or in [0, 1), got {dropout!r}")


def mobilenet_head(
    spec: MobileNetV1Spec | MobileNetV2Spec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, C) -> (batch, num_classes), each version as keras.applications builds it.

    v1: average (kept 1x1) -> dropout -> 1x1 conv `conv_preds` with bias -> reshape -> activation.
    v2: the shared average pool + dense `predictions`, after a dropout only if one is asked for.
    """
    dropout = spec.dropout if options["dropout"] is None else options["dropout"]
    x = feature_maps["features"]
    if isinstance(spec, MobileNetV2Spec):
        if dropout > 0:
            # No weights, so the keras.applications files still load.
            x = keras.layers.Dropout(dropout, name="predictions_dropout")(x)
        return default_head(
            spec,
            {"features": x},
            num_classes=num_classes,
            classifier_activation=classifier_activation,
            options=options,
        )
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
    # keras.applications calls the weightless dropout and reshape "dropout" and "reshape_2",
    # which read as auto-names; only weighted layers need its names.
    x = keras.layers.Dropout(dropout, name="conv_preds_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, padding="same", name="conv_preds")(x)
    x = keras.layers.Reshape((num_classes,), name="conv_preds_reshape")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "mobilenet",
    SPECS,
    default_size=224,
    reference="Howard et al. 2017; Sandler et al. 2018; keras.applications mobilenet.py, mobilenet_v2.py",
    min_size=32,  # as keras.applications
    small_input_min_size=8,  # total stride 8 with small_input: 8 px ends at 1x1
    head=mobilenet_head,
)
def mobilenet_features(
    spec: MobileNetV1Spec | MobileNetV2Spec,
    images: keras.KerasTensor,
    *,
    small_input: bool = False,
    alpha: float = 1.0,
    dropout: float | None = None,
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, C): C = 1024 * alpha (v1), 1280 (v2, alpha <= 1).

    alpha is the width multiplier: every layer's filters times alpha, rounded as
    keras.applications rounds them (v1 truncates; v2 rounds to multiples of 8).
    dropout is the rate before the classifier: None keeps the reference's (v1 0.001 as
    keras.applications, v2 none); set e.g. 0.2 for torchvision's v2 recipe.
    small_input=True makes the stem and the first stride-2 stage stride 1, as CIFAR versions
    of MobileNet do: total stride 8, so 32 px ends at 4x4 (batch, H/8, W/8, C).
    """
    _check_options(spec, small_input, alpha, dropout)
    if isinstance(spec, MobileNetV1Spec):
        return _v1_features(spec, images, alpha, small_input)
    return _v2_features(spec, images, alpha, small_input)


def _v1_features(
    spec: MobileNetV1Spec, images: keras.KerasTensor, alpha: float, small_input: bool
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, int(1024 * alpha)) (H/8 with small_input)."""
    # keras's "same" with stride 2 pads bottom/right only; copied, as its weights expect it.
    x = keras.layers.Conv2D(
        int(spec.stem_filters * alpha),
        3,
        strides=1 if small_input else 2,
        padding="same",
        use_bias=False,
        name="conv1",
    )(images)
    x = _batch_norm(x, V1_BN_MOMENTUM, name="conv1_bn")
    x = keras.layers.ReLU(RELU6, name="conv1_relu")(x)
    block_id = 1
    for stage_index, (filters, blocks, stride) in enumerate(spec.stages):
        if small_input and stage_index == _first_strided_stage(spec):
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
    x = _batch_norm(x, V1_BN_MOMENTUM, name=f"conv_dw_{block_id}_bn")
    x = keras.layers.ReLU(RELU6, name=f"conv_dw_{block_id}_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
    x = _batch_norm(x, V1_BN_MOMENTUM, name=f"conv_pw_{block_id}_bn")
    return keras.layers.ReLU(RELU6, name=f"conv_pw_{block_id}_relu")(x)


def _v2_features(
    spec: MobileNetV2Spec, images: keras.KerasTensor, alpha: float, small_input: bool
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, 1280 or more) (H/8 with small_input)."""
    x = keras.layers.Conv2D(
        make_divisible(spec.stem_filters * alpha, 8),
        3,
        strides=1 if small_input else 2,
        padding="same",
        use_bias=False,
        name="Conv1",
    )(images)
    x = _batch_norm(x, V2_BN_MOMENTUM, name="bn_Conv1")
    x = keras.layers.ReLU(RELU6, name="Conv1_relu")(x)
    block_id = 0
    for stage_index, (expansion, filters, blocks, stride) in enumerate(spec.stages):
        if small_input and stage_index == _first_strided_stage(spec):
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
    x = _batch_norm(x, V2_BN_MOMENTUM, name="Conv_1_bn")
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
        x = _batch_norm(x, V2_BN_MOMENTUM, name=f"{prefix}expand_BN")
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
    x = _batch_norm(x, V2_BN_MOMENTUM, name=f"{prefix}depthwise_BN")
    x = keras.layers.ReLU(RELU6, name=f"{prefix}depthwise_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _batch_norm(x, V2_BN_MOMENTUM, name=f"{prefix}project_BN")
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


def _batch_norm(x: keras.KerasTensor, momentum: float, *, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=name)(x)


def _first_strided_stage(spec: MobileNetV1Spec | MobileNetV2Spec) -> int:
    """Index of the first stage whose stride is 2 (the one small_input keeps at stride 1)."""
    return next(index for index, stage in enumerate(spec.stages) if stage[-1] == 2)
