"""CIFAR ResNets: counts against the paper, option A shortcuts, shapes, options, saving, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import architectures
from architectures.resnet_cifar import SPECS, SubsampleZeroPad
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import SMALL_IMAGE_PARAMS

# He et al. 2016 Table 6 (ResNet-32/44/110), checked by formula: they share resnet20's code and
# differ only in n.
PAPER_PARAMS_BY_FORMULA = {"resnet32": (5, 460_000), "resnet44": (7, 660_000), "resnet110": (18, 1_700_000)}


def count_params(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def resnet_cifar_params_by_formula(blocks_per_stage: int, num_classes: int, in_channels: int) -> int:
    """Convolutions without bias, BN gamma/beta, Dense; option A shortcuts counted as zero."""
    total = 3 * 3 * in_channels * 16 + 2 * 16  # stem conv + BN
    channels = 16
    for width in (16, 32, 64):
        for _ in range(blocks_per_stage):
            total += 3 * 3 * channels * width + 2 * width + 3 * 3 * width * width + 2 * width
            channels = width
    return total + 64 * num_classes + num_classes


def random_images(batch: int, shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, (batch, *shape)).astype("float32")


@pytest.mark.parametrize("name", sorted(set(SPECS) & set(SMALL_IMAGE_PARAMS)))
def test_parameter_count_matches_the_paper(name):
    expected, tolerance = SMALL_IMAGE_PARAMS[name][:2]
    model = build_uninitialised(name, num_classes=10, input_shape=(32, 32, 3))
    actual = count_params(model)
    keras.backend.clear_session()
    assert abs(actual - expected) <= tolerance * expected, f"{name}: {actual:,} vs {expected:,}"


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_BY_FORMULA))
def test_deeper_resnet_cifar_formula_matches_the_paper(name):
    blocks_per_stage, expected = PAPER_PARAMS_BY_FORMULA[name]
    assert architectures.info(name).spec.blocks_per_stage == blocks_per_stage
    actual = resnet_cifar_params_by_formula(blocks_per_stage, num_classes=10, in_channels=3)
    assert abs(actual - expected) <= 0.02 * expected, f"{name}: {actual:,} vs {expected:,}"


def test_every_variant_has_an_expected_count():
    assert set(SPECS) <= set(SMALL_IMAGE_PARAMS) | set(PAPER_PARAMS_BY_FORMULA)


def test_option_a_shortcuts_add_no_parameters():
    model = architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1))
    shortcuts = [layer for layer in model.layers if isinstance(layer, SubsampleZeroPad)]
    assert [layer.name for layer in shortcuts] == ["conv3_block1_0_shortcut", "conv4_block1_0_shortcut"]
    assert all(not layer.weights for layer in shortcuts)
    assert count_params(model) == resnet_cifar_params_by_formula(3, num_classes=10, in_channels=1)


def test_option_a_shortcut_subsamples_and_appends_zero_channels():
    x = np.arange(2 * 5 * 5 * 3, dtype="float32").reshape(2, 5, 5, 3)
    y = keras.ops.convert_to_numpy(SubsampleZeroPad(filters=8, strides=2)(x))
    assert y.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)


@pytest.mark.parametrize(("input_shape", "features_shape"), [((28, 28, 1), (7, 7, 64)), ((32, 32, 3), (8, 8, 64))])
def test_forward_pass_gives_finite_probabilities(input_shape, features_shape):
    model = architectures.build("resnet20", num_classes=10, input_shape=input_shape)
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, *features_shape)
    probabilities = keras.ops.convert_to_numpy(model(random_images(2, input_shape), training=False))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_small_input_asks_for_the_stem_it_already_has():
    default = architectures.build("resnet20", num_classes=10, input_shape=(32, 32, 3))
    small = architectures.build("resnet20", num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert [layer.name for layer in small.layers] == [layer.name for layer in default.layers]
    assert count_params(small) == count_params(default)


@pytest.mark.parametrize("options", [{"dropout": 0.2}, {"stem_stride": 2}])
def test_options_are_refused_as_the_family_has_none(options):
    with pytest.raises(architectures.UserError, match=f"resnet20 has no option '{next(iter(options))}'; it has none"):
        architectures.build("resnet20", **options)


def test_resnet20_survives_a_keras_save_and_load(tmp_path):
    model = architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1))
    images = random_images(2, (28, 28, 1))
    path = tmp_path / "resnet20.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_resnet20_takes_a_finite_gradient_step_on_fashion_mnist_sized_images():
    keras.utils.set_random_seed(0)
    model = architectures.build("resnet20", num_classes=10, input_shape=(28, 28, 1))
    images = tf.constant(random_images(4, (28, 28, 1)))
    labels = tf.constant([0, 3, 7, 9])
    stem = model.get_layer("conv1_conv").kernel
    stem_before = keras.ops.convert_to_numpy(stem).copy()
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True))
        loss = tf.reduce_mean(loss)
    gradients = tape.gradient(loss, model.trainable_variables)
    keras.optimizers.SGD(0.1).apply(gradients, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(gradient)) for gradient in gradients)
    assert not np.allclose(keras.ops.convert_to_numpy(stem), stem_before)
