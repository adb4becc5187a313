"""ResMLP-S12: timm's parameter count, small-input token grids, cross-patch mixing, layer
scale, input validation and a saved-model round trip."""

import keras
import numpy as np
import pytest

import architectures
from architectures import UserError
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import PARAMS

# timm resmlp_12_224 by arithmetic: stem 16*16*3*384 + 384; per block two Affines and two
# layer scales (4 * 384 + 2 * 384), cross-patch 196*196 + 196, channel MLP
# 384*1536 + 1536 + 1536*384 + 384; final Affine 2 * 384; head 384*1000 + 1000.
TIMM_RESMLP_12_224 = 295_296 + 12 * 1_222_484 + 768 + 385_000


def _trainable_count(model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.fixture(scope="module")
def small_resmlp():
    """resmlp_s12 on 32x32x3 with 4 px patches (8x8 tokens); shared to build it once."""
    model = architectures.build("resmlp_s12", num_classes=10, input_shape=(32, 32, 3), small_input=True)
    yield model
    keras.backend.clear_session()


def test_resmlp_s12_matches_timm_parameter_count():
    model = build_uninitialised("resmlp_s12")
    expected, tolerance, source = PARAMS["resmlp_s12"]
    count = _trainable_count(model)
    assert abs(count - expected) <= tolerance * expected, source
    assert count == TIMM_RESMLP_12_224 == 15_350_872
    assert model.get_layer("mixer_block1_tokens_fc").kernel.shape == (196, 196)
    keras.backend.clear_session()


def test_small_input_on_32px_gives_8x8_tokens_and_finite_probabilities(small_resmlp):
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = np.asarray(small_resmlp(images, training=False))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    assert small_resmlp.get_layer("tokens_grid").output.shape == (None, 8, 8, 384)
    assert small_resmlp.get_layer("mixer_block1_tokens_fc").kernel.shape == (64, 64)


def test_small_input_on_28px_grayscale_gives_7x7_tokens_and_finite_probabilities():
    model = architectures.build("resmlp_s12", num_classes=10, input_shape=(28, 28, 1), small_input=True)
    images = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    assert model.get_layer("mixer_block1_tokens_fc").kernel.shape == (49, 49)
    keras.backend.clear_session()


def test_cross_patch_layer_carries_one_patch_to_the_others(small_resmlp):
    tokens_model = keras.Model(small_resmlp.input, small_resmlp.get_layer("tokens_grid").output)
    images = np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    edited = images.copy()
    edited[:, -4:, -4:, :] += 1.0  # the bottom-right 4x4 patch only
    batch = np.concatenate([images, edited])
    before, after = np.asarray(tokens_model(batch, training=False))
    assert not np.allclose(before[0, 0], after[0, 0], atol=1e-6)  # top-left token


def test_layer_scales_start_at_the_papers_0_1_and_affines_at_identity(small_resmlp):
    np.testing.assert_allclose(small_resmlp.get_layer("mixer_block1_tokens_scale").gamma.numpy(), 0.1)
    np.testing.assert_allclose(small_resmlp.get_layer("mixer_block12_channels_scale").gamma.numpy(), 0.1)
    affine = small_resmlp.get_layer("final_affine")
    np.testing.assert_array_equal(affine.alpha.numpy(), np.ones(384))
    np.testing.assert_array_equal(affine.beta.numpy(), np.zeros(384))


@pytest.mark.parametrize(
    "input_shape, small_input",
    [((30, 30, 3), True), ((32, 30, 3), True), ((40, 40, 3), False), ((224, 200, 3), False)],
)
def test_input_sides_not_multiple_of_the_patch_size_are_user_errors(input_shape, small_input):
    with pytest.raises(UserError, match="multiples of the patch size"):
        architectures.build("resmlp_s12", input_shape=input_shape, small_input=small_input)


def test_saved_resmlp_loads_with_the_same_outputs(small_resmlp, tmp_path):
    path = tmp_path / "resmlp.keras"
    small_resmlp.save(path)
    loaded = keras.models.load_model(path)
    images = np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(loaded(images, training=False)),
        np.asarray(small_resmlp(images, training=False)),
        rtol=1e-5,
        atol=1e-7,
    )
    assert type(loaded.get_layer("final_affine")).__name__ == "Affine"
