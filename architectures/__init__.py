"""The architecture zoo: Keras functional builders for the lecture's networks.

    import architectures
    architectures.names("resnet*")
    model = architectures.build("resnet50", num_classes=10, input_shape=(64, 64, 3))

Families are imported by an explicit list, so registration order is fixed and a family
that fails to import fails loudly.
"""

from architectures import (  # noqa: F401  (imported to register the families)
    baselines,
    vgg,
    googlenet,
    resnet,
    densenet,
    convnext,
    squeezenet,
    mobilenet,
    xception,
    vit,
    resmlp,
    small_image,
)
from architectures.errors import UserError
from architectures.registry import build, families, info, names

__all__ = ["UserError", "build", "families", "info", "names"]
