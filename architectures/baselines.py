"""The lecture's baselines for small images: a multilayer perceptron on raw pixels and
All-CNN-C (Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net").

`mlp` is the "MLP 256-128-100" row of the Fashion-MNIST benchmark (zalandoresearch/
fashion-mnist README): Flatten, three Dense+ReLU hidden layers, a Dense classifier. The
Flatten is `input_flatten`, not `flatten`, which is also what Keras auto-names one.

`allconv` is All-CNN-C: the paper's base model C (Table 1) with each max pool replaced by a
3x3 convolution of stride 2 (Table 2), dropout as in its section 3.1. There is no official
code; the layer list below is the paper's, and the tests check the count by hand:

    input 32x32 RGB (dropout 20%)
    3x3 conv 96 ReLU, 3x3 conv 96 ReLU
    3x3 conv 96 ReLU, stride 2                        (dropout 50%)
    3x3 conv 192 ReLU, 3x3 conv 192 ReLU
    3x3 conv 192 ReLU, stride 2                       (dropout 50%)
    3x3 conv 192 ReLU (valid), 1x1 conv 192 ReLU
    1x1 conv num_classes ReLU, global average pooling, softmax   <- the head

Both are small-image networks by design (default_size=32): neither downsamples early, so
`small_input` has nothing to adapt and is accepted as a no-op, as every family must accept it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import BN_EPSILON, pad_then_conv
from architectures.errors import UserError
from architectures.registry import register_family

# Springenberg et al. 2015 section 3.1: "dropout to the input image as well as after each
# pooling layer (or after the layer replacing the pooling layer respectively)".
ALLCONV_INPUT_DROPOUT = 0.2
ALLCONV_DOWNSAMPLE_DROPOUT = 0.5


@dataclass(frozen=True)
class MLPSpec:
    hidden_units: tuple[int, ...]  # Dense+ReLU layers between the pixels and the classifier


@dataclass(frozen=True)
class AllConvSpec:
    # (filters, kernel, stride, padding) per convolution, Springenberg et al. Tables 1-2,
    # All-CNN-C; the 1x1 classifier conv is the head.
    layers: tuple[tuple[int, int, int, str], ...]


SPECS = {
    "mlp": MLPSpec(hidden_units=(256, 128, 100)),
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


def _mlp_features(
    spec: MLPSpec, images: keras.KerasTensor, *, batch_norm: bool
) -> dict[str, keras.KerasTensor]:
    """(batch, H, W, C) -> {"hidden": (batch, units), "features": (batch, 1, 1, units)}.

    An MLP has no spatial features. Its head reads the last hidden vector directly; the
    1x1 map is what `include_top=False` returns, so "avg"/"max" pooling of it gives that same
    vector and the features stay a (batch, h, w, C) map like every other family's.
    """
    x = keras.layers.Flatten(name="input_flatten")(images)
    for index, units in enumerate(spec.hidden_units, start=1):
        name = f"fc{index}"
        if batch_norm:
            x = keras.layers.Dense(units, use_bias=False, name=name)(x)
            x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
            x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        else:
            x = keras.layers.Dense(units, activation="relu", name=name)(x)
    feature_map = keras.layers.Reshape((1, 1, x.shape[-1]), name="features_map")(x)
    return {"features": feature_map, "hidden": x}


def _allconv_features(
    spec: AllConvSpec, images: keras.KerasTensor, *, batch_norm: bool, dropout: bool
) -> dict[str, keras.KerasTensor]:
    """(batch, H, W, C) -> (batch, ceil(ceil(H/2)/2) - 2, ..., 192): 32 px -> 6x6, 28 px -> 5x5."""
    x = images
    if dropout:
        x = keras.layers.Dropout(ALLCONV_INPUT_DROPOUT, name="input_dropout")(x)
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
            x = keras.layers.Dropout(ALLCONV_DOWNSAMPLE_DROPOUT, name=f"{name}_dropout")(x)
    return {"features": x}


def baselines_head(
    spec: MLPSpec | AllConvSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """mlp: (batch, units) -> Dense -> (batch, num_classes).

    allconv: (batch, h, w, 192) -> 1x1 conv num_classes with ReLU (the paper's Table 1 lists
    ReLU here, as torchvision's SqueezeNet has one) -> global average -> (batch, num_classes).
    """
    if isinstance(spec, MLPSpec):
        return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(
            feature_maps["hidden"]
        )
    x = keras.layers.Conv2D(num_classes, 1, activation="relu", name="classifier_conv")(
        feature_maps["features"]
    )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "baselines",
    SPECS,
    default_size=32,
    reference="Springenberg et al. 2015 (All-CNN-C); Fashion-MNIST benchmark MLP 256-128-100",
    # allconv: two stride-2 convs (ceil(H/2) each) then an unpadded 3x3 need 9 px (9 -> 5 -> 3
    # -> 1); the mlp takes any size. Neither downsamples early, so small_input changes nothing.
    min_size=9,
    small_input_min_size=9,
    head=baselines_head,
)
def baselines_features(
    spec: MLPSpec | AllConvSpec,
    images: keras.KerasTensor,
    *,
    small_input: bool = False,
    batch_norm: bool = False,
    dropout: bool = True,
) -> dict[str, keras.KerasTensor]:
    """Features of either baseline, as a dict for `baselines_head` (shapes in each builder).

    small_input: accepted, changes nothing (both networks are built for 28-32 px images).
    batch_norm: BatchNorm between each conv or hidden Dense (then without bias) and its ReLU;
    in neither reference, offered because the plain nets are slow to train from scratch.
    dropout: the reference's dropout. allconv: the paper's 20% on the input and 50% after each
    stride-2 conv. The benchmark MLP has none, so for mlp this option changes nothing.
    """
    for option, value in (("small_input", small_input), ("batch_norm", batch_norm), ("dropout", dropout)):
        if not isinstance(value, bool):
            raise UserError(f"baselines option {option} must be True or False, got {value!r}")
    if isinstance(spec, MLPSpec):
        return _mlp_features(spec, images, batch_norm=batch_norm)
    return _allconv_features(spec, images, batch_norm=batch_norm, dropout=dropout)
