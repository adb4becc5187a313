"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"); layer names as keras.applications
ConvNeXtTiny/Small/Base/Large, counts as torchvision.

Reference implementations: keras-team/keras `keras/src/applications/convnext.py` (names,
weight order and shapes), pytorch/vision `torchvision/models/convnext.py` and the authors'
facebookresearch/ConvNeXt `models/convnext.py` (the stochastic depth schedule).

A 4x4 stride-4 "patchify" stem (conv + LayerNorm), then four stages of ConvNeXt blocks,
with a LayerNorm + 2x2 stride-2 convolution between stages. A block is

    x + drop_path(layer_scale(pointwise_2(gelu(pointwise_1(layernorm(depthwise_7x7(x)))))))

with the inverted bottleneck 4x wide. The pointwise convolutions are Dense layers on the
channel axis, as in keras.applications and the authors' code (equal to 1x1 convolutions).

Names: every weighted layer carries keras.applications' name, prefixed with the variant
(`convnext_tiny_stage_2_block_8_pointwise_conv_1`, 0-based as there), in its order, so its
legacy `.h5` weights load. keras.applications nests the stem and each downsampling step in
a small Sequential (`convnext_tiny_stem` holding `convnext_tiny_stem_conv` and
`convnext_tiny_stem_layernorm`; `convnext_tiny_downsampling_block_0` holding
`convnext_tiny_downsampling_layernorm_0` and `convnext_tiny_downsampling_conv_0`); our graph
is flat, each inner layer at top level under its own name, which the weight loader maps.

Differences from keras.applications:
- the 7x7 depthwise convolution is a DepthwiseConv2D (kernel (7, 7, C, 1)), not its grouped
  Conv2D with groups=C (kernel (7, 7, 1, C)): the same parameters in another layout, which
  the legacy `.h5` loader transposes; TensorFlow's CPU grouped convolution is the slow path.

Differences from keras.applications that touch no weight:
- its input Normalization (`include_preprocessing=True`) comes with keras.applications' weights
  only (`build(..., weights=...)`, architectures/pretrained.py); otherwise the pipeline normalises;
- its `_identity` Activation and the unnamed `+` of each block are one StochasticDepth layer
  (`..._stochastic_depth`), present at every rate;
- with include_top=False it appends an auto-named LayerNormalization after the optional
  pooling; the registry's include_top=False ends at the last block, as every family does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import LayerScale, StochasticDepth, stochastic_depth_rates
from architectures.registry import Option, register_family

# keras.applications, torchvision and the authors all use LayerNorm eps 1e-6.
LN_EPSILON = 1e-6
MLP_RATIO = 4  # inverted bottleneck: the hidden Dense is 4x the block width (paper section 2.4)


@dataclass(frozen=True)
class ConvNeXtSpec:
    prefix: str  # keras.applications' model name, which starts every layer name
    stage_depths: tuple[int, ...]  # blocks per stage, the paper's B
    stage_widths: tuple[int, ...]  # channels per stage, the paper's C


# The paper's section 2.6 configurations (torchvision and keras.applications agree).
SPECS = {
    "convnext_tiny": ConvNeXtSpec("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNeXtSpec("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNeXtSpec("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ConvNeXtSpec("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536)),
}


def _stem(images: keras.KerasTensor, width: int, small_input: bool, *, name: str) -> keras.KerasTensor:
    """Patchify: (batch, H, W, channels) -> (batch, H/4, W/4, width); small_input: (batch, H, W, width).

    small_input uses 1x1 patches, so the four stages see 32/16/8/4 px of a 32 px image (28 px:
    28/14/7/3), the 8x total downsampling of CIFAR ResNets; 2x2 patches would leave 2x2 (28
    px: 1x1) maps on which stage 3's 7x7 depthwise kernels see nothing but padding.
    """
    patch = 1 if small_input else 4
    x = keras.layers.Conv2D(width, patch, strides=patch, name=f"{name}_conv")(images)
    return keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_layernorm")(x)


def _downsample(x: keras.KerasTensor, width: int, *, prefix: str, index: int) -> keras.KerasTensor:
    """LayerNorm, then a 2x2 stride-2 convolution: (batch, H, W, C) -> (batch, H/2, W/2, width)."""
    x = keras.layers.LayerNormalization(
        epsilon=LN_EPSILON, name=f"{prefix}_downsampling_layernorm_{index}"
    )(x)
    return keras.layers.Conv2D(width, 2, strides=2, name=f"{prefix}_downsampling_conv_{index}")(x)


def _block(
    x: keras.KerasTensor,
    drop_path_rate: float,
    layer_scale_init_value: float,
    *,
    name: str,
) -> keras.KerasTensor:
    """One ConvNeXt block: (batch, H, W, C) -> (batch, H, W, C)."""
    width = x.shape[-1]
    # DepthwiseConv2D, kernel (7, 7, C, 1), where keras.applications has a grouped Conv2D with
    # kernel (7, 7, 1, C): the same weights (the loader swaps the axes), and TensorFlow's CPU
    # grouped convolution is slow: convnext_tiny at 32 px, small_input, batch 32, float32 on 2
    # cores infers 14 images/s grouped, 93 depthwise (training steps 5.4 vs 29.4).
    residual = keras.layers.DepthwiseConv2D(7, padding="same", name=f"{name}_depthwise_conv")(x)
    residual = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_layernorm")(residual)
    residual = keras.layers.Dense(MLP_RATIO * width, name=f"{name}_pointwise_conv_1")(residual)
    residual = keras.layers.Activation("gelu", name=f"{name}_gelu")(residual)
    residual = keras.layers.Dense(width, name=f"{name}_pointwise_conv_2")(residual)
    residual = LayerScale(layer_scale_init_value, width, name=f"{name}_layer_scale")(residual)
    return StochasticDepth(drop_path_rate, name=f"{name}_stochastic_depth")([x, residual])


def convnext_head(
    spec: ConvNeXtSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, C) -> global average -> LayerNorm -> Dense -> (batch, num_classes)."""
    x = keras.layers.GlobalAveragePooling2D(name=f"{spec.prefix}_head_gap")(feature_maps["features"])
    x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{spec.prefix}_head_layernorm")(x)
    return keras.layers.Dense(
        num_classes, activation=classifier_activation, name=f"{spec.prefix}_head_dense"
    )(x)


@register_family(
    "convnext",
    SPECS,
    default_size=224,
    reference="Liu et al. 2022; keras.applications ConvNeXt, torchvision convnext",
    # Stride 4 then three stride-2 steps: 32 px ends at 1x1 (keras.applications' minimum too);
    # with small_input's stride-1 stem, 8 px does.
    min_size=32,
    small_input_min_size=8,
    options=(
        Option.rate(
            "drop_path_rate",
            0.0,
            "stochastic depth rate of the last block, rising linearly from 0 at the first "
            "(the authors' 0.1/0.4/0.5/0.5 for T/S/B/L on ImageNet-1k)",
        ),
        Option(
            "layer_scale_init_value", float, 1e-6, "initial per-channel scale of every residual branch", above=0.0
        ),
    ),
    head=convnext_head,
)
def convnext_features(
    spec: ConvNeXtSpec,
    images: keras.KerasTensor,
    *,
    small_input: bool,
    drop_path_rate: float,
    layer_scale_init_value: float,
) -> keras.KerasTensor:
    """(batch, H, W, channels) -> (batch, H/32, W/32, C_last); small_input: (batch, H/8, W/8, C_last)."""
    prefix = spec.prefix
    rates = iter(stochastic_depth_rates(sum(spec.stage_depths), float(drop_path_rate)))
    x = _stem(images, spec.stage_widths[0], small_input, name=f"{prefix}_stem")
    for stage, (depth, width) in enumerate(zip(spec.stage_depths, spec.stage_widths)):
        if stage > 0:
            x = _downsample(x, width, prefix=prefix, index=stage - 1)
        for block in range(depth):
            x = _block(x, next(rates), layer_scale_init_value, name=f"{prefix}_stage_{stage}_block_{block}")
    return x
