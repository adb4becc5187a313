"""All-CNN-C (Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net").

The paper's base model C (Table 1) with each max pool replaced by a 3x3 convolution of stride 2
(Table 2), dropout as in its section 3.1. There is no official code; the layer list below is
the paper's, and the tests check the count by hand:

    input 32x32 RGB (dropout 20%)
    3x3 conv 96 ReLU, 3x3 conv 96 ReLU
    3x3 conv 96 ReLU, stride 2                        (dropout 50%)
    3x3 conv 192 ReLU, 3x3 conv 192 ReLU
    3x3 conv 192 ReLU, stride 2                       (dropout 50%)
    3x3 conv 192 ReLU (valid), 1x1 conv 192 ReLU
    1x1 conv num_classes ReLU, global average pooling, softmax   <- the head

Built for small images (default_size=32): it does not downsample early, so it has no stem to
adapt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import BN_EPSILON, pad_then_conv
from architectures.registry import Option, register_family

# Springenberg et al. 2015 section 3.1: "dropout to the input image as well as after each
# pooling layer (or after the layer replacing the pooling layer respectively)".
INPUT_DROPOUT = 0.2
DOWNSAMPLE_DROPOUT = 0.5


@dataclass(frozen=True)
class AllConvSpec:
    # (filters, kernel, stride, padding) per convolution, Springenberg et al. Tables 1-2,
    # All-CNN-C; the 1x1 classifier conv is the head.
    layers: tuple[tuple[int, int, int, str], ...]


SPECS = {
    "allconv": AllConvSpec(
        layers=(
            (96, 3, 1, "same"),
            (96, 3, 1, "same"),
            (96, 3, 2, "same"),
            (192, 3, 1, "same"),
            (192, 3, 1, "same"),
            (192, 3, 2, "same"),
            (192, 3, 1, "valid"),
            (192, 1, 1, "valid"),
        )
    ),
}


def allconv_head(
    spec: AllConvSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, 192) -> 1x1 conv num_classes with ReLU (the paper's Table 1 lists ReLU here,
    as torchvision's SqueezeNet has one) -> global average -> (batch, num_classes)."""
    x = keras.layers.Conv2D(num_classes, 1, activation="relu", name="classifier_conv")(feature_maps["features"])
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "allconv",
    SPECS,
    default_size=32,
    reference="Springenberg et al. 2015 (All-CNN-C)",
    # Two stride-2 convs (ceil(H/2) each) then an unpadded 3x3 need 9 px (9 -> 5 -> 3 -> 1).
    min_size=9,
    options=(
        # In no reference; offered because the plain net is slow to train from scratch.
        Option("batch_norm", bool, False, "BatchNorm between each conv (then without bias) and its ReLU"),
        Option("dropout", bool, True, "the paper's 20% on the input and 50% after each stride-2 conv"),
    ),
    head=allconv_head,
)
def allconv_features(
    spec: AllConvSpec, images: keras.KerasTensor, *, batch_norm: bool, dropout: bool
) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, ceil(ceil(H/2)/2) - 2, ..., 192): 32 px -> 6x6, 28 px -> 5x5."""
    x = images
    if dropout:
        x = keras.layers.Dropout(INPUT_DROPOUT, name="input_dropout")(x)
    for index, (filters, kernel_size, strides, padding) in enumerate(spec.layers, start=1):
        name = f"conv{index}"
        if padding == "valid":
            # The paper's unpadded 3x3 (8x8 -> 6x6 at 32 px); 1x1 convs need no padding anyway.
            x = keras.layers.Conv2D(filters, kernel_size, use_bias=not batch_norm, name=f"{name}_conv")(x)
        else:
            # Symmetric padding 1 as in Caffe: a stride-2 conv maps 32 -> 16, not Keras's
            # bottom/right-only "same".
            x = pad_then_conv(x, filters, kernel_size, strides=strides, use_bias=not batch_norm, name=name)
        if batch_norm:
            x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        if dropout and strides == 2:
            x = keras.layers.Dropout(DOWNSAMPLE_DROPOUT, name=f"{name}_dropout")(x)
    return x
