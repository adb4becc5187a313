"""Loading keras.applications' legacy `.h5` weight files, and our own formats.

Offline stand-in for the downloads: the real keras.applications model with every weight
randomised (BatchNorm statistics and conv biases included), written in the legacy
layer-name-keyed layout by Keras's own legacy writer. Our builder loads it and must give the
same outputs within 1e-4 on the same raw 0..255 pixels: keras.applications' model after its
`preprocess_input`, or with its built-in preprocessing (ConvNeXt).
"""

import logging

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import architectures
from architectures.weights import load_weights
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import randomise_weights

INPUT_SHAPE = (64, 64, 3)

# One variant per family keras.applications publishes weights for: (ours, keras's model, its preprocess_input).
KERAS_APPLICATIONS = [
    ("resnet50", keras.applications.ResNet50, keras.applications.resnet.preprocess_input),
    ("vgg16", keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
    ("densenet121", keras.applications.DenseNet121, keras.applications.densenet.preprocess_input),
    ("convnext_tiny", keras.applications.ConvNeXtTiny, keras.applications.convnext.preprocess_input),  # identity: inside the model
    ("mobilenet_v1", keras.applications.MobileNet, keras.applications.mobilenet.preprocess_input),
    ("mobilenet_v2", keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
    ("xception", keras.applications.Xception, keras.applications.xception.preprocess_input),
]
# Sizes each keras.applications model accepts and that keep the test light.
TEST_SIZE = {"vgg16": (32, 32, 3), "densenet121": (32, 32, 3), "mobilenet_v1": (32, 32, 3), "mobilenet_v2": (32, 32, 3), "xception": (71, 71, 3)}


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def write_legacy_h5(model: keras.Model, path) -> None:
    with h5py.File(path, "w") as weights_file:
        legacy_h5_format.save_weights_to_hdf5_group(weights_file, model)


def raw_pixels(seed: int, shape: tuple[int, int, int], count: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, *shape)).astype("float32")


@pytest.mark.parametrize("name, keras_builder, preprocess_input", KERAS_APPLICATIONS, ids=[n for n, _, _ in KERAS_APPLICATIONS])
def test_keras_applications_weights_give_identical_outputs_on_raw_pixels(name, keras_builder, preprocess_input, tmp_path):
    input_shape = TEST_SIZE.get(name, INPUT_SHAPE)
    reference = keras_builder(weights=None, input_shape=input_shape, classifier_activation=None)
    randomise_weights(reference, seed=0)
    weights_path = tmp_path / f"{name}_keras_applications.h5"
    write_legacy_h5(reference, weights_path)

    ours = architectures.build(name, input_shape=input_shape, weights=str(weights_path), classifier_activation=None)
    images = raw_pixels(1, input_shape)
    expected = np.asarray(reference(preprocess_input(images.copy()), training=False))
    logits = np.asarray(ours(images, training=False))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, atol=1e-4 * scale)
    np.testing.assert_allclose(
        keras.ops.softmax(logits / scale), keras.ops.softmax(expected / scale), atol=1e-4
    )


def write_keras_2_h5(model: keras.Model, path, file_names: dict[str, str], seed: int) -> dict[str, list[np.ndarray]]:
    """Random weights for `model`'s layers, written as Keras 2 (tf.keras 2.x
    `hdf5_format.save_weights_to_hdf5_group`) wrote the files keras.applications downloads:
    root attributes `layer_names`, `backend`, `keras_version` as bytes; a group per layer,
    created in name order, whose `weight_names` are the variables' names ("conv1/conv/kernel:0"),
    trainable first, each a dataset at that path inside the layer's group. `file_names` maps our
    layer names to the file's where Keras 2 spelled them differently. Returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, "w") as weights_file:
        layer_names = [file_names.get(layer.name, layer.name) for layer in model.layers]
        weights_file.attrs["layer_names"] = np.asarray([layer_name.encode() for layer_name in layer_names])
        weights_file.attrs["backend"] = b"tensorflow"
        weights_file.attrs["keras_version"] = b"2.15.0"
        for layer in sorted(model.layers, key=lambda layer: file_names.get(layer.name, layer.name)):
            file_name = file_names.get(layer.name, layer.name)
            layer_group = weights_file.create_group(file_name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            weight_names = [f"{file_name}/{weight.name}:0".encode() for weight in weights]
            layer_group.attrs["weight_names"] = np.asarray(weight_names)  # an empty float64 array when none, as Keras 2
            written[layer.name] = [rng.uniform(0.5, 1.5, tuple(weight.shape)).astype("float32") for weight in weights]
            for weight_name, values in zip(weight_names, written[layer.name]):
                layer_group.create_dataset(weight_name, data=values)
    return {name: values for name, values in written.items() if values}


def test_keras_2_file_with_slashed_names_and_variable_suffixes_loads_every_weight(tmp_path):
    # keras.applications' DenseNet files come from Keras 2, which allowed "/" in layer names.
    file_names = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}
    weights_path = tmp_path / "densenet121_weights_tf_dim_ordering_tf_kernels.h5"
    source = build_uninitialised("densenet121", input_shape=(32, 32, 3))  # only its names and shapes
    written = write_keras_2_h5(source, weights_path, file_names, seed=10)
    with h5py.File(weights_path, "r") as weights_file:
        assert "conv1/conv/conv1/conv/kernel:0" in weights_file  # the Keras 2 layout, nested groups and all

    loaded = architectures.build("densenet121", input_shape=(32, 32, 3), weights=str(weights_path))
    loaded_weights = {layer.name: layer.get_weights() for layer in loaded.layers if layer.weights}
    assert loaded_weights.keys() == written.keys()
    for name, arrays in written.items():
        assert len(loaded_weights[name]) == len(arrays), name
        for loaded_array, written_array in zip(loaded_weights[name], arrays):
            np.testing.assert_array_equal(loaded_array, written_array, err_msg=name)


def test_resnet_weights_select_the_v1_layout_and_fold_conv_biases(tmp_path):
    reference = keras.applications.ResNet50(weights=None, input_shape=INPUT_SHAPE)
    randomise_weights(reference, seed=3)
    weights_path = tmp_path / "resnet50.h5"
    write_legacy_h5(reference, weights_path)
    ours = architectures.build("resnet50", input_shape=INPUT_SHAPE, weights=str(weights_path))
    assert ours.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1: stride on the first 1x1
    assert not ours.get_layer("conv3_block1_1_conv").use_bias
    keras_bias = reference.get_layer("conv3_block1_1_conv").bias.numpy()
    keras_mean = reference.get_layer("conv3_block1_1_bn").moving_mean.numpy()
    np.testing.assert_allclose(ours.get_layer("conv3_block1_1_bn").moving_mean.numpy(), keras_mean - keras_bias, atol=1e-6)
    with pytest.raises(architectures.UserError, match="trained with layout='v1'"):
        architectures.build("resnet50", input_shape=INPUT_SHAPE, weights=str(weights_path), layout="v1.5")


def test_headless_model_loads_backbone_from_full_file(tmp_path):
    reference = keras.applications.DenseNet121(weights=None, input_shape=INPUT_SHAPE)
    randomise_weights(reference, seed=4)
    weights_path = tmp_path / "densenet121.h5"
    write_legacy_h5(reference, weights_path)
    ours = architectures.build("densenet121", include_top=False, pooling="avg", input_shape=INPUT_SHAPE, weights=str(weights_path))
    reference_features = keras.Model(reference.input, reference.get_layer("avg_pool").output)
    images = raw_pixels(5, INPUT_SHAPE)
    expected = reference_features(keras.applications.densenet.preprocess_input(images.copy()))
    np.testing.assert_allclose(np.asarray(ours(images)), np.asarray(expected), atol=1e-4)


def test_full_file_with_other_classes_loads_all_but_the_classifier_and_logs_it(tmp_path, caplog):
    reference = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3))
    randomise_weights(reference, seed=11)
    weights_path = tmp_path / "mobilenet_v2.h5"
    write_legacy_h5(reference, weights_path)
    with caplog.at_level(logging.INFO, logger="architectures.registry"):
        ours = architectures.build("mobilenet_v2", num_classes=10, alpha=0.35, input_shape=(32, 32, 3), weights=str(weights_path))
    assert "new: predictions" in caplog.text and "loaded 104 layers (Conv1 ... Conv_1_bn)" in caplog.text
    for layer in ours.layers:
        if layer.weights and layer.name != "predictions":
            for loaded, written in zip(layer.get_weights(), reference.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(loaded, written, err_msg=layer.name)
    assert ours.get_layer("predictions").kernel.shape == (1280, 10)


def test_another_backbone_shape_is_still_refused(tmp_path):
    weights_path = tmp_path / "mobilenet_v2.h5"
    write_legacy_h5(keras.applications.MobileNetV2(weights=None, alpha=0.5, input_shape=(32, 32, 3)), weights_path)
    with pytest.raises(architectures.UserError, match=r"layer 'block_1_project' has weights of shapes .* another variant"):
        architectures.build("mobilenet_v2", num_classes=10, alpha=0.35, input_shape=(32, 32, 3), weights=str(weights_path))


def test_file_for_another_architecture_is_refused(tmp_path):
    weights_path = tmp_path / "vgg16.h5"
    write_legacy_h5(keras.applications.VGG16(weights=None, input_shape=(32, 32, 3)), weights_path)
    with pytest.raises(architectures.UserError, match="has no weights for .* layer"):
        architectures.build("resnet18", input_shape=(32, 32, 3), weights=str(weights_path))


def test_not_an_hdf5_file_is_refused(tmp_path):
    weights_path = tmp_path / "broken.h5"
    weights_path.write_bytes(b"this is not HDF5")
    with pytest.raises(architectures.UserError, match="is not an HDF5 weights file"):
        architectures.build("resnet18", weights=str(weights_path))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_own_weight_files_round_trip(suffix, tmp_path):
    model = architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1))
    randomise_weights(model, seed=6)
    path = tmp_path / f"resnet20{suffix}"
    if suffix == ".keras":
        model.save(path)
    else:
        model.save_weights(path)
    loaded = architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1), weights=str(path))
    images = np.random.default_rng(7).uniform(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model(images)), atol=1e-6)


def test_own_weights_of_another_shape_are_refused(tmp_path):
    path = tmp_path / "resnet20.weights.h5"
    architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1)).save_weights(path)
    with pytest.raises(architectures.UserError, match="cannot load"):
        architectures.build("resnet20", num_classes=7, input_shape=(28, 28, 1), weights=str(path))


def _single_layer_model(layer: keras.layers.Layer, input_shape: tuple[int, int, int]) -> keras.Model:
    images = keras.Input(input_shape)
    return keras.Model(images, layer(images))


@pytest.mark.parametrize("depth_multiplier", [1, 2])
def test_grouped_conv_kernel_loads_into_depthwise_conv(depth_multiplier, tmp_path):
    # keras.applications' ConvNeXt stores its depthwise convolutions as Conv2D(groups=C),
    # kernel (kh, kw, 1, C*M); ours are DepthwiseConv2D, kernel (kh, kw, C, M).
    channels, input_shape = 3, (9, 9, 3)
    grouped = _single_layer_model(
        keras.layers.Conv2D(channels * depth_multiplier, 5, padding="same", groups=channels, name="dw"), input_shape
    )
    randomise_weights(grouped, seed=8)
    weights_path = tmp_path / "grouped.h5"
    write_legacy_h5(grouped, weights_path)

    depthwise = _single_layer_model(
        keras.layers.DepthwiseConv2D(5, padding="same", depth_multiplier=depth_multiplier, name="dw"), input_shape
    )
    load_weights(depthwise, str(weights_path))
    images = np.random.default_rng(9).normal(size=(2, *input_shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(depthwise(images)), np.asarray(grouped(images)), atol=1e-5)


@pytest.mark.parametrize(("kernel_size", "channels"), [(3, 3), (5, 4)], ids=["kernel_size", "channels"])
def test_grouped_conv_kernel_of_another_shape_is_refused_by_depthwise_conv(kernel_size, channels, tmp_path):
    grouped = _single_layer_model(
        keras.layers.Conv2D(channels, kernel_size, padding="same", groups=channels, name="dw"), (9, 9, channels)
    )
    weights_path = tmp_path / "grouped.h5"
    write_legacy_h5(grouped, weights_path)
    depthwise = _single_layer_model(keras.layers.DepthwiseConv2D(5, padding="same", name="dw"), (9, 9, 3))
    with pytest.raises(architectures.UserError, match=r"layer 'dw' has weights of shapes \[\(\d, \d, 1, \d\)"):
        load_weights(depthwise, str(weights_path))
