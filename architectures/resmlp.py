"""ResMLP (Touvron et al. 2021); reference: facebookresearch/deit resmlp_models.py, timm
mlp_mixer.py (resmlp_12_224).

Patches become tokens through one strided convolution; each residual block mixes tokens
with a single linear layer over the patch axis (the "cross-patch" sublayer: transpose,
Dense, transpose back), then channels with a 4x MLP with GELU. Each sublayer starts with an
Affine (per-channel alpha * x + beta) instead of a normalisation and ends with a layer scale;
a final Affine, the mean over patches and a Dense classifier follow.

Sizes. The cross-patch layer is an N x N matrix, N = (H/p)(W/p), so it follows the input
size chosen at build time (196 x 196 at 224 px with p=16): weights trained at one size do
not load at another. H and W must be multiples of the patch size (`UserError` otherwise).
small_input=True uses 4 px patches, so 28 and 32 px images give 7x7 and 8x8 token grids.

Features. The tokens after the final Affine, laid out as a (batch, H/p, W/p, C) map, so the
shared head (global average pooling + Dense) is exactly the paper's mean over patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from architectures.blocks import LayerScale, check_patch_grid
from architectures.registry import register_family

# 28 and 32 px images -> 7x7 and 8x8 tokens.
SMALL_INPUT_PATCH_SIZE = 4


@dataclass(frozen=True)
class ResMLPSpec:
    patch_size: int  # pixels per patch side (default stem)
    dim: int  # token width
    depth: int  # residual blocks
    mlp_ratio: int  # channel MLP hidden width / dim
    layer_scale_init: float  # 0.1 at depth 12, 1e-5 at 24, 1e-6 at 36 (paper, deit code)


SPECS = {
    "resmlp_s12": ResMLPSpec(patch_size=16, dim=384, depth=12, mlp_ratio=4, layer_scale_init=0.1),
}


@keras.saving.register_keras_serializable(package="convnets")
class Affine(keras.layers.Layer):
    """ResMLP's normalisation stand-in, alpha * x + beta per channel: (batch, ..., C) -> same.

    alpha starts at ones and beta at zeros, as in the reference code (whose names they keep).
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        self.alpha = self.add_weight(name="alpha", shape=(channels,), initializer="ones", trainable=True)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return inputs * keras.ops.cast(self.alpha, inputs.dtype) + keras.ops.cast(self.beta, inputs.dtype)


def _residual_block(x: keras.KerasTensor, spec: ResMLPSpec, *, name: str) -> keras.KerasTensor:
    """Cross-patch then cross-channel sublayer: (batch, N, C) -> (batch, N, C)."""
    num_tokens = x.shape[1]
    y = Affine(name=f"{name}_tokens_affine")(x)
    y = keras.layers.Permute((2, 1), name=f"{name}_tokens_transpose")(y)
    y = keras.layers.Dense(num_tokens, name=f"{name}_tokens_fc")(y)
    y = keras.layers.Permute((2, 1), name=f"{name}_tokens_transpose_back")(y)
    y = LayerScale(spec.layer_scale_init, spec.dim, name=f"{name}_tokens_scale")(y)
    x = keras.layers.Add(name=f"{name}_tokens_add")([x, y])

    y = Affine(name=f"{name}_channels_affine")(x)
    y = keras.layers.Dense(spec.dim * spec.mlp_ratio, name=f"{name}_channels_fc1")(y)
    # Exact (erf) GELU, as torch's nn.GELU; keras.activations.gelu defaults to it too.
    y = keras.layers.Activation("gelu", name=f"{name}_channels_gelu")(y)
    y = keras.layers.Dense(spec.dim, name=f"{name}_channels_fc2")(y)
    y = LayerScale(spec.layer_scale_init, spec.dim, name=f"{name}_channels_scale")(y)
    return keras.layers.Add(name=f"{name}_channels_add")([x, y])


@register_family(
    "resmlp",
    SPECS,
    default_size=224,
    reference="Touvron et al. 2021; facebookresearch/deit resmlp_models.py, timm resmlp_12_224",
    min_size=16,
    small_input_min_size=SMALL_INPUT_PATCH_SIZE,
)
def resmlp_features(spec: ResMLPSpec, images: keras.KerasTensor, *, small_input: bool) -> keras.KerasTensor:
    """(batch, H, W, 3) -> (batch, H/p, W/p, dim): the tokens after the final Affine."""
    patch_size = SMALL_INPUT_PATCH_SIZE if small_input else spec.patch_size
    check_patch_grid(images, patch_size, small_input_patch_size=None if small_input else SMALL_INPUT_PATCH_SIZE)
    grid_height, grid_width = images.shape[1] // patch_size, images.shape[2] // patch_size

    x = keras.layers.Conv2D(spec.dim, patch_size, strides=patch_size, name="stem_conv")(images)
    x = keras.layers.Reshape((grid_height * grid_width, spec.dim), name="stem_flatten")(x)
    for block_index in range(spec.depth):
        x = _residual_block(x, spec, name=f"mixer_block{block_index + 1}")
    x = Affine(name="final_affine")(x)
    return keras.layers.Reshape((grid_height, grid_width, spec.dim), name="tokens_grid")(x)
