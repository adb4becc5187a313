"""Loading weight files into the zoo's builders.

Three formats:
- the project's own `.weights.h5` and `.keras` files: Keras's own loader;
- keras.applications' downloads, the legacy layer-name-keyed `.h5` layout (Keras 2 era, also
  what `keras.src.legacy.saving.legacy_h5_format` writes): read here with h5py and matched
  to our layers by name.

Matching a legacy file by name:
- "/" in old layer names ("conv1/conv" in DenseNet's files) reads as "_" (Keras 3 names);
- a layer nested in the file (ConvNeXt's stem is a Sequential: weight
  "convnext_tiny_stem/convnext_tiny_stem_conv/kernel") belongs to its inner layer, which is
  top-level in our flat functional graphs;
- a convolution bias in the file for a bias-free convolution of ours (keras.applications'
  ResNets) is folded into the BatchNorm that follows it: BN(conv(x) + b) with moving mean m
  equals BN(conv(x)) with moving mean m - b, exactly;
- a depthwise convolution the file stores as a grouped Conv2D with groups=C (keras.applications'
  ConvNeXt: kernel (kh, kw, 1, C*M)) loads into our DepthwiseConv2D (kernel (kh, kw, C, M), M
  its depth multiplier) reshaped: grouped output channel c*M + m is depthwise channel c's m-th;
- layers the file names by Keras's auto-names (Xception's residual convs "conv2d_1" ...)
  that no layer of ours is called are matched to our still-unmatched layers in order, as
  Keras's own legacy loader matches every layer, provided every weight shape agrees;
- a new head: layers the caller names as the head keep their fresh initialisation where the
  file lacks them (a `_notop` file) or holds another shape (another number of classes).
"""

from __future__ import annotations

from collections import OrderedDict

import h5py
import keras
import numpy as np

from architectures.errors import UserError


def load_weights(model: keras.Model, path: str, *, head_layers: frozenset[str] = frozenset()) -> list[str]:
    """Load `path` into `model`; a mismatch raises `UserError` naming the first bad layer.

    Returns the weighted layers left as built: those of `head_layers` (names) that a legacy
    file lacks or holds in another shape. Our own formats load whole.
    """
    if path.endswith((".keras", ".weights.h5")):
        try:
            model.load_weights(path)
        except (ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot load {path} into {model.name}: {first_line}") from None
        return []
    return _assign(model, read_legacy_h5(path), path, head_layers)


def read_legacy_h5(path: str) -> OrderedDict[str, list[np.ndarray]]:
    """Layer name (Keras 3 spelling) -> its arrays, in file order."""
    try:
        weights_file = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 weights file") from None
    arrays: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    with weights_file:
        group = weights_file["model_weights"] if "model_weights" in weights_file else weights_file
        if "layer_names" not in group.attrs:
            raise UserError(f"{path} is not a Keras weights file (no 'layer_names' attribute)")
        for layer_name in _strings(group.attrs["layer_names"]):
            layer_group = group[layer_name]
            for weight_name in _strings(layer_group.attrs.get("weight_names", [])):
                owner = _owner(layer_name, weight_name)
                arrays.setdefault(owner, []).append(np.asarray(layer_group[weight_name]))
    return arrays


def legacy_weight_count(path: str, layer_name: str) -> int | None:
    """How many arrays a legacy `.h5` file holds for one layer; None if it is not such a file
    or has no such layer (the loader reports those when it loads)."""
    try:
        weights_file = h5py.File(path, "r")
    except OSError:
        return None
    with weights_file:
        group = weights_file["model_weights"] if "model_weights" in weights_file else weights_file
        layer_group = group.get(layer_name)
        return None if layer_group is None else len(layer_group.attrs.get("weight_names", []))


def _strings(values) -> list[str]:
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for value in values]


def _owner(layer_name: str, weight_name: str) -> str:
    """The layer a weight belongs to: the file's layer, or the inner layer of a nested one."""
    weight_name = weight_name.split(":")[0]
    owner = layer_name
    if weight_name.startswith(layer_name + "/"):
        inner_path = weight_name[len(layer_name) + 1 :]
        if "/" in inner_path:
            owner = inner_path.rsplit("/", 1)[0].split("/")[-1]
    return owner.replace("/", "_")


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def _assign(
    model: keras.Model, arrays: OrderedDict[str, list[np.ndarray]], path: str, head_layers: frozenset[str]
) -> list[str]:
    claimed = {layer.name for layer in _weighted_layers(model)}
    new_layers = [
        layer.name
        for layer in _weighted_layers(model)
        if layer.name in head_layers and not _fits(layer, arrays.get(layer.name))
    ]
    layers = [layer for layer in _weighted_layers(model) if layer.name not in new_layers]
    unmatched_layers = [layer for layer in layers if layer.name not in arrays]
    unmatched_entries = [name for name in arrays if name not in claimed]
    pairs = [(layer, layer.name) for layer in layers if layer.name in arrays]
    pairs += _pair_auto_named(unmatched_layers, unmatched_entries, arrays, path, model.name)

    folded_biases: dict[str, np.ndarray] = {}
    values: dict[str, list[np.ndarray]] = {}
    for layer, entry in pairs:
        file_arrays = _in_model_layout(layer, arrays[entry])
        if _is_biasless_conv(layer) and len(file_arrays) == 2:
            folded_biases[_following_batchnorm(layer.name)] = file_arrays.pop()
        _check_shapes(layer, file_arrays, path)
        values[layer.name] = file_arrays
    for bn_name, bias in folded_biases.items():
        if bn_name not in values:
            raise UserError(f"{path}: conv bias for {bn_name!r} has no BatchNorm of that name in {model.name}")
        gamma, beta, moving_mean, moving_variance = values[bn_name]
        values[bn_name] = [gamma, beta, moving_mean - bias, moving_variance]
    for layer, _ in pairs:
        layer.set_weights(values[layer.name])
    return new_layers


def _fits(layer: keras.layers.Layer, file_arrays: list[np.ndarray] | None) -> bool:
    """The file holds arrays of exactly this layer's shapes."""
    if file_arrays is None:
        return False
    file_shapes = [array.shape for array in _in_model_layout(layer, file_arrays)]
    return file_shapes == [tuple(weight.shape) for weight in layer.weights]


def _pair_auto_named(
    layers: list[keras.layers.Layer],
    entries: list[str],
    arrays: OrderedDict[str, list[np.ndarray]],
    path: str,
    model_name: str,
) -> list[tuple[keras.layers.Layer, str]]:
    """Pair layers the file does not name with its leftover entries, in order, shapes agreeing."""
    if not layers:
        return []
    shapes_agree = len(layers) <= len(entries) and all(
        [tuple(weight.shape) for weight in layer.weights]
        == [array.shape for array in _in_model_layout(layer, arrays[entry])]
        for layer, entry in zip(layers, entries)
    )
    if not shapes_agree:
        missing = ", ".join(layer.name for layer in layers[:3])
        raise UserError(
            f"{path} has no weights for {len(layers)} layer(s) of {model_name} (first: {missing}); "
            "is it a file for this architecture?"
        )
    return list(zip(layers, entries))


def _in_model_layout(layer: keras.layers.Layer, file_arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The file's arrays for `layer`, a grouped-conv kernel (kh, kw, 1, C*M) reshaped to our
    DepthwiseConv2D's (kh, kw, C, M); any other array as it is (a wrong shape fails later)."""
    file_arrays = list(file_arrays)
    if isinstance(layer, keras.layers.DepthwiseConv2D) and file_arrays:
        kernel_height, kernel_width, channels, multiplier = layer.kernel.shape
        if file_arrays[0].shape == (kernel_height, kernel_width, 1, channels * multiplier):
            file_arrays[0] = file_arrays[0].reshape(kernel_height, kernel_width, channels, multiplier)
    return file_arrays


def _is_biasless_conv(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Conv2D) and not layer.use_bias


def _following_batchnorm(conv_name: str) -> str:
    """`conv2_block1_1_conv` -> `conv2_block1_1_bn` (the names keras.applications uses)."""
    return conv_name.removesuffix("_conv") + "_bn"


def _check_shapes(layer: keras.layers.Layer, file_arrays: list[np.ndarray], path: str) -> None:
    expected = [tuple(weight.shape) for weight in layer.weights]
    found = [array.shape for array in file_arrays]
    if expected != found:
        raise UserError(
            f"{path}: layer {layer.name!r} has weights of shapes {found} in the file but {expected} in the "
            "model (a file for another variant or width multiplier?)"
        )
