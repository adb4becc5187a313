"""Vision Transformer (Dosovitskiy et al. 2021); layout as torchvision's vision_transformer.py.

The image is cut into patch x patch squares by one strided convolution ("conv_proj"), each
square becomes a token, a learned class token is prepended and a learned position embedding
added; pre-norm encoder blocks (LayerNorm -> multi-head self-attention -> residual,
LayerNorm -> MLP with GELU -> residual) follow, then a final LayerNorm. The classifier reads
the class token only, as in the paper and torchvision.

Sizes. The position embedding has one row per token, 1 + (H/p)(W/p), so it follows the
input size chosen at build time (197 rows at 224 px with p=16; 50 at 28 px with
small_input's p=4): a model built at one size cannot load weights trained at another (no
interpolation). H and W must be multiples of the patch size (`UserError` otherwise).
small_input=True uses 4 px patches so 28 and 32 px images give 7x7 and 8x8 token grids,
the usual choice for ViTs trained on CIFAR-sized images; 16 px patches would leave 1 or 4.

Features. `include_top=False` returns the patch tokens after the final LayerNorm, laid
out as a (batch, H/p, W/p, C) map like a CNN's last stage, so pooling="avg" is the mean
of the patch tokens (timm's global_pool="avg") and "max" their maximum; the class token is
what the classifier reads and is not part of that map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from architectures.blocks import check_patch_grid
from architectures.registry import Option, register_family

# 1e-6 as torchvision's ViT (partial(nn.LayerNorm, eps=1e-6)), not Keras's 1e-3.
LAYER_NORM_EPSILON = 1e-6
# 28 and 32 px images -> 7x7 and 8x8 tokens.
SMALL_INPUT_PATCH_SIZE = 4


@dataclass(frozen=True)
class ViTSpec:
    patch_size: int  # pixels per patch side (default stem)
    hidden_dim: int  # token width
    depth: int  # encoder blocks
    num_heads: int  # attention heads, each hidden_dim / num_heads wide
    mlp_dim: int  # hidden width of each block's MLP


SPECS = {
    "vit_b_16": ViTSpec(patch_size=16, hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072),
}


@keras.saving.register_keras_serializable(package="convnets")
class ClassToken(keras.layers.Layer):
    """Prepend one learned token: (batch, N, C) -> (batch, 1 + N, C).

    Initialised to zeros as in torchvision; the weight is called `class_token` as there.
    """

    def build(self, input_shape):
        self.class_token = self.add_weight(
            name="class_token", shape=(1, 1, input_shape[-1]), initializer="zeros", trainable=True
        )

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        token = ops.broadcast_to(ops.cast(self.class_token, inputs.dtype), (batch, 1, inputs.shape[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@keras.saving.register_keras_serializable(package="convnets")
class PositionEmbedding(keras.layers.Layer):
    """Add a learned embedding per token position: (batch, N, C) -> (batch, N, C).

    Its shape (1, N, C) is fixed by the input at build time. Initialised N(0, 0.02) as in
    torchvision; the weight is called `pos_embedding` as there.
    """

    def build(self, input_shape):
        self.pos_embedding = self.add_weight(
            name="pos_embedding",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            trainable=True,
        )

    def call(self, inputs):
        return inputs + ops.cast(self.pos_embedding, inputs.dtype)


def _encoder_block(
    x: keras.KerasTensor, spec: ViTSpec, *, dropout: float, attention_dropout: float, name: str
) -> keras.KerasTensor:
    """Pre-norm transformer block: (batch, T, C) -> (batch, T, C)."""
    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{name}_attention_ln")(x)
    # Keras's per-head query/key/value/output kernels hold exactly torch's in_proj + out_proj.
    y = keras.layers.MultiHeadAttention(
        num_heads=spec.num_heads,
        key_dim=spec.hidden_dim // spec.num_heads,
        dropout=attention_dropout,
        name=f"{name}_attention_mha",
    )(y, y)
    y = keras.layers.Dropout(dropout, name=f"{name}_attention_dropout")(y)
    x = keras.layers.Add(name=f"{name}_attention_add")([x, y])

    y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{name}_mlp_ln")(x)
    y = keras.layers.Dense(spec.mlp_dim, name=f"{name}_mlp_fc1")(y)
    # Exact (erf) GELU, as torch's nn.GELU; keras.activations.gelu defaults to it too.
    y = keras.layers.Activation("gelu", name=f"{name}_mlp_gelu")(y)
    y = keras.layers.Dropout(dropout, name=f"{name}_mlp_dropout1")(y)
    y = keras.layers.Dense(spec.hidden_dim, name=f"{name}_mlp_fc2")(y)
    y = keras.layers.Dropout(dropout, name=f"{name}_mlp_dropout2")(y)
    return keras.layers.Add(name=f"{name}_mlp_add")([x, y])


def vit_head(
    spec: ViTSpec,
    feature_maps: dict[str, keras.KerasTensor],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> keras.KerasTensor:
    """Dense classifier on the class token: (batch, 1 + N, C) -> (batch, num_classes)."""
    tokens = feature_maps["tokens"]
    x = keras.layers.Cropping1D((0, tokens.shape[1] - 1), name="class_token_crop")(tokens)
    x = keras.layers.Flatten(name="class_token_flatten")(x)
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)


@register_family(
    "vit",
    SPECS,
    default_size=224,
    reference="Dosovitskiy et al. 2021; torchvision vision_transformer.py",
    min_size=16,
    small_input_min_size=SMALL_INPUT_PATCH_SIZE,
    # torchvision's two options, 0 by default.
    options=(
        Option.rate("dropout", 0.0, "after the position embedding, the attention and in each MLP"),
        Option.rate("attention_dropout", 0.0, "on the attention weights"),
    ),
    head=vit_head,
)
def vit_features(
    spec: ViTSpec, images: keras.KerasTensor, *, small_input: bool, dropout: float, attention_dropout: float
) -> dict[str, keras.KerasTensor]:
    """(batch, H, W, 3) -> {"features": (batch, H/p, W/p, C) patch tokens,
    "tokens": (batch, 1 + HW/p^2, C) class token first}, both after the final LayerNorm."""
    patch_size = SMALL_INPUT_PATCH_SIZE if small_input else spec.patch_size
    check_patch_grid(images, patch_size, small_input_patch_size=None if small_input else SMALL_INPUT_PATCH_SIZE)
    grid_height, grid_width = images.shape[1] // patch_size, images.shape[2] // patch_size

    # lecun_normal is torchvision's conv_proj init: truncated normal, std sqrt(1 / fan_in).
    x = keras.layers.Conv2D(
        spec.hidden_dim,
        patch_size,
        strides=patch_size,
        kernel_initializer="lecun_normal",
        name="conv_proj",
    )(images)
    # Row-major token order, as torchvision's reshape + permute of its NCHW map.
    x = keras.layers.Reshape((grid_height * grid_width, spec.hidden_dim), name="conv_proj_flatten")(x)
    x = ClassToken(name="encoder_class_token")(x)
    x = PositionEmbedding(name="pos_embedding")(x)
    x = keras.layers.Dropout(dropout, name="pos_dropout")(x)
    for block_index in range(spec.depth):
        x = _encoder_block(
            x,
            spec,
            dropout=dropout,
            attention_dropout=attention_dropout,
            name=f"encoder_block{block_index + 1}",
        )
    tokens = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="encoder_ln")(x)

    patches = keras.layers.Cropping1D((1, 0), name="patch_tokens_crop")(tokens)
    patches = keras.layers.Reshape(
        (grid_height, grid_width, spec.hidden_dim), name="patch_tokens_grid"
    )(patches)
    return {"features": patches, "tokens": tokens}
