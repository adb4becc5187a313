"""The baselines, one family each: the benchmark MLP 256-128-100 and All-CNN-C (Springenberg et al.
2015)."""

import keras
import numpy as np
import pytest

import architectures
from architectures import UserError


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def dense_params(inputs: int, units: int) -> int:
    return inputs * units + units


def conv_params(kernel: int, inputs: int, filters: int) -> int:
    return kernel * kernel * inputs * filters + filters


# mlp at 32x32x3, 10 classes: 3072*256+256 + 256*128+128 + 128*100+100 + 100*10+10
#   = 786,688 + 32,896 + 12,900 + 1,010 = 833,494
MLP_HIDDEN_AND_CLASSIFIER = dense_params(256, 128) + dense_params(128, 100) + dense_params(100, 10)
MLP_32X32X3 = dense_params(32 * 32 * 3, 256) + MLP_HIDDEN_AND_CLASSIFIER
# mlp at 28x28x1: 784*256+256 = 200,960, the rest as above: 247,766
MLP_28X28X1 = dense_params(28 * 28 * 1, 256) + MLP_HIDDEN_AND_CLASSIFIER


def allconv_params(channels: int, num_classes: int) -> int:
    """All-CNN-C: 3x3 96, 96, 96/2, 192, 192, 192/2, 192 valid, 1x1 192, 1x1 num_classes."""
    return (
        conv_params(3, channels, 96)  # 3*3*3*96+96 = 2,688 for RGB
        + conv_params(3, 96, 96) * 2  # 83,040 each
        + conv_params(3, 96, 192)  # 166,080
        + conv_params(3, 192, 192) * 3  # 331,968 each
        + conv_params(1, 192, 192)  # 37,056
        + conv_params(1, 192, num_classes)  # 1,930 for 10 classes
    )


def test_hand_counts_match_the_written_out_arithmetic():
    assert MLP_32X32X3 == 786_688 + 32_896 + 12_900 + 1_010 == 833_494
    assert MLP_28X28X1 == 200_960 + 32_896 + 12_900 + 1_010 == 247_766
    assert allconv_params(3, 10) == 2_688 + 2 * 83_040 + 166_080 + 3 * 331_968 + 37_056 + 1_930 == 1_369_738


@pytest.mark.parametrize(
    ("name", "input_shape", "expected"),
    [
        ("mlp", (32, 32, 3), MLP_32X32X3),
        ("mlp", (28, 28, 1), MLP_28X28X1),
        ("allconv", (32, 32, 3), allconv_params(3, 10)),
        ("allconv", (28, 28, 1), allconv_params(1, 10)),
    ],
)
def test_parameter_count_matches_hand_count(name, input_shape, expected):
    model = architectures.build(name, num_classes=10, input_shape=input_shape)
    assert trainable_count(model) == expected


def test_batch_norm_drops_biases_and_adds_gamma_beta():
    # Each conv/hidden Dense loses its bias (C) and gains BN gamma and beta (2C): +C per layer.
    allconv = architectures.build("allconv", num_classes=10, batch_norm=True)
    assert trainable_count(allconv) == allconv_params(3, 10) + (96 * 3 + 192 * 5)
    mlp = architectures.build("mlp", num_classes=10, batch_norm=True)
    assert trainable_count(mlp) == MLP_32X32X3 + (256 + 128 + 100)


@pytest.mark.parametrize("name", ["mlp", "allconv"])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("small_input", [False, True])
def test_forward_pass_gives_finite_probabilities(name, input_shape, small_input):
    model = architectures.build(name, num_classes=10, input_shape=input_shape, small_input=small_input)
    images = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(model(images))
    assert probabilities.shape == (2, 10)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "allconv"])
def test_small_input_changes_nothing_for_small_image_networks(name):
    plain = architectures.build(name, num_classes=10, input_shape=(32, 32, 3))
    small = architectures.build(name, num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert [layer.name for layer in small.layers] == [layer.name for layer in plain.layers]
    assert trainable_count(small) == trainable_count(plain)


def test_mlp_features_are_a_one_by_one_map_of_the_last_hidden_layer():
    features = architectures.build("mlp", include_top=False, input_shape=(28, 28, 1))
    assert features.output_shape == (None, 1, 1, 100)
    pooled = architectures.build("mlp", include_top=False, pooling="avg", input_shape=(28, 28, 1))
    assert pooled.output_shape == (None, 100)


def test_mlp_has_flatten_hidden_layers_and_dense_classifier():
    model = architectures.build("mlp", num_classes=10, input_shape=(28, 28, 1))
    names = [layer.name for layer in model.layers]
    assert names == ["images", "input_flatten", "fc1", "fc2", "fc3", "predictions"]
    assert [model.get_layer(f"fc{index}").units for index in (1, 2, 3)] == [256, 128, 100]


@pytest.mark.parametrize(("input_shape", "side"), [((32, 32, 3), 6), ((28, 28, 1), 5), ((9, 9, 3), 1)])
def test_allconv_downsamples_with_strided_convolutions_not_pooling(input_shape, side):
    model = architectures.build("allconv", include_top=False, input_shape=input_shape)
    assert model.output_shape == (None, side, side, 192)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert [model.get_layer(f"conv{index}_conv").strides for index in (3, 6)] == [(2, 2), (2, 2)]


def test_allconv_head_is_a_one_by_one_conv_then_global_average():
    model = architectures.build("allconv", num_classes=7)
    assert model.get_layer("classifier_conv").kernel.shape == (1, 1, 192, 7)
    assert isinstance(model.get_layer("avg_pool"), keras.layers.GlobalAveragePooling2D)
    assert model.output_shape == (None, 7)


def test_allconv_dropout_follows_the_paper_and_can_be_turned_off():
    model = architectures.build("allconv", num_classes=10)
    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}
    assert rates == {"input_dropout": 0.2, "conv3_dropout": 0.5, "conv6_dropout": 0.5}
    without = architectures.build("allconv", num_classes=10, dropout=False)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in without.layers)


def test_allconv_batch_norm_sits_between_bias_free_conv_and_relu():
    model = architectures.build("allconv", num_classes=10, batch_norm=True)
    names = [layer.name for layer in model.layers]
    assert names.index("conv1_conv") < names.index("conv1_bn") < names.index("conv1_relu")
    assert not model.get_layer("conv1_conv").use_bias


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_norm": "yes"}, "'yes'"),
        ({"dropout": 0.5}, "0.5"),
        ({"width": 2}, "width"),
    ],
)
def test_invalid_options_raise_user_error_naming_the_value(options, message):
    with pytest.raises(UserError, match=message):
        architectures.build("allconv", num_classes=10, **options)


def test_allconv_rejects_inputs_too_small_for_its_valid_convolution():
    with pytest.raises(UserError, match="input side 8 is too small for allconv: it needs at least 9x9 pixels"):
        architectures.build("allconv", num_classes=10, input_shape=(8, 8, 3))


def test_mlp_has_no_dropout_option_as_the_benchmark_mlp_has_no_dropout():
    with pytest.raises(UserError, match="mlp has no option 'dropout'; its options are: batch_norm"):
        architectures.build("mlp", num_classes=10, dropout=False)


@pytest.mark.parametrize("name", ["mlp", "allconv"])
def test_saved_model_reloads_with_identical_outputs(name, tmp_path):
    model = architectures.build(name, num_classes=10, input_shape=(28, 28, 1), batch_norm=True)
    images = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-5,
        atol=1e-6,
    )
