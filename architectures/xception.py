"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions").

Copies keras.applications (keras-team/keras `keras/src/applications/xception.py`) layer for
layer: names, weight order, padding, BatchNorm defaults, so its ImageNet `.h5` file loads and
randomised keras.applications weights give the same outputs (tested). keras.applications
leaves the four residual 1x1 convolutions, their BatchNorms and the Adds auto-named
(`conv2d`, `batch_normalization`, `add`, ... in Keras 3; `conv2d_1` ... in the Keras 2 `.h5`
files); we name them `blockN_residual_conv`, `blockN_residual_bn`, `blockN_add`.

The paper's Figure 5, as keras.applications numbers the blocks:

    entry flow   block1      3x3/2 conv 32, 3x3 conv 64 (both "valid")   299 -> 147
                 block2-4    [sep 3x3 -> sep 3x3 -> 3x3/2 max pool] + 1x1/2 conv residual
                             128, 256, 728 filters                        147 -> 19
    middle flow  block5-12   [ReLU -> sep 3x3] x 3 + identity, 728 filters
    exit flow    block13     sep 728 -> sep 1024 -> 3x3/2 pool + 1x1/2 residual  19 -> 10
                 block14     sep 1536 -> ReLU -> sep 2048 -> ReLU        (batch, 10, 10, 2048)

Separable convolutions are keras's SeparableConv2D (one layer holding the depthwise and the
pointwise kernel, as the weight files store them); TFLite lowers it to the builtin
DEPTHWISE_CONV_2D and CONV_2D ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from architectures.registry import register_family

# keras.applications Xception uses the Keras BatchNorm defaults; its weights expect them.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99


@dataclass(frozen=True)
class XceptionSpec:
    stem_filters: tuple[int, int]  # block1's two full 3x3 convolutions
    entry_flow: tuple[tuple[int, int], ...]  # blocks 2-4: the two separable convs of each downsampling block
    middle_blocks: int  # blocks of three separable convs with an identity residual
    middle_filters: int
    exit_flow: tuple[tuple[int, int], ...]  # block13: like the entry blocks
    final_filters: tuple[int, int]  # block14's two separable convs, each followed by ReLU


SPECS = {
    "xception": XceptionSpec(
        stem_filters=(32, 64),
        entry_flow=((128, 128), (256, 256), (728, 728)),
        middle_blocks=8,
        middle_filters=728,
        exit_flow=((728, 1024),),
        final_filters=(1536, 2048),
    ),
}


@register_family(
    "xception",
    SPECS,
    default_size=299,
    reference="Chollet 2017; keras.applications xception.py",
    min_size=71,  # as keras.applications
    small_input_min_size=8,  # 8 -> 6 -> 4 after the stride-1 stem, then three halvings to 1
)
def xception_features(spec: XceptionSpec, images: keras.KerasTensor, *, small_input: bool) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, ~H/32, ~W/32, 2048) (10x10 at 299 px).

    small_input=True gives block1_conv1 stride 1 and removes block2's downsampling (no pool,
    a stride-1 residual conv): total stride 8, so 32 px ends at 4x4 and 28 px at 3x3. The
    weighted layers and their shapes do not change.
    """
    x = images
    for index, filters in enumerate(spec.stem_filters, start=1):
        strides = 2 if index == 1 and not small_input else 1
        x = keras.layers.Conv2D(filters, 3, strides=strides, use_bias=False, name=f"block1_conv{index}")(x)
        x = _batch_norm(x, name=f"block1_conv{index}_bn")
        x = keras.layers.Activation("relu", name=f"block1_conv{index}_act")(x)

    block_number = 2
    for filters in spec.entry_flow:
        # block2 follows the stem's ReLU, so it starts without one.
        downsample = not (small_input and block_number == 2)
        x = downsampling_block(
            x, filters, pre_activation=block_number != 2, downsample=downsample, name=f"block{block_number}"
        )
        block_number += 1
    for _ in range(spec.middle_blocks):
        x = middle_block(x, spec.middle_filters, name=f"block{block_number}")
        block_number += 1
    for filters in spec.exit_flow:
        x = downsampling_block(x, filters, pre_activation=True, downsample=True, name=f"block{block_number}")
        block_number += 1

    for index, filters in enumerate(spec.final_filters, start=1):
        x = _separable_conv_bn(x, filters, name=f"block{block_number}_sepconv{index}")
        x = keras.layers.Activation("relu", name=f"block{block_number}_sepconv{index}_act")(x)
    return x


def downsampling_block(
    x: keras.KerasTensor,
    filters: tuple[int, int],
    *,
    pre_activation: bool,
    downsample: bool,
    name: str,
) -> keras.KerasTensor:
    """[(ReLU) sep 3x3 -> ReLU -> sep 3x3 -> 3x3/2 max pool] + 1x1/2 conv-BN residual:
    (batch, H, W, C) -> (batch, ceil(H/2), ceil(W/2), filters[1]); without downsample, no pool
    and a stride-1 residual: (batch, H, W, filters[1]).

    The residual is built first, as keras.applications builds it, so the layer order (by which
    Keras 3 reads a legacy `.h5` file) matches.
    """
    strides = 2 if downsample else 1
    residual = keras.layers.Conv2D(
        filters[1], 1, strides=strides, padding="same", use_bias=False, name=f"{name}_residual_conv"
    )(x)
    residual = _batch_norm(residual, name=f"{name}_residual_bn")
    if pre_activation:
        x = keras.layers.Activation("relu", name=f"{name}_sepconv1_act")(x)
    x = _separable_conv_bn(x, filters[0], name=f"{name}_sepconv1")
    x = keras.layers.Activation("relu", name=f"{name}_sepconv2_act")(x)
    x = _separable_conv_bn(x, filters[1], name=f"{name}_sepconv2")
    if downsample:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return keras.layers.Add(name=f"{name}_add")([x, residual])


def middle_block(x: keras.KerasTensor, filters: int, *, name: str) -> keras.KerasTensor:
    """[ReLU -> sep 3x3 -> BN] x 3 plus the input: (batch, H, W, C) -> (batch, H, W, C), C = filters."""
    residual = x
    for index in (1, 2, 3):
        x = keras.layers.Activation("relu", name=f"{name}_sepconv{index}_act")(x)
        x = _separable_conv_bn(x, filters, name=f"{name}_sepconv{index}")
    return keras.layers.Add(name=f"{name}_add")([x, residual])


def _separable_conv_bn(x: keras.KerasTensor, filters: int, *, name: str) -> keras.KerasTensor:
    """3x3 "same" depthwise-separable conv without bias, then BN (`{name}`, `{name}_bn`)."""
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return _batch_norm(x, name=f"{name}_bn")


def _batch_norm(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)
