"""MobileNet v1 / v2: keras.applications' counts, names, weight shapes and outputs (randomised
keras.applications weights copied by name give the same logits), width multiplier, dropout,
small inputs, serialization."""

import keras
import numpy as np
import pytest

import architectures
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import copy_weights_by_name, randomise_weights
from tests.architectures.reference_counts import PARAMS

KERAS_BUILDERS = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2}


def _trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _weighted_layers(model: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenet_trainable_params_equal_reference(name):
    keras.backend.clear_session()
    model = build_uninitialised(name)
    expected, _, _ = PARAMS[name]
    assert _trainable_params(model) == expected


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [
        ("mobilenet_v1", (128, 128, 3)),
        ("mobilenet_v2", (96, 96, 3)),
        # Odd sides (50 -> 25 -> 13 -> 7) exercise correct_pad's symmetric branch.
        ("mobilenet_v2", (96, 100, 3)),
    ],
)
def test_keras_applications_weights_load_by_name_and_give_the_same_logits(name, input_shape):
    keras.backend.clear_session()
    reference = KERAS_BUILDERS[name](weights=None, input_shape=input_shape, classifier_activation=None)
    randomise_weights(reference, seed=1)
    ours = architectures.build(name, input_shape=input_shape, classifier_activation=None)
    assert _weighted_layers(ours) == _weighted_layers(reference)  # names, weight shapes, order
    copy_weights_by_name(reference, ours)
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (2, *input_shape)).astype("float32")
    expected = reference(images, training=False).numpy()
    # The logits depend on the image, so they are not just the BN offsets passed through.
    assert np.abs(expected[0] - expected[1]).max() > 0.05 * np.abs(expected).max()
    np.testing.assert_allclose(ours(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "alpha"), [("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35), ("mobilenet_v2", 1.4)])
def test_width_multiplier_rounds_filters_as_keras_applications(name, alpha):
    keras.backend.clear_session()
    reference = KERAS_BUILDERS[name](weights=None, alpha=alpha, input_shape=(32, 32, 3))
    ours = architectures.build(name, alpha=alpha, input_shape=(32, 32, 3))
    assert _weighted_layers(ours) == _weighted_layers(reference)


def test_mobilenet_v1_head_is_keras_applications_conv_classifier():
    keras.backend.clear_session()
    model = architectures.build("mobilenet_v1", num_classes=10, input_shape=(32, 32, 3))
    head = [layer.name for layer in model.layers[-5:]]
    assert head == ["avg_pool", "conv_preds_dropout", "conv_preds", "conv_preds_reshape", "predictions"]
    assert model.get_layer("conv_preds_dropout").rate == 1e-3  # keras.applications' default
    assert [tuple(w.shape) for w in model.get_layer("conv_preds").weights] == [(1, 1, 1024, 10), (10,)]


def test_mobilenet_v2_has_no_dropout_unless_asked():
    keras.backend.clear_session()
    plain = architectures.build("mobilenet_v2", num_classes=10, input_shape=(32, 32, 3))
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    with_dropout = architectures.build("mobilenet_v2", num_classes=10, input_shape=(32, 32, 3), dropout=0.2)
    assert with_dropout.get_layer("predictions_dropout").rate == 0.2
    assert _trainable_params(with_dropout) == _trainable_params(plain)


def test_mobilenet_v1_dropout_option_sets_the_rate():
    keras.backend.clear_session()
    model = architectures.build("mobilenet_v1", num_classes=10, input_shape=(32, 32, 3), dropout=0.3)
    assert model.get_layer("conv_preds_dropout").rate == 0.3


@pytest.mark.parametrize(
    ("name", "input_shape", "side", "channels"),
    [
        ("mobilenet_v1", (32, 32, 3), 4, 1024),
        # v1 always pads one pixel bottom/right before a stride-2 conv: 28 -> 14 -> 7 -> 3.
        ("mobilenet_v1", (28, 28, 1), 3, 1024),
        ("mobilenet_v2", (32, 32, 3), 4, 1280),
        # v2's correct_pad pads an odd side on both sides: 28 -> 14 -> 7 -> 4.
        ("mobilenet_v2", (28, 28, 1), 4, 1280),
    ],
)
def test_small_input_has_total_stride_8_and_gives_finite_outputs(name, input_shape, side, channels):
    keras.backend.clear_session()
    features = architectures.build(name, include_top=False, input_shape=input_shape, small_input=True)
    assert tuple(features.output.shape[1:]) == (side, side, channels)
    model = architectures.build(name, num_classes=10, input_shape=input_shape, small_input=True)
    outputs = model(np.random.default_rng(0).uniform(-1, 1, (2, *input_shape)).astype("float32")).numpy()
    assert outputs.shape == (2, 10)
    assert np.all(np.isfinite(outputs))
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def test_default_stem_has_total_stride_32():
    keras.backend.clear_session()
    model = architectures.build("mobilenet_v2", include_top=False, input_shape=(64, 64, 3))
    assert tuple(model.output.shape[1:]) == (2, 2, 1280)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mobilenet_v2", {"alpha": 0}, "alpha"),
        ("mobilenet_v2", {"alpha": -1.0}, "alpha"),
        ("mobilenet_v2", {"alpha": "wide"}, "alpha"),
        ("mobilenet_v1", {"alpha": True}, "alpha"),
        ("mobilenet_v1", {"alpha": 0.02}, r"alpha must be a number >= 0\.03125, got 0\.02"),
        ("mobilenet_v1", {"dropout": 1.0}, "dropout"),
        ("mobilenet_v2", {"dropout": -0.1}, "dropout"),
        ("mobilenet_v2", {"dropout": None}, r"dropout must be a number in \[0, 1\), got None"),
        ("mobilenet_v1", {"small_input": 1}, "small_input"),
        ("mobilenet_v1", {"depth_multiplier": 2}, "depth_multiplier"),
    ],
)
def test_invalid_mobilenet_options_raise_user_error_naming_the_value(name, options, message):
    with pytest.raises(architectures.UserError, match=message):
        architectures.build(name, input_shape=(32, 32, 3), **options)


def test_mobilenet_v2_survives_keras_save_and_load(tmp_path):
    keras.backend.clear_session()
    model = architectures.build("mobilenet_v2", num_classes=10, input_shape=(32, 32, 3), alpha=0.35, small_input=True)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "mobilenet_v2.keras")
    loaded = keras.models.load_model(tmp_path / "mobilenet_v2.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-6)
