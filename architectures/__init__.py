"""The architecture zoo: Keras functional builders for the lecture's networks.

    import architectures
    architectures.names("resnet*")
    model = architectures.build("resnet50", num_classes=10, input_shape=(64, 64, 3))

Families are imported by an explicit list, so registration order is fixed and a family
that fails to import fails loudly.
"""

from architectures import (  # noqa: F401  (imported to register the families)
    mlp,
    allconv,
    vgg,
    googlenet,
    resnet,
    densenet,
    convnext,
    squeezenet,
    mobilenet_v1,
    mobilenet_v2,
    xception,
    vit,
    resmlp,
    resnet_cifar,
    wide_resnet,
    airbench,
)
from architectures.errors import UserError
from architectures.registry import backbone_layer_names, build, check, families, info, names

__all__ = ["UserError", "backbone_layer_names", "build", "check", "families", "info", "names"]
