"""Blocks the families share: conv-BN-activation, Squeeze-and-Excitation, CBAM,
stochastic depth, layer scale.

Every layer is named from the caller's prefix (`conv4_block3_2` -> `conv4_block3_2_conv`,
`conv4_block3_2_bn`, `conv4_block3_2_relu`), so names do not depend on build history.
Custom layers define `get_config()` and are registered under package "convnets", so a
saved `.keras` model loads without our code being imported by hand.
"""

from __future__ import annotations

import keras
from keras import ops

from architectures.errors import UserError

# 1.001e-5 matches keras.applications (ResNet, DenseNet), whose weights we load;
# torchvision's 1e-5 differs by 1e-8 in the denominator, far below float32 noise.
BN_EPSILON = 1.001e-5


def conv_bn_act(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    dilation_rate: int = 1,
    groups: int = 1,
    activation: str | None = "relu",
    use_bias: bool = False,
    bn_epsilon: float = BN_EPSILON,
    kernel_initializer: str = "glorot_uniform",
) -> keras.KerasTensor:
    """Conv -> BatchNorm -> activation; (batch, H, W, C) -> (batch, H/s, W/s, filters).

    Padding is symmetric, k//2 * dilation on each side, as in torchvision and the papers;
    Keras "same" pads stride-2 convolutions on the bottom/right only, which shifts the grid.
    """
    x = pad_then_conv(
        x,
        filters,
        kernel_size,
        strides=strides,
        dilation_rate=dilation_rate,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )
    x = keras.layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def pad_then_conv(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    dilation_rate: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    kernel_initializer: str = "glorot_uniform",  # Keras's default
) -> keras.KerasTensor:
    """A convolution with explicit symmetric zero padding (layer `{name}_pad` where needed)."""
    padding = (kernel_size - 1) // 2 * dilation_rate
    if padding and strides > 1:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        conv_padding = "valid"
    else:
        conv_padding = "same" if padding else "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=conv_padding,
        dilation_rate=dilation_rate,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=f"{name}_conv",
    )(x)


def squeeze_excite(x: keras.KerasTensor, *, name: str, reduction: int = 16) -> keras.KerasTensor:
    """Squeeze-and-Excitation (Hu et al. 2018): per-channel gates from global context.

    (batch, H, W, C) -> (batch, H, W, C). The squeeze is a global average; the excitation is
    two 1x1 convolutions with bias, C -> C/reduction -> C, as in timm's SEModule.
    """
    channels = x.shape[-1]
    hidden = max(1, channels // reduction)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    gate = keras.layers.Conv2D(hidden, 1, activation="relu", name=f"{name}_se_reduce")(gate)
    gate = keras.layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(gate)
    return keras.layers.Multiply(name=f"{name}_se_excite")([x, gate])


def cbam(
    x: keras.KerasTensor, *, name: str, reduction: int = 16, spatial_kernel: int = 7
) -> keras.KerasTensor:
    """CBAM (Woo et al. 2018): channel attention, then spatial attention.

    (batch, H, W, C) -> (batch, H, W, C). The channel gate runs one shared MLP (1x1 convs
    with bias) over the average- and max-pooled descriptors; the spatial gate convolves the
    channel-wise mean and max with a 7x7 kernel, then BatchNorm, as the authors' code does.
    """
    channels = x.shape[-1]
    hidden = max(1, channels // reduction)
    reduce_fc = keras.layers.Conv2D(hidden, 1, activation="relu", name=f"{name}_cbam_reduce")
    expand_fc = keras.layers.Conv2D(channels, 1, name=f"{name}_cbam_expand")
    average = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_cbam_avgpool")(x)
    maximum = keras.layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}_cbam_maxpool")(x)
    channel_logits = keras.layers.Add(name=f"{name}_cbam_channel_add")(
        [expand_fc(reduce_fc(average)), expand_fc(reduce_fc(maximum))]
    )
    channel_gate = keras.layers.Activation("sigmoid", name=f"{name}_cbam_channel_sigmoid")(channel_logits)
    x = keras.layers.Multiply(name=f"{name}_cbam_channel_gate")([x, channel_gate])

    descriptors = ChannelMeanMax(name=f"{name}_cbam_meanmax")(x)
    spatial = keras.layers.Conv2D(
        1, spatial_kernel, padding="same", use_bias=False, name=f"{name}_cbam_spatial_conv"
    )(descriptors)
    spatial = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_cbam_spatial_bn")(spatial)
    spatial_gate = keras.layers.Activation("sigmoid", name=f"{name}_cbam_spatial_sigmoid")(spatial)
    return keras.layers.Multiply(name=f"{name}_cbam_spatial_gate")([x, spatial_gate])


ATTENTION_BLOCKS = {"se": squeeze_excite, "cbam": cbam}


def attention(x: keras.KerasTensor, kind: str | None, *, name: str) -> keras.KerasTensor:
    """Apply the named attention block ("se", "cbam") or nothing (None)."""
    if kind is None:
        return x
    return ATTENTION_BLOCKS[kind](x, name=name)


@keras.saving.register_keras_serializable(package="convnets")
class ChannelMeanMax(keras.layers.Layer):
    """(batch, H, W, C) -> (batch, H, W, 2): mean and max over channels (CBAM's descriptors)."""

    def call(self, inputs):
        return ops.concatenate(
            [ops.mean(inputs, axis=-1, keepdims=True), ops.max(inputs, axis=-1, keepdims=True)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="convnets")
class StochasticDepth(keras.layers.Layer):
    """Drop a residual branch per sample while training (Huang et al. 2016).

    Inputs [shortcut, residual] -> shortcut + residual * keep / (1 - rate), where keep is one
    Bernoulli(1 - rate) draw per sample; at inference, shortcut + residual.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        # Unseeded: draws from Keras's global seed, which keras.utils.set_random_seed fixes.
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, inputs, training=None):
        shortcut, residual = inputs
        if training and self.rate > 0.0:
            keep_probability = 1.0 - self.rate
            batch = ops.shape(residual)[0]
            mask_shape = (batch,) + (1,) * (len(residual.shape) - 1)
            keep = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=residual.dtype)
            keep = ops.floor(keep + keep_probability)
            residual = residual * keep / keep_probability
        return shortcut + residual

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="convnets")
class LayerScale(keras.layers.Layer):
    """Per-channel learnable scale (Touvron et al. 2021), initialised to `init_value`.

    (batch, ..., C) -> (batch, ..., C). The weight is called `gamma` as in keras.applications'
    ConvNeXt, whose weights we load.
    """

    def __init__(self, init_value: float, projection_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)
        self.projection_dim = int(projection_dim)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(self.projection_dim,),
            initializer=keras.initializers.Constant(self.init_value),
            trainable=True,
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value, "projection_dim": self.projection_dim}


def stochastic_depth_rates(total_blocks: int, max_rate: float) -> list[float]:
    """Linearly increasing drop rates, 0 for the first block to `max_rate` for the last."""
    if total_blocks <= 1:
        return [0.0] * total_blocks
    return [max_rate * index / (total_blocks - 1) for index in range(total_blocks)]


def check_patch_grid(images: keras.KerasTensor, patch_size: int, *, small_input_patch_size: int | None) -> None:
    """Raise `UserError` unless both input sides are multiples of a patch model's patch size.

    `small_input_patch_size` (None when already in use) is suggested for small images.
    """
    height, width = images.shape[1], images.shape[2]
    for side in (height, width):
        if side % patch_size:
            below, above = side // patch_size * patch_size, (side // patch_size + 1) * patch_size
            hint = f"; small_input=True uses {small_input_patch_size} px patches" if small_input_patch_size else ""
            raise UserError(
                f"input sides must be multiples of the patch size {patch_size}, got {height}x{width} "
                f"(nearest sides: {below} or {above}){hint}"
            )
