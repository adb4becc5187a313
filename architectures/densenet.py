"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks") for ImageNet
(family `densenet`) and for CIFAR (family `densenet_bc`, as the paper names its CIFAR
networks), sharing the dense and transition blocks.

ImageNet: layer names, layer order and arithmetic copy keras.applications (keras-team/keras
`keras/src/applications/densenet.py`), so its ImageNet `.h5` files load by name and give
the same outputs; the variant table and parameter counts follow torchvision
(`torchvision/models/densenet.py`), which adds densenet161. CIFAR: paper section 3 and
liuzhuang13/DenseNet (`models/densenet.lua`): a 3x3 stem of 2k channels, three dense blocks,
He-normal convolutions and the paper's optional dropout.

Every dense layer is pre-activation, BN -> ReLU -> 1x1 conv (4k channels) -> BN -> ReLU ->
3x3 conv (k channels), and its output is concatenated to its input; a transition between
dense blocks is BN -> ReLU -> 1x1 conv halving the channels -> 2x2 average pool.

    conv1   (7x7 s2 conv, 3x3 s2 max pool)   (batch, 224, 224, 3) -> (batch, 56, 56, C0)
    conv2   dense block, pool2 transition    -> (batch, 28, 28, C)
    conv3   dense block, pool3 transition    -> (batch, 14, 14, C)
    conv4   dense block, pool4 transition    -> (batch, 7, 7, C)
    conv5   dense block, then bn, relu       -> (batch, 7, 7, C)

CIFAR keeps the input resolution in conv2 and halves it twice: (batch, 32, 32, 3) -> (batch, 8, 8, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from architectures.blocks import BN_EPSILON, conv_bn_act
from architectures.registry import Option, register_family

# DenseNet-BC's constants (paper section 3): the 1x1 bottleneck has 4k channels and every
# transition keeps half the channels. Both are fixed in keras.applications and torchvision.
BOTTLENECK_FACTOR = 4
COMPRESSION = 0.5


@dataclass(frozen=True)
class DenseNetSpec:
    growth_rate: int  # k: channels each dense layer adds
    init_features: int  # channels of the stem convolution
    block_depths: tuple[int, ...]  # dense layers per dense block


# Paper table 1 (densenet161 from the authors' code, as torchvision has it).
SPECS = {
    "densenet121": DenseNetSpec(growth_rate=32, init_features=64, block_depths=(6, 12, 24, 16)),
    "densenet161": DenseNetSpec(growth_rate=48, init_features=96, block_depths=(6, 12, 36, 24)),
    "densenet169": DenseNetSpec(growth_rate=32, init_features=64, block_depths=(6, 12, 32, 32)),
    "densenet201": DenseNetSpec(growth_rate=32, init_features=64, block_depths=(6, 12, 48, 32)),
}
# Huang et al. 2017, DenseNet-BC (L, k) for CIFAR: depth 6n + 4, n dense layers per block, a
# stem of 2k channels.
CIFAR_SPECS = {
    "densenet_bc_100_12": DenseNetSpec(growth_rate=12, init_features=24, block_depths=(16, 16, 16)),
}


@register_family(
    "densenet",
    SPECS,
    default_size=224,
    reference="Huang et al. 2017; keras.applications densenet.py, torchvision densenet.py",
    min_size=32,  # as keras.applications: 32 px leaves a 1x1 map after the five halvings
    small_input_min_size=8,  # the stride-1 stem leaves three halvings: 8 px ends at 1x1
)
def densenet_features(spec: DenseNetSpec, images: keras.KerasTensor, *, small_input: bool) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/32, W/32, C) after the final BN and ReLU.

    small_input=True replaces the 7x7 stride-2 stem and its max pool with a 3x3 stride-1
    convolution, as DenseNet-BC for CIFAR does, so a 32 px image ends at 4x4 instead of 1x1:
    (batch, H, W, C_in) -> (batch, H/8, W/8, C).
    """
    x = _stem(images, spec.init_features, small_input=small_input)
    last_block = len(spec.block_depths) - 1
    for block_index, depth in enumerate(spec.block_depths):
        x = dense_block(x, depth, spec.growth_rate, name=f"conv{block_index + 2}")
        if block_index < last_block:
            x = transition_block(x, COMPRESSION, name=f"pool{block_index + 2}")
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="bn")(x)
    return keras.layers.Activation("relu", name="relu")(x)


def _stem(images: keras.KerasTensor, filters: int, *, small_input: bool) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/4, W/4, filters), or (batch, H, W, filters) if small_input."""
    if small_input:
        return conv_bn_act(images, filters, 3, name="conv1")
    # ZeroPadding2D(3) + valid 7x7 s2 conv ("conv1_pad", "conv1_conv") is keras.applications'
    # symmetric padding; "same" would pad bottom/right only and shift the grid.
    x = conv_bn_act(images, filters, 7, strides=2, name="conv1")
    # Zero padding before the max pool is harmless: the inputs are post-ReLU, so >= 0.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)  # keras.applications' name


def dense_block(
    x: keras.KerasTensor,
    depth: int,
    growth_rate: int,
    *,
    name: str,
    dropout: float = 0.0,
    kernel_initializer: str = "glorot_uniform",
) -> keras.KerasTensor:
    """`depth` dense layers: (batch, H, W, C) -> (batch, H, W, C + depth * growth_rate)."""
    for layer_index in range(depth):
        x = dense_layer(
            x,
            growth_rate,
            dropout=dropout,
            kernel_initializer=kernel_initializer,
            name=f"{name}_block{layer_index + 1}",
        )
    return x


def dense_layer(
    x: keras.KerasTensor,
    growth_rate: int,
    *,
    name: str,
    dropout: float = 0.0,
    kernel_initializer: str = "glorot_uniform",
) -> keras.KerasTensor:
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, concatenated to the input:
    (batch, H, W, C) -> (batch, H, W, C + growth_rate). keras.applications calls it conv_block.
    Dropout, if any, follows each convolution (paper section 4.2)."""
    branch = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(x)
    branch = keras.layers.Activation("relu", name=f"{name}_0_relu")(branch)
    branch = keras.layers.Conv2D(
        BOTTLENECK_FACTOR * growth_rate,
        1,
        use_bias=False,
        kernel_initializer=kernel_initializer,
        name=f"{name}_1_conv",
    )(branch)
    branch = _dropout(branch, dropout, name=f"{name}_1")
    branch = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(branch)
    branch = keras.layers.Activation("relu", name=f"{name}_1_relu")(branch)
    branch = keras.layers.Conv2D(
        growth_rate,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=kernel_initializer,
        name=f"{name}_2_conv",
    )(branch)
    branch = _dropout(branch, dropout, name=f"{name}_2")
    return keras.layers.Concatenate(name=f"{name}_concat")([x, branch])


def transition_block(
    x: keras.KerasTensor,
    compression: float,
    *,
    name: str,
    dropout: float = 0.0,
    kernel_initializer: str = "glorot_uniform",
) -> keras.KerasTensor:
    """BN-ReLU-1x1 conv-2x2 average pool: (batch, H, W, C) -> (batch, H/2, W/2, C * compression)."""
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    x = keras.layers.Conv2D(
        int(x.shape[-1] * compression),
        1,
        use_bias=False,
        kernel_initializer=kernel_initializer,
        name=f"{name}_conv",
    )(x)
    x = _dropout(x, dropout, name=name)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def _dropout(x: keras.KerasTensor, rate: float, *, name: str) -> keras.KerasTensor:
    """Dropout layer `{name}_drop`, or nothing at rate 0 (so the default graph has none)."""
    if rate == 0.0:
        return x
    return keras.layers.Dropout(rate, name=f"{name}_drop")(x)


@register_family(
    "densenet_bc",
    CIFAR_SPECS,
    default_size=32,
    reference="Huang et al. 2017 (DenseNet-BC for CIFAR); liuzhuang13/DenseNet",
    min_size=8,  # two halvings leave a 2x2 map
    options=(
        Option.rate("dropout", 0.0, "after every convolution but the stem (the paper's 0.2 without augmentation)"),
    ),
)
def densenet_bc_features(spec: DenseNetSpec, images: keras.KerasTensor, *, dropout: float) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, H/4, W/4, C): a plain 3x3 stem convolution, three dense
    blocks with compressing transitions between them, final BN-ReLU."""
    # He-normal, as the paper initialises (He et al. 2015); "same" keeps the 32 px grid.
    x = keras.layers.Conv2D(
        spec.init_features, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="conv1_conv"
    )(images)
    last_block = len(spec.block_depths) - 1
    for block_index, depth in enumerate(spec.block_depths):
        name = f"conv{block_index + 2}"
        x = dense_block(x, depth, spec.growth_rate, dropout=dropout, kernel_initializer="he_normal", name=name)
        if block_index < last_block:
            x = transition_block(
                x, COMPRESSION, dropout=dropout, kernel_initializer="he_normal", name=f"pool{block_index + 2}"
            )
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="post_bn")(x)
    return keras.layers.Activation("relu", name="post_relu")(x)
