"""The architecture zoo: Keras functional builders for the lecture's networks.

    import architectures
    architectures.names("resnet*")
    model = architectures.build("resnet50", num_classes=10, input_shape=(64, 64, 3))

Families are imported by an explicit list at the end of `registry.py`, so registration
order is fixed and a family that fails to import fails loudly.
"""

from architectures.errors import UserError

REGISTRY_FUNCTIONS = ("build", "check", "families", "info", "names")
__all__ = ["UserError", *REGISTRY_FUNCTIONS]


def __getattr__(name: str):
    """The registry's functions, imported on first use: importing the package for `UserError`
    alone (the TensorFlow-free REST client does) must not load Keras. The registry imports
    every family when it is first imported (`architectures/registry.py`, at its end)."""
    if name in REGISTRY_FUNCTIONS:
        from architectures import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'architectures' has no attribute {name!r}")
