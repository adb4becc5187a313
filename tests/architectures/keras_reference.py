"""Helpers for comparing our builders with keras.applications: random weights that keep a
deep network's activations O(1), copying weights layer by layer by name, and building a
reference only for its names and shapes."""

import keras
import numpy as np


def randomise_weights(model: keras.Model, seed: int) -> None:
    """He-normal kernels (so the input's signal survives the depth and a shifted padding grid
    would show in the logits) and random biases, BN scales, offsets and moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if len(shape) == 1:
                if weight.name in ("gamma", "moving_variance"):
                    values = rng.uniform(0.5, 1.5, shape)
                else:
                    values = rng.normal(0.0, 0.2, shape)
            else:
                depthwise = isinstance(layer, keras.layers.DepthwiseConv2D) or weight.name == "depthwise_kernel"
                fan_in = shape[0] * shape[1] if depthwise else int(np.prod(shape[:-1]))
                values = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            weight.assign(values.astype("float32"))


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def build_keras_uninitialised(keras_builder, **arguments) -> keras.Model:
    """A keras.applications model with its weights left uninitialised, for comparing layer
    names and weight shapes (as `architectures.zoo_table.build_uninitialised`)."""
    with keras.StatelessScope(initialize_variables=False):
        return keras_builder(**arguments)
