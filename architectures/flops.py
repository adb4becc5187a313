"""Multiply-accumulate counts of a functional model, from its layers' shapes.

Counts what torchvision's `_ops` figures count: convolutions, dense layers and the two
matrix products of attention (Q.K^T and A.V); one multiply-add is one MAC. Biases,
normalisation, activations and pooling are not counted (they are a fraction of a percent on
the zoo's networks: ResNet-50's BatchNorms are ~0.5% of its convolutions).
"""

from __future__ import annotations

import math

import keras


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass of one image."""
    total = 0
    for layer in _leaf_layers(model):
        for node in layer._inbound_nodes:
            inputs = [tensor.shape for tensor in node.input_tensors]
            outputs = [tensor.shape for tensor in node.output_tensors]
            if inputs and outputs:
                total += _layer_macs(layer, inputs, outputs)
    return total


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves.extend(_leaf_layers(layer))
        else:
            leaves.append(layer)
    return leaves


def _spatial(shape: tuple) -> int:
    """Positions a layer is applied at: the product of the dimensions between batch and channels."""
    return math.prod(int(side) for side in shape[1:-1])


def _layer_macs(layer: keras.layers.Layer, inputs: list[tuple], outputs: list[tuple]) -> int:
    input_shape, output_shape = inputs[0], outputs[0]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel_height, kernel_width = layer.kernel_size
        return _spatial(output_shape) * int(output_shape[-1]) * kernel_height * kernel_width
    if isinstance(layer, keras.layers.SeparableConv2D):
        kernel_height, kernel_width = layer.kernel_size
        depthwise_channels = int(input_shape[-1]) * layer.depth_multiplier
        depthwise = _spatial(output_shape) * depthwise_channels * kernel_height * kernel_width
        return depthwise + _spatial(output_shape) * depthwise_channels * int(output_shape[-1])
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        kernel_positions = math.prod(layer.kernel_size)
        input_channels_per_group = int(input_shape[-1]) // layer.groups
        return _spatial(output_shape) * int(output_shape[-1]) * kernel_positions * input_channels_per_group
    if isinstance(layer, keras.layers.Dense):
        return _spatial(output_shape) * int(input_shape[-1]) * int(output_shape[-1])
    if isinstance(layer, keras.layers.EinsumDense):
        return math.prod(int(side) for side in layer.kernel.shape) * _einsum_positions(layer, output_shape)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return _attention_macs(layer, inputs, output_shape)
    return 0


def _einsum_positions(layer: keras.layers.EinsumDense, output_shape: tuple) -> int:
    """Positions an EinsumDense kernel is applied at: output dims not in the kernel."""
    output_dims = [int(side) for side in output_shape[1:]]
    kernel_out = [int(side) for side in layer.kernel.shape[1:]]
    return max(1, math.prod(output_dims) // max(1, math.prod(kernel_out)))


def _attention_macs(layer: keras.layers.MultiHeadAttention, inputs: list[tuple], output_shape: tuple) -> int:
    """Q, K, V and output projections plus Q.K^T and A.V for every head."""
    query_shape = inputs[0]
    value_shape = inputs[1] if len(inputs) > 1 else inputs[0]
    query_tokens, value_tokens = _spatial(query_shape), _spatial(value_shape)
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    query_width, value_width = int(query_shape[-1]), int(value_shape[-1])
    projections = (
        query_tokens * query_width * heads * key_dim
        + value_tokens * value_width * heads * key_dim
        + value_tokens * value_width * heads * value_dim
        + query_tokens * heads * value_dim * int(output_shape[-1])
    )
    products = heads * query_tokens * value_tokens * (key_dim + value_dim)
    return projections + products
