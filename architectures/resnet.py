"""ResNet, ResNeXt, Wide ResNet, SE-ResNet and CBAM-ResNet.

He et al. 2016 "Deep Residual Learning"; Xie et al. 2017 (ResNeXt); Zagoruyko & Komodakis
2016 (wide); Hu et al. 2018 (SE); Woo et al. 2018 (CBAM). Reference implementations:
torchvision `models/resnet.py` (our default: no conv biases, stride on the 3x3 convolution,
"v1.5") and keras.applications `resnet.py` (layer names, and the "v1" layout with the stride
on the first 1x1 convolution, which its weights were trained with).

Layer names copy keras.applications (`conv1_conv`, `conv3_block2_1_bn`, `conv5_block3_out`),
so its legacy `.h5` weight files load by name; their conv biases are folded into the
following BatchNorm by `architectures.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from architectures import blocks
from architectures.blocks import BN_EPSILON, conv_bn_act, pad_then_conv
from architectures.errors import UserError
from architectures.registry import Option, register_family
from architectures.weights import legacy_weight_count

LAYOUTS = ("v1.5", "v1")  # where a bottleneck's stride sits: the 3x3 (torchvision) or first 1x1 (keras)
OUTPUT_STRIDES = (8, 16, 32)  # 32: plain; 16: conv5 dilated; 8: conv4 and conv5 dilated
ATTENTION_KINDS = ("se", "cbam")  # or None: none
STAGE_WIDTHS = (64, 128, 256, 512)  # "planes" of conv2..conv5; a bottleneck outputs 4x this


@dataclass(frozen=True)
class ResNetSpec:
    block: str  # "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1 with 4x expansion)
    stage_depths: tuple[int, ...]  # residual blocks in conv2..conv5
    groups: int = 1  # ResNeXt cardinality of the 3x3 convolution
    width_per_group: int = 64  # bottleneck width = planes * width_per_group / 64 * groups
    attention: str | None = None  # "se" or "cbam" on every residual branch


SPECS = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": ResNetSpec("bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec("bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8),
    "wide_resnet50_2": ResNetSpec("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "se_resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3), attention="se"),
    "cbam_resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3), attention="cbam"),
}


def keras_applications_layout(weights_path: str) -> dict[str, str]:
    """keras.applications' ResNet `.h5` files have conv biases and the v1 layout; build that."""
    if not weights_path.endswith(".h5") or weights_path.endswith(".weights.h5"):
        return {}
    if legacy_weight_count(weights_path, "conv2_block1_1_conv") == 2:  # kernel and bias
        return {"layout": "v1"}
    return {}


@register_family(
    "resnet",
    SPECS,
    default_size=224,
    reference="He et al. 2016; Xie et al. 2017; torchvision resnet.py, keras.applications resnet.py",
    min_size=32,
    small_input_min_size=8,
    options=(
        Option(
            "output_stride",
            int,
            32,
            "16 or 8 dilate the last one or two stages instead of striding them "
            "(torchvision's replace_stride_with_dilation)",
            choices=OUTPUT_STRIDES,
        ),
        Option("layout", str, "v1.5", "where a bottleneck's stride sits (see LAYOUTS)", choices=LAYOUTS),
        Option("attention", str, None, "on every block; None: the variant's own", choices=ATTENTION_KINDS),
    ),
    weights_options=keras_applications_layout,
)
def resnet_features(
    spec: ResNetSpec,
    images: keras.KerasTensor,
    *,
    small_input: bool,
    output_stride: int,
    layout: str,
    attention: str | None,
) -> keras.KerasTensor:
    """(batch, H, W, 3) -> (batch, H/output_stride, W/output_stride, C); C = 512 or 2048.

    small_input: a 3x3 stride-1 stem without max pooling, so 28-32 px inputs end at 4x4.
    """
    if small_input and output_stride != 32:
        raise UserError("output_stride applies to the ImageNet stem; with small_input the output stride is 8")
    block_attention = attention or spec.attention

    x = _stem(images, small_input)
    dilated_stages = {32: 0, 16: 1, 8: 2}[output_stride]
    dilation = 1
    for stage_index, depth in enumerate(spec.stage_depths):
        stride = 1 if stage_index == 0 else 2
        previous_dilation = dilation
        if stage_index >= len(spec.stage_depths) - dilated_stages:
            dilation, stride = dilation * stride, 1
        for block_index in range(depth):
            x = _residual_block(
                x,
                spec,
                planes=STAGE_WIDTHS[stage_index],
                stride=stride if block_index == 0 else 1,
                dilation=previous_dilation if block_index == 0 else dilation,
                layout=layout,
                block_attention=block_attention,
                name=f"conv{stage_index + 2}_block{block_index + 1}",
            )
    return x


def _stem(images: keras.KerasTensor, small_input: bool) -> keras.KerasTensor:
    """ImageNet: 7x7/2 conv and 3x3/2 max pool, H -> H/4. small_input: one 3x3/1 conv."""
    if small_input:
        return conv_bn_act(images, 64, 3, name="conv1")
    x = conv_bn_act(images, 64, 7, strides=2, name="conv1")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _residual_block(
    x: keras.KerasTensor,
    spec: ResNetSpec,
    *,
    planes: int,
    stride: int,
    dilation: int,
    layout: str,
    block_attention: str | None,
    name: str,
) -> keras.KerasTensor:
    """One residual block: (batch, H, W, C) -> (batch, H/stride, W/stride, planes * expansion)."""
    if spec.block == "basic":
        out_channels = planes
        residual = conv_bn_act(x, planes, 3, strides=stride, dilation_rate=dilation, name=f"{name}_1")
        residual = conv_bn_act(residual, planes, 3, dilation_rate=dilation, activation=None, name=f"{name}_2")
    else:
        out_channels = planes * 4
        width = planes * spec.width_per_group // 64 * spec.groups
        stride_1x1, stride_3x3 = (stride, 1) if layout == "v1" else (1, stride)
        residual = conv_bn_act(x, width, 1, strides=stride_1x1, name=f"{name}_1")
        residual = conv_bn_act(
            residual,
            width,
            3,
            strides=stride_3x3,
            dilation_rate=dilation,
            groups=spec.groups,
            name=f"{name}_2",
        )
        residual = conv_bn_act(residual, out_channels, 1, activation=None, name=f"{name}_3")
    residual = blocks.attention(residual, block_attention, name=name)

    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = pad_then_conv(x, out_channels, 1, strides=stride, name=f"{name}_0")
        shortcut = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = keras.layers.Add(name=f"{name}_add")([shortcut, residual])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)
