"""VGG: torchvision's parameter counts, keras.applications' names and weight layout."""

import keras
import numpy as np
import pytest

import architectures
from architectures import UserError
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import build_keras_uninitialised
from tests.architectures.reference_counts import PARAMS

VGG_VARIANTS = ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
KERAS_APPLICATIONS = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def weighted_layers(model: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [
        (layer.name, [tuple(weight.shape) for weight in layer.weights])
        for layer in model.layers
        if layer.weights
    ]


@pytest.fixture(autouse=True)
def fresh_session():
    yield
    keras.backend.clear_session()


def test_every_variant_is_registered():
    assert sorted(architectures.names("vgg*")) == sorted(VGG_VARIANTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", VGG_VARIANTS)
def test_parameter_count_matches_torchvision_at_224(name):
    expected, _, _ = PARAMS[name]
    assert trainable_count(build_uninitialised(name)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_matches_keras_applications_layer_names_and_weight_shapes(name):
    reference = weighted_layers(build_keras_uninitialised(KERAS_APPLICATIONS[name], weights=None))
    keras.backend.clear_session()
    ours = weighted_layers(build_uninitialised(name))
    # Same names, same per-layer weight shapes, same order: legacy .h5 files load by either.
    assert ours == reference


def test_vgg16_computes_what_keras_applications_computes_with_the_same_weights():
    # At 32 px the flatten head is small (512 inputs to fc1), so this runs in a second.
    reference = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))
    ours = architectures.build("vgg16", input_shape=(32, 32, 3))
    ours.set_weights(reference.get_weights())
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32) * 255.0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(images)),
        keras.ops.convert_to_numpy(reference(images)),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
@pytest.mark.parametrize("input_shape", [(32, 32, 3), (28, 28, 1)])
def test_small_input_forward_pass_gives_finite_probabilities(name, input_shape):
    model = architectures.build(name, num_classes=10, input_shape=input_shape, small_input=True)
    images = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(model(images))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_small_input_drops_the_last_pool_so_32_px_ends_at_2x2():
    plain = architectures.build("vgg11", include_top=False, input_shape=(32, 32, 3))
    small = architectures.build("vgg11", include_top=False, input_shape=(32, 32, 3), small_input=True)
    assert plain.output_shape == (None, 1, 1, 512)
    assert small.output_shape == (None, 2, 2, 512)
    assert "block5_pool" in [layer.name for layer in plain.layers]
    assert "block5_pool" not in [layer.name for layer in small.layers]


def test_flatten_head_is_sized_by_the_input():
    model = architectures.build("vgg11", num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert model.get_layer("fc1").kernel.shape == (2 * 2 * 512, 4096)


def test_batch_norm_variants_name_bn_and_relu_after_each_conv():
    model = architectures.build("vgg11_bn", include_top=False, input_shape=(32, 32, 3))
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["images", "block1_conv1", "block1_conv1_bn", "block1_conv1_relu", "block1_pool"]


@pytest.mark.parametrize(("input_shape", "small_input"), [((28, 28, 3), False), ((15, 15, 3), True)])
def test_inputs_below_the_minimum_raise_user_error(input_shape, small_input):
    with pytest.raises(UserError, match="at least"):
        architectures.build("vgg11", input_shape=input_shape, small_input=small_input)


def test_dropout_option_sets_both_classifier_dropouts():
    model = architectures.build("vgg11", num_classes=10, input_shape=(32, 32, 3), dropout=0.2)
    assert [model.get_layer(name).rate for name in ("fc1_dropout", "fc2_dropout")] == [0.2, 0.2]


@pytest.mark.parametrize("dropout", [1.0, -0.1, "half", True])
def test_invalid_dropout_raises_user_error_naming_the_value(dropout):
    with pytest.raises(UserError, match=repr(dropout).replace(".", r"\.")):
        architectures.build("vgg11", num_classes=10, input_shape=(32, 32, 3), dropout=dropout)


def test_unknown_option_raises_user_error():
    with pytest.raises(UserError, match="batch_norm"):
        architectures.build("vgg11", batch_norm=True)


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    # Features only: the fc head is plain Dense/Dropout and would make the file 110 MB.
    model = architectures.build("vgg11_bn", include_top=False, pooling="avg", input_shape=(32, 32, 3))
    images = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "vgg11_bn.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-5,
        atol=1e-6,
    )
