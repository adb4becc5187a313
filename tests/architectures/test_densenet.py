"""DenseNet: torchvision's parameter counts, keras.applications' names, weights and outputs; the
CIFAR DenseNet-BC against its paper, its shapes and dropout."""

import keras
import numpy as np
import pytest

import architectures
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import build_keras_uninitialised
from tests.architectures.reference_counts import PARAMS, SMALL_IMAGE_PARAMS

KERAS_APPLICATIONS = {
    "densenet121": keras.applications.DenseNet121,
    "densenet169": keras.applications.DenseNet169,
    "densenet201": keras.applications.DenseNet201,
}


def _trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _weighted_layers(model: keras.Model) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """(layer name, [(weight name, shape), ...]) for every layer with weights, in model order."""
    return [
        (layer.name, [(weight.name, tuple(weight.shape)) for weight in layer.weights])
        for layer in model.layers
        if layer.weights
    ]


def _randomise(model: keras.Model, seed: int) -> None:
    """Random BatchNorm scales, shifts and moving statistics, so that copying them is tested;
    convolution and dense kernels keep their random initialisation."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),  # gamma
                    rng.normal(0.0, 0.1, channels),  # beta
                    rng.normal(0.0, 0.1, channels),  # moving_mean
                    rng.uniform(0.5, 1.5, channels),  # moving_variance
                ]
            )


def _copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy every weighted layer of `source` into the layer of `target` with the same name."""
    copied = 0
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    return copied


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_densenet_parameter_count_matches_torchvision(name):
    expected, _tolerance, _source = PARAMS[name]
    assert _trainable_count(build_uninitialised(name)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_APPLICATIONS))
def test_densenet_weighted_layers_match_keras_applications(name):
    # Weight shapes do not depend on the input size, so a small input keeps the build cheap.
    reference = build_keras_uninitialised(KERAS_APPLICATIONS[name], weights=None, input_shape=(64, 64, 3))
    ours = build_uninitialised(name, input_shape=(64, 64, 3))
    assert _weighted_layers(ours) == _weighted_layers(reference)


def test_densenet121_layer_names_match_keras_applications_except_its_auto_named_ones():
    reference = build_keras_uninitialised(keras.applications.DenseNet121, weights=None, input_shape=(64, 64, 3))
    ours = build_uninitialised("densenet121", input_shape=(64, 64, 3))
    auto_named = (keras.layers.InputLayer, keras.layers.ZeroPadding2D)
    reference_names = [layer.name for layer in reference.layers if not isinstance(layer, auto_named)]
    our_names = [layer.name for layer in ours.layers if not isinstance(layer, auto_named)]
    assert our_names == reference_names
    assert [layer.name for layer in ours.layers if isinstance(layer, keras.layers.ZeroPadding2D)] == [
        "conv1_pad",
        "pool1_pad",
    ]


def test_densenet121_with_keras_applications_weights_gives_keras_applications_outputs():
    reference = keras.applications.DenseNet121(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    _randomise(reference, seed=0)
    ours = architectures.build(
        "densenet121", input_shape=(64, 64, 3), num_classes=10, classifier_activation=None
    )
    assert _copy_weights_by_name(reference, ours) == len(_weighted_layers(ours))

    images = np.random.default_rng(1).uniform(0.0, 1.0, (2, 64, 64, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(reference(images, training=False))
    actual = keras.ops.convert_to_numpy(ours(images, training=False))
    assert np.std(expected) > 1e-2  # the comparison means something: outputs are not all ~0
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_densenet121_default_stem_reduces_32_pixels_to_one():
    model = architectures.build("densenet121", input_shape=(32, 32, 3), include_top=False)
    assert model.output_shape == (None, 1, 1, 1024)


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (28, 28, 1)])
def test_densenet121_small_input_forward_pass_is_finite(input_shape):
    model = architectures.build("densenet121", input_shape=input_shape, num_classes=10, small_input=True)
    images = np.random.default_rng(0).uniform(0.0, 1.0, (2, *input_shape)).astype("float32")
    outputs = keras.ops.convert_to_numpy(model(images, training=False))
    assert outputs.shape == (2, 10)
    assert np.all(np.isfinite(outputs))
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def test_densenet_small_input_uses_a_3x3_stride_1_stem_without_max_pool():
    model = architectures.build(
        "densenet121", input_shape=(32, 32, 3), include_top=False, small_input=True
    )
    layer_names = {layer.name for layer in model.layers}
    assert "pool1" not in layer_names and "pool1_pad" not in layer_names and "conv1_pad" not in layer_names
    assert tuple(model.get_layer("conv1_conv").kernel.shape) == (3, 3, 3, 64)
    assert model.output_shape == (None, 4, 4, 1024)  # three transitions halve 32 px: 32 / 8


def test_densenet_without_small_input_rejects_inputs_under_32_pixels():
    with pytest.raises(architectures.UserError, match="small_input=True"):
        architectures.build("densenet121", input_shape=(28, 28, 1))


def test_densenet_rejects_non_boolean_small_input():
    with pytest.raises(architectures.UserError, match="'yes'"):
        architectures.build("densenet121", input_shape=(32, 32, 3), small_input="yes")


def test_densenet_rejects_options_it_does_not_have():
    with pytest.raises(architectures.UserError, match="memory_efficient"):
        architectures.build("densenet121", memory_efficient=True)


def test_densenet121_survives_a_keras_save_and_load_round_trip(tmp_path):
    model = architectures.build("densenet121", input_shape=(32, 32, 3), num_classes=10, small_input=True)
    images = np.random.default_rng(0).uniform(0.0, 1.0, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "densenet121.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.name == "densenet121"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
        atol=1e-6,
    )


def test_densenet_bc_parameter_count_matches_the_paper():
    expected, tolerance, source = SMALL_IMAGE_PARAMS["densenet_bc_100_12"]
    actual = _trainable_count(build_uninitialised("densenet_bc_100_12", num_classes=10, input_shape=(32, 32, 3)))
    assert actual == pytest.approx(expected, rel=tolerance), source


def test_densenet_bc_keeps_a_quarter_of_the_input_and_gives_finite_probabilities():
    model = architectures.build("densenet_bc_100_12", num_classes=10, input_shape=(28, 28, 1))
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, 7, 7, 342)
    images = np.random.default_rng(0).uniform(0.0, 1.0, (2, 28, 28, 1)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_densenet_bc_dropout_follows_every_convolution_but_the_stem():
    model = architectures.build("densenet_bc_100_12", input_shape=(8, 8, 3), include_top=False, dropout=0.2)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 2 * 3 * 16 + 2  # two per dense layer, one per transition
    assert all(layer.rate == 0.2 for layer in dropouts)
    assert "conv2_block1_1_drop" in [layer.name for layer in dropouts]
    plain = architectures.build("densenet_bc_100_12", input_shape=(8, 8, 3), include_top=False)
    assert not [layer for layer in plain.layers if isinstance(layer, keras.layers.Dropout)]
