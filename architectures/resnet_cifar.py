"""The CIFAR ResNets, ResNet-20/32/44/56/110 (He et al. 2016, "Deep Residual Learning for Image
Recognition", section 4.2).

Post-activation basic blocks with option A (parameter-free) shortcuts; the zero channels are
concatenated after the identity as in facebook/fb.resnet.torch (`models/resnet.lua`,
shortcutType "A"). The input resolution is kept in the first stage and halved twice:
(batch, 32, 32, C) -> (batch, 8, 8, 64). Convolutions start from He-normal weights, as the
paper initialises them (He et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import ops

from architectures.blocks import conv_bn_act
from architectures.registry import register_family

STAGE_WIDTHS = (16, 32, 64)  # strides 1, 2, 2


@dataclass(frozen=True)
class ResNetCifarSpec:
    blocks_per_stage: int  # n: depth 6n + 2


SPECS = {
    "resnet20": ResNetCifarSpec(3),
    "resnet32": ResNetCifarSpec(5),
    "resnet44": ResNetCifarSpec(7),
    "resnet56": ResNetCifarSpec(9),
    "resnet110": ResNetCifarSpec(18),
}


@register_family(
    "resnet_cifar",
    SPECS,
    default_size=32,
    reference="He et al. 2016 section 4.2; facebook/fb.resnet.torch (shortcut type A)",
    min_size=8,  # two halvings leave a 2x2 map
)
def resnet_cifar_features(spec: ResNetCifarSpec, images: keras.KerasTensor) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/4, W/4, 64): stem conv-BN-ReLU, three stages."""
    x = conv_bn_act(images, STAGE_WIDTHS[0], 3, kernel_initializer="he_normal", name="conv1")
    for stage_index, width in enumerate(STAGE_WIDTHS):
        for block_index in range(spec.blocks_per_stage):
            strides = 2 if stage_index > 0 and block_index == 0 else 1
            x = basic_block(x, width, strides, name=f"conv{stage_index + 2}_block{block_index + 1}")
    return x


def basic_block(x: keras.KerasTensor, filters: int, strides: int, *, name: str) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H/s, W/s, filters): two 3x3 convs, option A shortcut."""
    shortcut = x
    if strides > 1 or x.shape[-1] != filters:
        shortcut = SubsampleZeroPad(filters, strides, name=f"{name}_0_shortcut")(x)
    x = conv_bn_act(x, filters, 3, strides=strides, kernel_initializer="he_normal", name=f"{name}_1")
    x = conv_bn_act(x, filters, 3, activation=None, kernel_initializer="he_normal", name=f"{name}_2")
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
