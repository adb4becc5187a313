"""Xception: keras.applications' count, names (with its auto-named residual layers mapped to
ours), weight shapes, layer order and outputs; small inputs, options, serialization."""

import re

import keras
import numpy as np
import pytest

import architectures
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import randomise_weights
from tests.architectures.reference_counts import PARAMS

# keras.applications leaves the residual 1x1 convs and their BNs auto-named (`conv2d`,
# `batch_normalization`, `conv2d_1`, ...); in its layer order they are these of ours.
RESIDUAL_LAYERS = [
    f"block{block}_residual_{part}" for block in (2, 3, 4, 13) for part in ("conv", "bn")
]
KERAS_AUTO_NAME = re.compile(r"(conv2d|batch_normalization)(_\d+)?")


def _trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def _names_mapped_to_ours(reference: keras.Model) -> list[str]:
    """keras.applications' weighted-layer names in order, auto-names replaced by ours."""
    residual_names = iter(RESIDUAL_LAYERS)
    names = [
        next(residual_names) if KERAS_AUTO_NAME.fullmatch(layer.name) else layer.name
        for layer in _weighted_layers(reference)
    ]
    assert next(residual_names, None) is None, "keras.applications has fewer auto-named layers than expected"
    return names


def test_xception_trainable_params_equal_keras_applications():
    keras.backend.clear_session()
    model = build_uninitialised("xception")
    expected, _, _ = PARAMS["xception"]
    assert _trainable_params(model) == expected
    assert tuple(model.get_layer("block14_sepconv2_act").output.shape[1:]) == (10, 10, 2048)


def test_keras_applications_xception_weights_load_by_mapped_name_and_give_the_same_logits():
    """Every weighted keras.applications layer exists in ours under its (mapped) name, with
    the same weight shapes, in the same order; randomised weights give the same logits."""
    keras.backend.clear_session()
    input_shape = (71, 71, 3)  # keras.applications' smallest: odd sides at every stride-2 step
    reference = keras.applications.Xception(weights=None, input_shape=input_shape, classifier_activation=None)
    randomise_weights(reference, seed=1)
    ours = architectures.build("xception", input_shape=input_shape, classifier_activation=None)

    assert [layer.name for layer in _weighted_layers(ours)] == _names_mapped_to_ours(reference)
    for their_layer, our_layer in zip(_weighted_layers(reference), _weighted_layers(ours)):
        assert [w.shape for w in our_layer.weights] == [w.shape for w in their_layer.weights], our_layer.name
        our_layer.set_weights(their_layer.get_weights())

    images = np.random.default_rng(0).uniform(-1.0, 1.0, (2, *input_shape)).astype("float32")
    expected = reference(images, training=False).numpy()
    # The logits depend on the image, so they are not just the BN offsets passed through.
    assert np.abs(expected[0] - expected[1]).max() > 0.05 * np.abs(expected).max()
    np.testing.assert_allclose(ours(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("input_shape", "side"), [((32, 32, 3), 4), ((28, 28, 1), 3)])
def test_small_input_keeps_a_multi_pixel_feature_map_and_gives_finite_outputs(input_shape, side):
    keras.backend.clear_session()
    model = architectures.build("xception", num_classes=10, input_shape=input_shape, small_input=True)
    assert tuple(model.get_layer("block14_sepconv2_act").output.shape[1:]) == (side, side, 2048)
    outputs = model(np.random.default_rng(0).uniform(-1, 1, (2, *input_shape)).astype("float32")).numpy()
    assert outputs.shape == (2, 10)
    assert np.all(np.isfinite(outputs))
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def test_default_stem_rejects_inputs_below_71_px():
    with pytest.raises(architectures.UserError, match="71x71"):
        architectures.build("xception", input_shape=(64, 64, 3))


@pytest.mark.parametrize("options", [{"small_input": "no"}, {"alpha": 0.5}])
def test_invalid_xception_options_raise_user_error(options):
    with pytest.raises(architectures.UserError, match="small_input|alpha"):
        architectures.build("xception", **options)


def test_xception_survives_keras_save_and_load(tmp_path):
    keras.backend.clear_session()
    model = architectures.build("xception", num_classes=10, input_shape=(28, 28, 1), small_input=True)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 1)).astype("float32")
    model.save(tmp_path / "xception.keras")
    loaded = keras.models.load_model(tmp_path / "xception.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-5)
