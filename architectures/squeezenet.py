"""SqueezeNet (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size").

Reference implementation: pytorch/vision `torchvision/models/squeezenet.py` (versions 1.0
and 1.1, its layer sizes and parameter counts). keras.applications has no SqueezeNet, so the
names follow the paper's Table 1 (`conv1`, `pool1`, `fire2` ... `fire9`, `conv10`).

A fire module squeezes with a 1x1 convolution, then expands with parallel 1x1 and 3x3
convolutions whose outputs are concatenated; every convolution has a bias and a ReLU and
there is no BatchNorm. The classifier is convolutional: dropout -> 1x1 conv to the classes
("conv10") -> ReLU -> global average pool.

    squeezenet1_0 at 224 px         squeezenet1_1 at 224 px
    conv1 7x7/2, 96   -> 109x109    conv1 3x3/2, 64   -> 111x111
    pool1 3x3/2       -> 54x54      pool1 3x3/2       -> 55x55
    fire2-4, pool4    -> 27x27      fire2-3, pool3    -> 27x27
    fire5-8, pool8    -> 13x13      fire4-5, pool5    -> 13x13
    fire9             -> 13x13x512  fire6-9           -> 13x13x512

Only plain Conv2D, ReLU, ZeroPadding2D, MaxPooling2D and Concatenate layers, so the model
converts to TFLite builtin ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras

from architectures.registry import register_family

POOL_SIZE = 3  # every max pool is 3x3 with stride 2 (paper section 3.3; torchvision)
POOL_STRIDE = 2
CLASSIFIER_DROPOUT = 0.5  # "dropout with a ratio of 50% after the fire9 module" (paper section 3.3)


@dataclass(frozen=True)
class SqueezeNetSpec:
    stem_filters: int  # conv1 output channels
    stem_kernel: int  # conv1 kernel side (stride 2, no padding)
    fires: tuple[tuple[int, int, int], ...]  # fire2, fire3, ...: (s1x1, e1x1, e3x3) filters
    pool_after: tuple[int, ...]  # layer numbers (1 = conv1, 2 = fire2, ...) followed by a max pool


# The paper's Table 1 (1.0) and torchvision's 1.1 (the same fires, a 3x3 stem, pools moved earlier).
_FIRES = (
    (16, 64, 64),
    (16, 64, 64),
    (32, 128, 128),
    (32, 128, 128),
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
)
SPECS = {
    "squeezenet1_0": SqueezeNetSpec(stem_filters=96, stem_kernel=7, fires=_FIRES, pool_after=(1, 4, 8)),
    "squeezenet1_1": SqueezeNetSpec(stem_filters=64, stem_kernel=3, fires=_FIRES, pool_after=(1, 3, 5)),
}


def squeezenet_head(
    spec: SqueezeNetSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, 512) -> dropout -> conv10 1x1 -> ReLU -> average -> (batch, num_classes).

    The ReLU before the average is torchvision's (and the paper's Caffe model's), so the
    logits are non-negative; `classifier_activation` is applied after the pooling.
    """
    x = keras.layers.Dropout(CLASSIFIER_DROPOUT, name="conv10_dropout")(feature_maps["features"])
    x = keras.layers.Conv2D(num_classes, 1, name="conv10")(x)
    x = keras.layers.Activation("relu", name="conv10_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "squeezenet",
    SPECS,
    default_size=224,
    reference="Iandola et al. 2016; torchvision squeezenet.py",
    # 32 px: squeezenet1_0 reaches 13 -> 6 -> 3 -> 1 after its three pools.
    min_size=32,
    small_input_min_size=8,  # 3x3 stride-1 stem then three ceil-mode pools: 8 -> 4 -> 2 -> 1
    head=squeezenet_head,
)
def squeezenet_features(
    spec: SqueezeNetSpec, images: keras.KerasTensor, *, small_input: bool
) -> keras.KerasTensor:
    """(batch, H, W, C_in) -> (batch, ~H/16, ~W/16, 512) (13x13 at 224 px).

    small_input=True makes conv1 a 3x3 stride-1 "same" convolution (as CIFAR adaptations of
    SqueezeNet do), so only the three pools downsample: 32 px -> 4x4, 28 px -> 3x3.
    """
    if small_input:
        x = keras.layers.Conv2D(spec.stem_filters, 3, padding="same", name="conv1")(images)
    else:
        x = keras.layers.Conv2D(spec.stem_filters, spec.stem_kernel, strides=2, name="conv1")(images)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    if 1 in spec.pool_after:
        x = _ceil_mode_max_pool(x, name="pool1")
    for layer_number, filters in enumerate(spec.fires, start=2):
        x = fire_module(x, *filters, name=f"fire{layer_number}")
        if layer_number in spec.pool_after:
            x = _ceil_mode_max_pool(x, name=f"pool{layer_number}")
    return x


def fire_module(
    x: keras.KerasTensor, squeeze: int, expand1x1: int, expand3x3: int, *, name: str
) -> keras.KerasTensor:
    """Squeeze 1x1 -> [expand 1x1, expand 3x3] concatenated, each conv with bias and ReLU:
    (batch, H, W, C) -> (batch, H, W, expand1x1 + expand3x3)."""
    x = keras.layers.Conv2D(squeeze, 1, name=f"{name}_squeeze_conv")(x)
    x = keras.layers.Activation("relu", name=f"{name}_squeeze_relu")(x)
    left = keras.layers.Conv2D(expand1x1, 1, name=f"{name}_expand1x1_conv")(x)
    left = keras.layers.Activation("relu", name=f"{name}_expand1x1_relu")(left)
    right = keras.layers.Conv2D(expand3x3, 3, padding="same", name=f"{name}_expand3x3_conv")(x)
    right = keras.layers.Activation("relu", name=f"{name}_expand3x3_relu")(right)
    return keras.layers.Concatenate(name=f"{name}_concat")([left, right])


def _ceil_mode_max_pool(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    """torchvision's MaxPool2d(3, 2, ceil_mode=True): (batch, H, W, C) ->
    (batch, ceil((H - 3) / 2) + 1, ceil((W - 3) / 2) + 1, C).

    Ceil mode lets a last, partial window hang over the bottom/right edge. Keras has no ceil
    mode ("same" would also pad the top/left for odd sides), so we pad the bottom/right by
    the overhang and pool "valid". Zeros are safe padding: the inputs are post-ReLU, >= 0,
    and every window still covers at least one real pixel.
    """
    overhang = [_ceil_mode_overhang(int(side)) for side in x.shape[1:3]]
    if any(overhang):
        x = keras.layers.ZeroPadding2D(((0, overhang[0]), (0, overhang[1])), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(POOL_SIZE, strides=POOL_STRIDE, name=f"{name}_pool")(x)


def _ceil_mode_overhang(side: int) -> int:
    """Pixels the last ceil-mode window reaches past the input edge (0 or 1 here)."""
    windows = math.ceil((side - POOL_SIZE) / POOL_STRIDE) + 1
    return (windows - 1) * POOL_STRIDE + POOL_SIZE - side
