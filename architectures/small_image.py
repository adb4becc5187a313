"""CIFAR-sized networks for 28-32 px images: the CIFAR ResNets, Wide ResNets, DenseNet-BC.

- ResNet-20/32/44/56/110: He et al. 2016, "Deep Residual Learning for Image Recognition",
  section 4.2. Post-activation basic blocks, option A (parameter-free) shortcuts; the
  zero channels are concatenated after the identity as in facebook/fb.resnet.torch
  (`models/resnet.lua`, shortcutType "A").
- WRN-d-k: Zagoruyko and Komodakis 2016, "Wide Residual Networks"; reference
  szagoruyko/wide-residual-networks (`pytorch/resnet.py`): pre-activation blocks without
  convolution biases, the 1x1 shortcut convolution reading the pre-activated input.
- DenseNet-BC: Huang et al. 2017, "Densely Connected Convolutional Networks", section 3;
  reference liuzhuang13/DenseNet (`models/densenet.lua`).

All three keep the input resolution in the first stage and halve it twice: (batch, 32, 32, C)
-> (batch, 8, 8, channels). Convolutions start from He-normal weights, as all three papers
initialise them (He et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
from keras import ops

from architectures.blocks import BN_EPSILON
from architectures.errors import UserError
from architectures.registry import register_family

STAGE_WIDTHS = (16, 32, 64)  # ResNet and WRN (times k) stage widths, strides 1, 2, 2
DENSENET_BC_COMPRESSION = 0.5  # transition layers halve the channels (the "C" in BC)
DENSENET_BC_BOTTLENECK = 4  # bottleneck 1x1 convolution outputs 4 * growth_rate channels


@dataclass(frozen=True)
class SmallImageSpec:
    kind: Literal["resnet_cifar", "wide_resnet", "densenet_bc"]
    blocks_per_stage: int  # residual blocks (ResNet, WRN) or bottleneck layers (DenseNet-BC) per stage
    widen_factor: int = 1  # WRN's k: stage widths 16k, 32k, 64k
    growth_rate: int = 0  # DenseNet's k: channels each bottleneck layer adds


SPECS = {
    # He et al. 2016 section 4.2: depth 6n + 2, n blocks per stage.
    "resnet20": SmallImageSpec("resnet_cifar", 3),
    "resnet32": SmallImageSpec("resnet_cifar", 5),
    "resnet44": SmallImageSpec("resnet_cifar", 7),
    "resnet56": SmallImageSpec("resnet_cifar", 9),
    "resnet110": SmallImageSpec("resnet_cifar", 18),
    # Zagoruyko and Komodakis 2016, WRN-d-k: depth 6n + 4, n blocks per stage.
    "wrn_16_4": SmallImageSpec("wide_resnet", 2, widen_factor=4),
    "wrn_28_10": SmallImageSpec("wide_resnet", 4, widen_factor=10),
    "wrn_40_4": SmallImageSpec("wide_resnet", 6, widen_factor=4),
    # Huang et al. 2017, DenseNet-BC (L, k): depth 6n + 4, n two-convolution layers per block.
    "densenet_bc_100_12": SmallImageSpec("densenet_bc", 16, growth_rate=12),
}


@register_family(
    "small_image",
    SPECS,
    default_size=32,
    min_size=8,
    small_input_min_size=8,
    reference=(
        "He et al. 2016 (CIFAR ResNets); Zagoruyko and Komodakis 2016 (WRN); Huang et al. 2017 "
        "(DenseNet-BC); fb.resnet.torch, szagoruyko/wide-residual-networks, liuzhuang13/DenseNet"
    ),
)
def small_image_features(
    spec: SmallImageSpec,
    images: keras.KerasTensor,
    *,
    small_input: bool = False,
    dropout: float = 0.0,
) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, channels), before the shared head.

    small_input is accepted for the zoo's one signature and changes nothing: these stems
    are already a stride-1 3x3 convolution made for 32 px images.
    dropout is the rate of the dropout layers each paper adds: between the two convolutions
    of every wide block (WRN; 0.3 in the paper), after every convolution but the stem
    (DenseNet-BC; 0.2 in the paper, without data augmentation). The CIFAR ResNets have none.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if spec.kind == "resnet_cifar" and dropout > 0.0:
        raise UserError(
            f"the CIFAR ResNets have no dropout layers, got dropout={dropout!r}; "
            "dropout applies to the wrn_* and densenet_bc_* variants"
        )
    if spec.kind == "resnet_cifar":
        return _resnet_cifar(images, spec)
    if spec.kind == "wide_resnet":
        return _wide_resnet(images, spec, dropout)
    return _densenet_bc(images, spec, dropout)


# --- ResNet (He et al. 2016 section 4.2) ----------------------------------------------------


def _resnet_cifar(images: keras.KerasTensor, spec: SmallImageSpec) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, 64): stem conv-BN-ReLU, three stages."""
    x = _conv(images, STAGE_WIDTHS[0], 3, name="conv1")
    x = _bn_relu(x, name="conv1")
    for stage_index, width in enumerate(STAGE_WIDTHS):
        for block_index in range(spec.blocks_per_stage):
            strides = 2 if stage_index > 0 and block_index == 0 else 1
            x = _basic_block(x, width, strides, name=f"conv{stage_index + 2}_block{block_index + 1}")
    return x


def _basic_block(x: keras.KerasTensor, filters: int, strides: int, *, name: str) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/s, W/s, filters): two 3x3 convs, option A shortcut."""
    shortcut = x
    if strides > 1 or x.shape[-1] != filters:
        shortcut = SubsampleZeroPad(filters, strides, name=f"{name}_0_shortcut")(x)
    x = _conv(x, filters, 3, strides=strides, name=f"{name}_1")
    x = _bn_relu(x, name=f"{name}_1")
    x = _conv(x, filters, 3, name=f"{name}_2")
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="convnets")
class SubsampleZeroPad(keras.layers.Layer):
    """Option A shortcut: (batch, H, W, C) -> (batch, ceil(H/s), ceil(W/s), filters).

    Keeps every s-th pixel (the centres a stride-s 3x3 convolution with padding 1 reads)
    and appends filters - C zero channels; no parameters, so the shortcut stays an identity
    on the channels it has.
    """

    def __init__(self, filters: int, strides: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.filters - inputs.shape[-1]]])

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        subsampled = [None if side is None else -(-side // self.strides) for side in (height, width)]
        return (batch, *subsampled, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


# --- Wide ResNet (Zagoruyko and Komodakis 2016) ---------------------------------------------


def _wide_resnet(images: keras.KerasTensor, spec: SmallImageSpec, dropout: float) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, 64k): stem conv, three stages, final BN-ReLU."""
    x = _conv(images, STAGE_WIDTHS[0], 3, name="conv1")
    for stage_index, width in enumerate(STAGE_WIDTHS):
        for block_index in range(spec.blocks_per_stage):
            strides = 2 if stage_index > 0 and block_index == 0 else 1
            name = f"conv{stage_index + 2}_block{block_index + 1}"
            x = _wide_block(x, width * spec.widen_factor, strides, dropout, name=name)
    return _bn_relu(x, name="post")


def _wide_block(
    x: keras.KerasTensor, filters: int, strides: int, dropout: float, *, name: str
) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/s, W/s, filters): BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3."""
    preact = _bn_relu(x, name=f"{name}_preact")
    shortcut = x
    if strides > 1 or x.shape[-1] != filters:
        shortcut = _conv(preact, filters, 1, strides=strides, name=f"{name}_0")
    x = _conv(preact, filters, 3, strides=strides, name=f"{name}_1")
    x = _bn_relu(x, name=f"{name}_1")
    x = _dropout(x, dropout, name=f"{name}_1")
    x = _conv(x, filters, 3, name=f"{name}_2")
    return keras.layers.Add(name=f"{name}_out")([shortcut, x])


# --- DenseNet-BC (Huang et al. 2017) --------------------------------------------------------


def _densenet_bc(images: keras.KerasTensor, spec: SmallImageSpec, dropout: float) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, channels): stem conv of 2k channels, three dense
    blocks with compressing transitions between them, final BN-ReLU."""
    x = _conv(images, 2 * spec.growth_rate, 3, name="conv1")
    for stage_index in range(3):
        stage = stage_index + 2
        for layer_index in range(spec.blocks_per_stage):
            x = _dense_layer(x, spec.growth_rate, dropout, name=f"conv{stage}_block{layer_index + 1}")
        if stage_index < 2:
            x = _transition(x, dropout, name=f"pool{stage}")
    return _bn_relu(x, name="post")


def _dense_layer(x: keras.KerasTensor, growth_rate: int, dropout: float, *, name: str) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H, W, C + k): BN-ReLU-conv1x1(4k), BN-ReLU-conv3x3(k), concat."""
    y = _bn_relu(x, name=f"{name}_0")
    y = _conv(y, DENSENET_BC_BOTTLENECK * growth_rate, 1, name=f"{name}_1")
    y = _dropout(y, dropout, name=f"{name}_1")
    y = _bn_relu(y, name=f"{name}_1")
    y = _conv(y, growth_rate, 3, name=f"{name}_2")
    y = _dropout(y, dropout, name=f"{name}_2")
    return keras.layers.Concatenate(name=f"{name}_concat")([x, y])


def _transition(x: keras.KerasTensor, dropout: float, *, name: str) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/2, W/2, C/2): BN-ReLU-conv1x1, 2x2 average pooling."""
    x = _bn_relu(x, name=name)
    x = _conv(x, int(x.shape[-1] * DENSENET_BC_COMPRESSION), 1, name=name)
    x = _dropout(x, dropout, name=name)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


# --- Shared layers --------------------------------------------------------------------------


def _conv(
    x: keras.KerasTensor, filters: int, kernel_size: int, *, name: str, strides: int = 1
) -> keras.KerasTensor:
    """blocks.pad_then_conv's symmetric padding (layer `{name}_pad` for strided 3x3 convs),
    with He-normal weights, which blocks.pad_then_conv cannot set."""
    padding = "same"
    if kernel_size > 1 and strides > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)


def _bn_relu(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _dropout(x: keras.KerasTensor, rate: float, *, name: str) -> keras.KerasTensor:
    """Dropout layer `{name}_drop`, or nothing at rate 0 (so the default graph has none)."""
    if rate == 0.0:
        return x
    return keras.layers.Dropout(rate, name=f"{name}_drop")(x)
