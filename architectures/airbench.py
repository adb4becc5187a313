"""The airbench network (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU";
KellerJordan/cifar10-airbench, `airbench94.py`): wide and shallow, built to reach a target
accuracy in the least wall time rather than the most accuracy per epoch.

    2x2 conv, 2 x C x 4 filters, no padding, with bias; GELU        <- the "whitening" stem
    3 conv groups of widths (w, 4w, 4w), each:
        3x3 conv (no bias) -> 2x2 max pool -> BN -> GELU -> 3x3 conv (no bias) -> BN -> GELU
    global max pool, dense num_classes without bias, x 1/9          <- the head

- The reference initialises the stem from the eigenvectors of the training patches' covariance
  and freezes it; a builder sees no data, so here the stem trains like any conv.
- Each 3x3 conv starts as its framework's default plus an identity on the first input channels
  (the reference's `dirac_`: an implicit residual that lets a plain stack train fast).
- BatchNorm has no scale (the reference freezes it at 1) and the reference's running-average
  momentum.
- The reference's 32 px maps end 3x3 before a 3x3 max pool; the global max pool is that pool
  for any input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from architectures.registry import register_family

# Jordan 2024: PyTorch momentum 0.4, i.e. a running average keeping 0.6 of the old value.
BN_MOMENTUM = 0.6
BN_EPSILON = 1e-5  # the reference's 1e-12 is for its float32 BN; Keras BN may run under bf16 policies
STEM_KERNEL = 2
# Jordan 2024 scales the logits by 1/9 so that label-smoothed cross-entropy starts in range.
LOGIT_SCALE = 1.0 / 9.0


@dataclass(frozen=True)
class AirbenchSpec:
    widths: tuple[int, int, int]  # the three conv groups' filters: (w, 4w, 4w) in the reference


SPECS = {
    "airbench94": AirbenchSpec(widths=(64, 256, 256)),  # the reference, base width 64
    "airbench94_w32": AirbenchSpec(widths=(32, 128, 128)),  # base width 32: 1/4 of the 3x3 MACs
    "airbench94_w16": AirbenchSpec(widths=(16, 64, 64)),  # base width 16: 1/16 of them
}


@keras.saving.register_keras_serializable(package="convnets")
class IdentityPlusUniform(keras.initializers.Initializer):
    """A conv kernel (k, k, in, out) drawn like PyTorch's default (uniform within 1/sqrt(fan_in))
    with its first min(in, out) filters replaced by identities: filter i passes input channel i
    through its centre tap unchanged (PyTorch's `dirac_`)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, inputs, filters = shape
        bound = 1.0 / math.sqrt(kernel_h * kernel_w * inputs)
        weights = keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)
        identity = np.zeros(shape, dtype="float32")
        mask = np.ones(shape, dtype="float32")
        kept = min(inputs, filters)
        mask[..., :kept] = 0.0
        identity[kernel_h // 2, kernel_w // 2, np.arange(kept), np.arange(kept)] = 1.0
        return weights * keras.ops.cast(mask, weights.dtype) + keras.ops.cast(identity, weights.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


def conv_group(x: keras.KerasTensor, filters: int, *, name: str) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H // 2, W // 2, filters): conv, pool, BN, GELU, conv, BN, GELU."""
    for index in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=IdentityPlusUniform(),
            name=f"{name}_conv{index}",
        )(x)  # fmt: skip
        if index == 1:
            x = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        x = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, name=f"{name}_bn{index}"
        )(x)
        x = keras.layers.Activation("gelu", name=f"{name}_gelu{index}")(x)
    return x


def airbench_head(
    spec: AirbenchSpec,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """(batch, h, w, 4w) -> global max -> dense without bias -> x 1/9 -> (batch, num_classes)."""
    x = keras.layers.GlobalMaxPooling2D(name="max_pool")(feature_maps["features"])
    x = keras.layers.Dense(num_classes, use_bias=False, name="classifier")(x)
    x = keras.layers.Rescaling(LOGIT_SCALE, name="logit_scale")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


@register_family(
    "airbench",
    SPECS,
    default_size=32,
    reference="Jordan 2024 (airbench94); KellerJordan/cifar10-airbench",
    # The 2x2 stem takes 1 px, then three halvings: 9 -> 8 -> 4 -> 2 -> 1.
    min_size=9,
    head=airbench_head,
)
def airbench_features(spec: AirbenchSpec, images: keras.KerasTensor) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, (H - 1) // 8, (W - 1) // 8, 4w): 32 px -> 3x3, 28 px -> 3x3."""
    stem_filters = 2 * images.shape[-1] * STEM_KERNEL**2
    x = keras.layers.Conv2D(stem_filters, STEM_KERNEL, padding="valid", name="stem_conv")(images)
    x = keras.layers.Activation("gelu", name="stem_gelu")(x)
    for index, width in enumerate(spec.widths, start=1):
        x = conv_group(x, width, name=f"group{index}")
    return x
