"""Wide ResNets (WRN-d-k): counts against the paper, shapes, the dropout option."""

import keras
import numpy as np
import pytest

import architectures
from architectures.wide_resnet import SPECS
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import SMALL_IMAGE_PARAMS

# Outside the reference table, against the paper's rounded figures: Zagoruyko and Komodakis 2016
# (WRN-16-4 2.7M, WRN-40-4 8.9M).
PAPER_PARAMS = {"wrn_16_4": (2_700_000, 0.02), "wrn_40_4": (8_900_000, 0.01)}
EXPECTED = {**PAPER_PARAMS, **{name: row[:2] for name, row in SMALL_IMAGE_PARAMS.items() if name in SPECS}}


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def count_params(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_the_paper(name):
    expected, tolerance = EXPECTED[name]
    actual = count_params(build_uninitialised(name, num_classes=10, input_shape=(32, 32, 3)))
    assert abs(actual - expected) <= tolerance * expected, f"{name}: {actual:,} vs {expected:,}"


def test_every_variant_has_an_expected_count():
    assert set(EXPECTED) == set(SPECS)


def test_forward_pass_keeps_a_quarter_of_the_input_and_gives_finite_probabilities():
    model = architectures.build("wrn_16_4", num_classes=10, input_shape=(28, 28, 1))
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, 7, 7, 256)
    images = np.random.default_rng(0).uniform(0.0, 1.0, (2, 28, 28, 1)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_dropout_sits_between_the_two_convolutions_of_every_block():
    model = architectures.build("wrn_16_4", input_shape=(8, 8, 3), include_top=False, dropout=0.3)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 6  # one per wide block
    assert all(layer.rate == 0.3 for layer in dropouts)
    assert "conv2_block1_1_drop" in [layer.name for layer in dropouts]


def test_no_dropout_layers_by_default():
    model = architectures.build("wrn_16_4", input_shape=(8, 8, 3), include_top=False)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


@pytest.mark.parametrize("dropout", [-0.1, 1.0, "0.3", True, None])
def test_invalid_dropout_is_a_user_error(dropout):
    with pytest.raises(architectures.UserError, match=r"wrn_16_4 option dropout must be a number in \[0, 1\)"):
        architectures.build("wrn_16_4", dropout=dropout)
