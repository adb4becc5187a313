"""The airbench family (Jordan 2024): counts by hand, the identity-plus-uniform start, the head,
and a reload with identical outputs."""

import keras
import numpy as np
import pytest

import architectures
from architectures import UserError
from architectures.airbench import SPECS, IdentityPlusUniform


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def airbench_params(channels: int, widths: tuple[int, int, int], num_classes: int) -> int:
    """2x2 stem of 2*C*4 filters with biases; per group two bias-free 3x3 convs and two BN betas
    (no gamma); the classifier has no bias."""
    stem = 2 * channels * 4
    total, previous = 2 * 2 * channels * stem + stem, stem
    for width in widths:
        total += 9 * previous * width + 9 * width * width + 2 * width
        previous = width
    return total + widths[-1] * num_classes


def test_hand_counts_match_the_written_out_arithmetic():
    # airbench94 at 32x32x3: stem 2*2*3*24 + 24 = 312; groups (24->64, 64->256, 256->256):
    #   13,824 + 36,864 + 128 = 50,816; 147,456 + 589,824 + 512 = 737,792; 2 x 589,824 + 512 = 1,180,160;
    #   classifier 2,560. The reference's PyTorch count, 1,972,792, also holds the 1,152 BN weights it freezes at 1.
    assert airbench_params(3, (64, 256, 256), 10) == 312 + 50_816 + 737_792 + 1_180_160 + 2_560 == 1_971_640
    assert 1_971_640 + 2 * (64 + 256 + 256) == 1_972_792
    # airbench94_w16 at 28x28x1: stem 2*2*1*8 + 8 = 40; 1,152 + 2,304 + 32; 9,216 + 36,864 + 128;
    #   36,864 + 36,864 + 128; classifier 640.
    assert airbench_params(1, (16, 64, 64), 10) == 40 + 3_488 + 46_208 + 73_856 + 640 == 124_232


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_parameter_count_matches_hand_count(name, input_shape):
    model = architectures.build(name, num_classes=10, input_shape=input_shape)
    assert trainable_count(model) == airbench_params(input_shape[-1], SPECS[name].widths, 10)


@pytest.mark.parametrize(("side", "final"), [(32, 3), (28, 3), (9, 1), (64, 7)])
def test_stem_and_three_halvings_set_the_final_map(side, final):
    model = architectures.build("airbench94_w16", include_top=False, input_shape=(side, side, 1))
    assert model.output_shape == (None, final, final, 64)


def test_inputs_too_small_for_three_halvings_are_refused():
    with pytest.raises(UserError, match="airbench94_w16"):
        architectures.build("airbench94_w16", num_classes=10, input_shape=(8, 8, 1))


def test_each_group_convolves_pools_then_normalises_without_scale():
    model = architectures.build("airbench94_w16", num_classes=10, input_shape=(28, 28, 1))
    names = [layer.name for layer in model.layers if layer.name.startswith("group1_")]
    assert names == [
        "group1_conv1", "group1_pool", "group1_bn1", "group1_gelu1", "group1_conv2", "group1_bn2", "group1_gelu2",
    ]  # fmt: skip
    batch_norm = model.get_layer("group1_bn1")
    assert batch_norm.gamma is None and batch_norm.momentum == pytest.approx(0.6)
    assert model.get_layer("group1_conv1").bias is None


def test_head_is_global_max_then_bias_free_dense_scaled_by_a_ninth():
    model = architectures.build("airbench94_w16", num_classes=10, input_shape=(28, 28, 1))
    assert [layer.name for layer in model.layers[-4:]] == ["max_pool", "classifier", "logit_scale", "predictions"]
    assert model.get_layer("classifier").bias is None
    features = keras.Model(model.input, model.get_layer("max_pool").output)
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    logits = keras.ops.convert_to_numpy(features(images)) @ keras.ops.convert_to_numpy(
        model.get_layer("classifier").kernel
    )
    expected = np.exp(logits / 9) / np.exp(logits / 9).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected, rtol=1e-5, atol=1e-6)


def test_identity_plus_uniform_passes_the_first_channels_through_the_centre_tap():
    kernel = keras.ops.convert_to_numpy(IdentityPlusUniform(seed=3)((3, 3, 4, 6)))
    bound = 1 / np.sqrt(3 * 3 * 4)
    for filter_index in range(4):
        expected = np.zeros((3, 3, 4))
        expected[1, 1, filter_index] = 1.0
        np.testing.assert_array_equal(kernel[..., filter_index], expected)
    rest = kernel[..., 4:]
    assert np.all(np.abs(rest) <= bound) and rest.std() > bound / 4  # drawn, not zero
    # More inputs than filters: every filter is an identity on its own channel.
    narrowing = keras.ops.convert_to_numpy(IdentityPlusUniform(seed=3)((3, 3, 6, 2)))
    assert narrowing[1, 1, 0, 0] == 1.0 and narrowing[1, 1, 1, 1] == 1.0 and np.count_nonzero(narrowing) == 2


def test_second_conv_of_each_group_starts_as_an_identity():
    model = architectures.build("airbench94_w16", num_classes=10, input_shape=(28, 28, 1))
    kernel = keras.ops.convert_to_numpy(model.get_layer("group2_conv2").kernel)
    np.testing.assert_array_equal(kernel[1, 1], np.eye(64))


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    model = architectures.build("airbench94_w16", num_classes=10, input_shape=(28, 28, 1))
    images = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    path = tmp_path / "airbench.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)), keras.ops.convert_to_numpy(model(images)), rtol=1e-5, atol=1e-6
    )
