"""GoogLeNet as torchvision builds it: counts, spatial sizes, small inputs, auxiliary heads."""

import keras
import numpy as np
import pytest

import architectures
from architectures.errors import UserError
from architectures.googlenet import _max_pool_ceil
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import PARAMS

# torchvision 0.29.1 googlenet(aux_logits=True, init_weights=False); shared/reference/param_counts.md
AUX_LOGITS_PARAMS = 13_004_888


def _trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _random_images(shape: tuple[int, int, int], batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, size=(batch, *shape)).astype("float32")


@pytest.fixture(scope="module")
def googlenet_224() -> keras.Model:
    keras.backend.clear_session()
    return build_uninitialised("googlenet")


def test_googlenet_parameter_count_matches_torchvision(googlenet_224):
    assert _trainable_params(googlenet_224) == PARAMS["googlenet"][0]


def test_googlenet_with_aux_logits_parameter_count_matches_torchvision():
    keras.backend.clear_session()
    model = build_uninitialised("googlenet", aux_logits=True)
    assert _trainable_params(model) == AUX_LOGITS_PARAMS
    keras.backend.clear_session()


def test_googlenet_halves_224_like_torchvision_ceil_mode_pools(googlenet_224):
    expected = {
        "conv1_relu": (112, 112, 64),
        "pool1_pool": (56, 56, 64),
        "conv3_relu": (56, 56, 192),
        "pool2_pool": (28, 28, 192),
        "inception3b_concat": (28, 28, 480),
        "pool3_pool": (14, 14, 480),
        "inception4e_concat": (14, 14, 832),
        "pool4_pool": (7, 7, 832),
        "inception5b_concat": (7, 7, 1024),
    }
    shapes = {name: tuple(googlenet_224.get_layer(name).output.shape[1:]) for name in expected}
    assert shapes == expected


def test_googlenet_keeps_torchvision_3x3_kernel_in_5x5_branch_and_bn_eps(googlenet_224):
    assert tuple(googlenet_224.get_layer("inception3a_5x5_conv").kernel.shape) == (3, 3, 16, 32)
    assert googlenet_224.get_layer("inception3a_5x5_bn").epsilon == pytest.approx(1e-3)
    assert tuple(googlenet_224.get_layer("conv1_conv").kernel.shape) == (7, 7, 3, 64)
    assert googlenet_224.get_layer("conv1_conv").use_bias is False
    assert googlenet_224.get_layer("top_dropout").rate == pytest.approx(0.2)


def _ceil_mode_max_pool_reference(image: np.ndarray, pool_size: int) -> np.ndarray:
    """torch.nn.MaxPool2d(pool_size, stride=2, ceil_mode=True) on one (H, W, C) image."""
    height, width = image.shape[:2]
    out_height = -(-(height - pool_size) // 2) + 1
    out_width = -(-(width - pool_size) // 2) + 1
    pooled = np.empty((out_height, out_width, image.shape[2]), dtype=image.dtype)
    for row in range(out_height):
        for col in range(out_width):
            window = image[2 * row : 2 * row + pool_size, 2 * col : 2 * col + pool_size]
            pooled[row, col] = window.max(axis=(0, 1))
    return pooled


@pytest.mark.parametrize("pool_size", [3, 2])
@pytest.mark.parametrize("spatial", [(8, 8), (7, 7), (7, 8)])
def test_ceil_mode_max_pool_matches_torch_windows(pool_size, spatial):
    # Non-negative inputs, as in the network, where every pool follows a ReLU.
    images = _random_images((*spatial, 3), batch=1)
    inputs = keras.Input(shape=images.shape[1:])
    model = keras.Model(inputs, _max_pool_ceil(inputs, pool_size, name="pool"))
    pooled = model.predict(images, verbose=0)[0]
    np.testing.assert_array_equal(pooled, _ceil_mode_max_pool_reference(images[0], pool_size))


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_googlenet_small_input_runs_on_tiny_images_and_ends_at_4x4(shape):
    keras.backend.clear_session()
    model = architectures.build("googlenet", num_classes=10, input_shape=shape, small_input=True)
    assert tuple(model.get_layer("inception5b_concat").output.shape[1:]) == (4, 4, 1024)
    predictions = model(_random_images(shape), training=False)
    assert predictions.shape == (2, 10)
    assert np.all(np.isfinite(predictions))
    np.testing.assert_allclose(np.sum(predictions, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("shape", "small_input"), [((32, 32, 3), True), ((64, 64, 3), False)])
def test_googlenet_aux_logits_gives_main_and_two_aux_outputs(shape, small_input):
    keras.backend.clear_session()
    model = architectures.build(
        "googlenet", num_classes=10, input_shape=shape, small_input=small_input, aux_logits=True
    )
    assert model.output_names == ["predictions", "aux1_predictions", "aux2_predictions"]
    assert tuple(model.get_layer("aux1_pool").output.shape[1:]) == (4, 4, 512)
    assert tuple(model.get_layer("aux2_pool").output.shape[1:]) == (4, 4, 528)
    outputs = model(_random_images(shape), training=False)
    assert [tuple(output.shape) for output in outputs] == [(2, 10)] * 3
    assert all(np.all(np.isfinite(output)) for output in outputs)


def test_googlenet_aux_heads_belong_to_the_top():
    keras.backend.clear_session()
    model = architectures.build(
        "googlenet", input_shape=(32, 32, 3), small_input=True, aux_logits=True, include_top=False, pooling="avg"
    )
    assert len(model.outputs) == 1
    assert tuple(model.output.shape) == (None, 1024)
    assert not any(layer.name.startswith("aux") for layer in model.layers)


@pytest.mark.parametrize(
    "options",
    [{"aux_logits": "yes"}, {"aux_logits": 1}, {"small_input": None}, {"transform_input": True}],
)
def test_googlenet_rejects_bad_options(options):
    with pytest.raises(UserError, match=next(iter(options))):
        architectures.build("googlenet", input_shape=(32, 32, 3), **options)


def test_googlenet_rejects_tiny_input_without_small_input():
    with pytest.raises(UserError, match="small_input=True"):
        architectures.build("googlenet", input_shape=(28, 28, 1))


def test_googlenet_with_aux_heads_survives_keras_round_trip(tmp_path):
    keras.backend.clear_session()
    model = architectures.build(
        "googlenet", num_classes=10, input_shape=(32, 32, 3), small_input=True, aux_logits=True
    )
    images = _random_images((32, 32, 3))
    expected = model(images, training=False)
    model.save(tmp_path / "googlenet.keras")
    restored = keras.models.load_model(tmp_path / "googlenet.keras")
    for before, after in zip(expected, restored(images, training=False), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
