"""ViT-B/16: torchvision's parameter count, small-input token grids, token mixing, options,
input validation and a saved-model round trip."""

import keras
import numpy as np
import pytest

import architectures
from architectures import UserError
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import PARAMS


def _trainable_count(layer_or_model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in layer_or_model.trainable_weights)


@pytest.fixture(scope="module")
def small_vit():
    """vit_b_16 on 32x32x3 with 4 px patches (8x8 tokens), logits out; shared to build it once."""
    model = architectures.build(
        "vit_b_16", num_classes=10, input_shape=(32, 32, 3), small_input=True, classifier_activation=None
    )
    yield model
    keras.backend.clear_session()


@pytest.mark.slow
def test_vit_b_16_matches_torchvision_parameter_count_and_attention_weights():
    model = build_uninitialised("vit_b_16")
    expected, _, source = PARAMS["vit_b_16"]
    assert _trainable_count(model) == expected, source
    # Keras's per-head query/key/value/output kernels hold what torch's in_proj (768 -> 3 * 768)
    # and out_proj (768 -> 768) hold, biases included.
    torch_attention = (768 * 3 * 768 + 3 * 768) + (768 * 768 + 768)
    assert _trainable_count(model.get_layer("encoder_block1_attention_mha")) == torch_attention
    assert model.get_layer("pos_embedding").pos_embedding.shape == (1, 197, 768)
    keras.backend.clear_session()


def test_small_input_on_32px_gives_8x8_tokens_and_finite_scores(small_vit):
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    scores = np.asarray(small_vit(images, training=False))
    assert scores.shape == (2, 10)
    assert np.all(np.isfinite(scores))
    assert small_vit.get_layer("pos_embedding").pos_embedding.shape == (1, 1 + 8 * 8, 768)


def test_small_input_on_28px_grayscale_gives_7x7_tokens_and_finite_probabilities():
    model = architectures.build("vit_b_16", num_classes=10, input_shape=(28, 28, 1), small_input=True)
    images = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("pos_embedding").pos_embedding.shape == (1, 1 + 7 * 7, 768)
    keras.backend.clear_session()


def test_changing_one_patch_changes_the_class_token_and_other_patch_tokens(small_vit):
    """Only attention moves information between tokens, so the last patch must reach the
    class token (index 0) and the first patch token (index 1)."""
    tokens_model = keras.Model(small_vit.input, small_vit.get_layer("encoder_ln").output)
    images = np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    edited = images.copy()
    edited[:, -4:, -4:, :] += 1.0  # the bottom-right 4x4 patch only
    batch = np.concatenate([images, edited])
    before, after = np.asarray(tokens_model(batch, training=False))
    assert not np.allclose(before[0], after[0], atol=1e-5)
    assert not np.allclose(before[1], after[1], atol=1e-5)
    scores = np.asarray(small_vit(batch, training=False))
    assert not np.allclose(scores[0], scores[1], atol=1e-5)


def test_include_top_false_returns_the_patch_token_map_and_pools_it():
    model = architectures.build(
        "vit_b_16", input_shape=(32, 32, 3), small_input=True, include_top=False, pooling="avg"
    )
    assert model.get_layer("patch_tokens_grid").output.shape == (None, 8, 8, 768)
    assert model.output.shape == (None, 768)
    keras.backend.clear_session()


def test_dropout_options_reach_the_encoder_layers():
    model = architectures.build(
        "vit_b_16",
        num_classes=10,
        input_shape=(32, 32, 3),
        small_input=True,
        dropout=0.1,
        attention_dropout=0.2,
    )
    assert model.get_layer("pos_dropout").rate == 0.1
    assert model.get_layer("encoder_block12_mlp_dropout2").rate == 0.1
    assert model.get_layer("encoder_block1_attention_mha").dropout == 0.2
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "options",
    [{"dropout": 1.0}, {"dropout": "0.1"}, {"attention_dropout": -0.1}, {"attention_dropout": True}],
)
def test_invalid_dropout_rates_are_user_errors(options):
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        architectures.build("vit_b_16", input_shape=(32, 32, 3), small_input=True, **options)


@pytest.mark.parametrize(
    "input_shape, small_input",
    [((30, 30, 3), True), ((32, 30, 3), True), ((40, 40, 3), False), ((224, 200, 3), False)],
)
def test_input_sides_not_multiple_of_the_patch_size_are_user_errors(input_shape, small_input):
    with pytest.raises(UserError, match="multiples of the patch size"):
        architectures.build("vit_b_16", input_shape=input_shape, small_input=small_input)


@pytest.mark.slow
def test_saved_vit_loads_with_the_same_outputs(small_vit, tmp_path):
    path = tmp_path / "vit.keras"
    small_vit.save(path)
    loaded = keras.models.load_model(path)
    images = np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(loaded(images, training=False)),
        np.asarray(small_vit(images, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert type(loaded.get_layer("encoder_class_token")).__name__ == "ClassToken"
