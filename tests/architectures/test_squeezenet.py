"""SqueezeNet 1.0 / 1.1: torchvision's parameter counts and spatial sizes, fire modules,
ceil-mode pooling, the convolutional classifier, small inputs, options, serialization."""

import math

import keras
import numpy as np
import pytest

import architectures
from architectures import squeezenet
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import PARAMS


def _trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_trainable_params_equal_torchvision(name):
    keras.backend.clear_session()
    model = build_uninitialised(name)
    expected, _, _ = PARAMS[name]
    assert _trainable_params(model) == expected


@pytest.mark.parametrize(
    ("name", "pool_sizes"),
    [
        # torchvision at 224 px: conv1 109 -> 54 -> 27 -> 13 (1.0); 111 -> 55 -> 27 -> 13 (1.1).
        ("squeezenet1_0", {"pool1_pool": 54, "pool4_pool": 27, "pool8_pool": 13}),
        ("squeezenet1_1", {"pool1_pool": 55, "pool3_pool": 27, "pool5_pool": 13}),
    ],
)
def test_squeezenet_spatial_sizes_match_torchvision_ceil_mode_pools(name, pool_sizes):
    keras.backend.clear_session()
    model = architectures.build(name, include_top=False)
    for layer_name, side in pool_sizes.items():
        assert tuple(model.get_layer(layer_name).output.shape[1:3]) == (side, side), layer_name
    assert tuple(model.output.shape[1:]) == (13, 13, 512)


@pytest.mark.parametrize(("height", "width"), [(7, 7), (8, 8), (8, 7), (2, 3)])
def test_ceil_mode_max_pool_equals_torch_semantics(height, width):
    """MaxPool2d(3, 2, ceil_mode=True): windows start every 2 px, the last may hang over the edge."""
    inputs = keras.Input((height, width, 1))
    pool = keras.Model(inputs, squeezenet._ceil_mode_max_pool(inputs, name="pool"))
    x = np.random.default_rng(0).uniform(0.0, 1.0, (1, height, width, 1)).astype("float32")  # post-ReLU
    out_height = math.ceil((height - 3) / 2) + 1
    out_width = math.ceil((width - 3) / 2) + 1
    expected = np.array(
        [[x[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, 0].max() for j in range(out_width)] for i in range(out_height)]
    )
    np.testing.assert_array_equal(pool(x).numpy()[0, :, :, 0], expected)


def test_fire_module_concatenates_expand_1x1_and_3x3_with_biases_and_no_batchnorm():
    keras.backend.clear_session()
    model = architectures.build("squeezenet1_1", num_classes=10, input_shape=(64, 64, 3))
    assert model.get_layer("fire2_concat").output.shape[-1] == 128
    assert [tuple(w.shape) for w in model.get_layer("fire9_expand3x3_conv").weights] == [(3, 3, 64, 256), (256,)]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_squeezenet_head_is_dropout_conv10_relu_average():
    keras.backend.clear_session()
    model = architectures.build("squeezenet1_0", num_classes=10, input_shape=(64, 64, 3))
    head = [layer.name for layer in model.layers[-5:]]
    assert head == ["conv10_dropout", "conv10", "conv10_relu", "avg_pool", "predictions"]
    assert model.get_layer("conv10_dropout").rate == 0.5
    assert [tuple(w.shape) for w in model.get_layer("conv10").weights] == [(1, 1, 512, 10), (10,)]


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_forward_pass_at_default_stem_gives_probabilities(name):
    keras.backend.clear_session()
    model = architectures.build(name, num_classes=10, input_shape=(64, 64, 3))
    probabilities = model(np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")).numpy()
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "input_shape", "feature_side"),
    [
        ("squeezenet1_0", (32, 32, 3), 4),
        ("squeezenet1_1", (32, 32, 3), 4),
        ("squeezenet1_0", (28, 28, 1), 3),
        ("squeezenet1_1", (28, 28, 1), 3),
    ],
)
def test_small_input_keeps_a_multi_pixel_feature_map(name, input_shape, feature_side):
    keras.backend.clear_session()
    model = architectures.build(name, num_classes=10, input_shape=input_shape, small_input=True)
    features = model.get_layer("fire9_concat").output
    assert tuple(features.shape[1:]) == (feature_side, feature_side, 512)
    assert model.get_layer("conv1").strides == (1, 1)
    outputs = model(np.random.default_rng(0).uniform(0, 1, (2, *input_shape)).astype("float32")).numpy()
    assert outputs.shape == (2, 10)
    assert np.all(np.isfinite(outputs))


def test_include_top_false_with_average_pooling_gives_fire9_channels():
    keras.backend.clear_session()
    model = architectures.build(
        "squeezenet1_1", include_top=False, pooling="avg", input_shape=(32, 32, 3), small_input=True
    )
    assert tuple(model.output.shape) == (None, 512)


@pytest.mark.parametrize("options", [{"small_input": "yes"}, {"conv10_dropout": 0.2}])
def test_invalid_squeezenet_options_raise_user_error(options):
    with pytest.raises(architectures.UserError, match="small_input|dropout"):
        architectures.build("squeezenet1_1", **options)


def test_default_stem_rejects_inputs_below_32_px():
    with pytest.raises(architectures.UserError, match="small_input=True"):
        architectures.build("squeezenet1_0", input_shape=(28, 28, 1))


def test_squeezenet_survives_keras_save_and_load(tmp_path):
    keras.backend.clear_session()
    model = architectures.build("squeezenet1_1", num_classes=10, input_shape=(32, 32, 3), small_input=True)
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "squeezenet.keras")
    loaded = keras.models.load_model(tmp_path / "squeezenet.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-6)
