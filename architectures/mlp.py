"""The lecture's multilayer perceptron on raw pixels: the "MLP 256-128-100" row of the
Fashion-MNIST benchmark (zalandoresearch/fashion-mnist README).

Flatten, three Dense+ReLU hidden layers, a Dense classifier. The Flatten is `input_flatten`,
not `flatten`, which is also what Keras auto-names one. Built for small images
(default_size=32): it has no stem to adapt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from architectures.blocks import BN_EPSILON
from architectures.registry import Option, register_family


@dataclass(frozen=True)
class MLPSpec:
    hidden_units: tuple[int, ...]  # Dense+ReLU layers between the pixels and the classifier


SPECS = {"mlp": MLPSpec(hidden_units=(256, 128, 100))}


def mlp_head(
    spec: MLPSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, units) -> Dense -> (batch, num_classes)."""
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(
        feature_maps["hidden"]
    )


@register_family(
    "mlp",
    SPECS,
    default_size=32,
    reference="Fashion-MNIST benchmark MLP 256-128-100 (zalandoresearch/fashion-mnist)",
    min_size=1,  # any image flattens
    options=(
        # In no reference; offered because the plain net is slow to train from scratch.
        Option("batch_norm", bool, False, "BatchNorm between each hidden Dense (without bias) and its ReLU"),
    ),
    head=mlp_head,
)
def mlp_features(spec: MLPSpec, images: keras.KerasTensor, *, batch_norm: bool) -> dict[str, keras.KerasTensor]:
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
