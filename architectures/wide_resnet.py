"""Wide ResNets for CIFAR, WRN-d-k (Zagoruyko and Komodakis 2016, "Wide Residual Networks").

Reference szagoruyko/wide-residual-networks (`pytorch/resnet.py`): pre-activation basic blocks
without convolution biases, the 1x1 shortcut convolution reading the pre-activated input, and
the paper's optional dropout between a block's two convolutions. The input resolution is kept
in the first stage and halved twice: (batch, 32, 32, C) -> (batch, 8, 8, 64k). Convolutions
start from He-normal weights, as the paper initialises them (He et al. 2015).

The paper's ImageNet network, WRN-50-2, is a bottleneck ResNet-50 twice as wide inside each
block: `wide_resnet50_2` in `resnet.py`, which builds it with every ResNet option.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from architectures.blocks import BN_EPSILON, pad_then_conv
from architectures.registry import Option, register_family

STAGE_WIDTHS = (16, 32, 64)  # times k; strides 1, 2, 2


@dataclass(frozen=True)
class WideResNetSpec:
    blocks_per_stage: int  # n: depth 6n + 4
    widen_factor: int  # k: stage widths 16k, 32k, 64k


SPECS = {
    "wrn_16_4": WideResNetSpec(2, widen_factor=4),
    "wrn_28_10": WideResNetSpec(4, widen_factor=10),
    "wrn_40_4": WideResNetSpec(6, widen_factor=4),
}


@register_family(
    "wide_resnet",
    SPECS,
    default_size=32,
    reference="Zagoruyko and Komodakis 2016; szagoruyko/wide-residual-networks",
    min_size=8,  # two halvings leave a 2x2 map
    options=(
        Option.rate("dropout", 0.0, "between the two convolutions of every block (the paper's 0.3)"),
    ),
)
def wide_resnet_features(
    spec: WideResNetSpec, images: keras.KerasTensor, *, dropout: float
) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, 64k): stem conv, three stages, final BN-ReLU."""
    x = _conv(images, STAGE_WIDTHS[0], 3, name="conv1")
    for stage_index, width in enumerate(STAGE_WIDTHS):
        for block_index in range(spec.blocks_per_stage):
            strides = 2 if stage_index > 0 and block_index == 0 else 1
            name = f"conv{stage_index + 2}_block{block_index + 1}"
            x = wide_block(x, width * spec.widen_factor, strides, dropout, name=name)
    return _bn_relu(x, name="post")


def wide_block(
    x: keras.KerasTensor, filters: int, strides: int, dropout: float, *, name: str
) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/s, W/s, filters): BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3."""
    preact = _bn_relu(x, name=f"{name}_preact")
    shortcut = x
    if strides > 1 or x.shape[-1] != filters:
        shortcut = _conv(preact, filters, 1, strides=strides, name=f"{name}_0")
    x = _conv(preact, filters, 3, strides=strides, name=f"{name}_1")
    x = _bn_relu(x, name=f"{name}_1")
    if dropout > 0.0:  # no layer at rate 0, so the default graph has none
        x = keras.layers.Dropout(dropout, name=f"{name}_1_drop")(x)
    x = _conv(x, filters, 3, name=f"{name}_2")
    return keras.layers.Add(name=f"{name}_out")([shortcut, x])


def _conv(
    x: keras.KerasTensor, filters: int, kernel_size: int, *, name: str, strides: int = 1
) -> keras.KerasTensor:
    """Symmetric padding, He-normal weights, no bias (the reference's conv3x3 and conv1x1)."""
    return pad_then_conv(x, filters, kernel_size, strides=strides, kernel_initializer="he_normal", name=name)


def _bn_relu(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)
