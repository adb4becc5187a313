"""ConvNeXt: torchvision's parameter counts, keras.applications' names, weights and outputs,
stochastic depth, layer scale, the small-input stem and the `.keras` round trip."""

import keras
import numpy as np
import pytest

import architectures
from architectures.convnext import SPECS
from architectures.zoo_table import build_uninitialised
from tests.architectures.reference_counts import PARAMS

# Weight shapes do not depend on the input size, so keras.applications comparisons run at 64 px.
COMPARISON_SHAPE = (64, 64, 3)


def _trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _flat_weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer with weights, in model order, with keras.applications' nested Sequential
    stem and downsampling blocks expanded in place (our graph is flat)."""
    flat = []
    for layer in model.layers:
        inner_layers = layer.layers if isinstance(layer, keras.Sequential) else [layer]
        flat.extend(inner for inner in inner_layers if inner.weights)
    return flat


def _layer_shapes(model: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [
        (layer.name, [tuple(weight.shape) for weight in layer.weights])
        for layer in _flat_weighted_layers(model)
    ]


def _as_depthwise_kernel(grouped_kernel: np.ndarray) -> np.ndarray:
    """keras.applications' grouped-conv kernel (7, 7, 1, C) as a DepthwiseConv2D kernel (7, 7, C, 1)."""
    return np.swapaxes(grouped_kernel, 2, 3)


def _randomise(model: keras.Model, seed: int) -> None:
    """Random LayerNorm scales and shifts, biases and layer-scale gammas (non-tiny, so every
    block's branch counts); convolution and dense kernels keep their random initialisation."""
    rng = np.random.default_rng(seed)
    for layer in _flat_weighted_layers(model):
        if isinstance(layer, keras.layers.LayerNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0.0, 0.1, channels)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape)])
        else:
            assert layer.name.endswith("_layer_scale"), layer.name
            layer.set_weights([rng.uniform(0.5, 1.0, layer.weights[0].shape)])


def _copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy every weighted layer of `source` (nested ones included) into `target`'s layer of the
    same name, grouped depthwise kernels swapped into our DepthwiseConv2D layout."""
    copied = 0
    for layer in _flat_weighted_layers(source):
        target_layer = target.get_layer(layer.name)
        weights = layer.get_weights()
        if isinstance(target_layer, keras.layers.DepthwiseConv2D):
            weights[0] = _as_depthwise_kernel(weights[0])
        target_layer.set_weights(weights)
        copied += 1
    return copied


def _images(shape: tuple[int, int, int], batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


@pytest.fixture
def fresh_session():
    """Frees the models a test built (clear_session costs ~0.5 s, so cheap tests skip it)."""
    yield
    keras.backend.clear_session()


# Every test that builds a whole model.
builds_models = pytest.mark.usefixtures("fresh_session")


@builds_models
@pytest.mark.parametrize(
    "name",
    [
        "convnext_tiny",
        "convnext_small",
        "convnext_base",
        pytest.param("convnext_large", marks=pytest.mark.slow),
    ],
)
def test_convnext_parameter_count_matches_torchvision(name):
    expected, _tolerance, _source = PARAMS[name]
    assert _trainable_count(build_uninitialised(name)) == expected


def test_convnext_layer_prefix_is_the_variant_name():
    # keras.applications prefixes every layer with the model name, and its weight files key on it.
    assert {name: spec.prefix for name, spec in SPECS.items()} == {name: name for name in SPECS}


@builds_models
def test_convnext_tiny_weighted_layers_match_keras_applications_flattened():
    reference = keras.applications.ConvNeXtTiny(
        weights=None, include_preprocessing=False, input_shape=COMPARISON_SHAPE
    )
    ours = architectures.build("convnext_tiny", input_shape=COMPARISON_SHAPE)
    # Ours is a DepthwiseConv2D where keras.applications has a grouped Conv2D: the kernel's
    # last two axes are swapped, (7, 7, C, 1) for (7, 7, 1, C), every other shape is equal.
    reference_shapes = [
        (name, [(7, 7, shapes[0][3], 1), *shapes[1:]] if name.endswith("_depthwise_conv") else shapes)
        for name, shapes in _layer_shapes(reference)
    ]
    assert _layer_shapes(ours) == reference_shapes
    assert [layer.name for layer in reference.layers if isinstance(layer, keras.Sequential)] == [
        "convnext_tiny_stem",
        *(f"convnext_tiny_downsampling_block_{index}" for index in range(3)),
    ]


@builds_models
def test_convnext_depthwise_convolutions_are_depthwise_conv2d_layers():
    # Not a grouped Conv2D (keras.applications' layer): TensorFlow's CPU grouped convolution is
    # many times slower than its depthwise kernel.
    model = architectures.build("convnext_tiny", num_classes=10, input_shape=(8, 8, 3), small_input=True)
    depthwise = [layer for layer in model.layers if layer.name.endswith("_depthwise_conv")]
    assert len(depthwise) == sum(SPECS["convnext_tiny"].stage_depths)
    for layer in depthwise:
        channels = layer.input.shape[-1]
        assert isinstance(layer, keras.layers.DepthwiseConv2D), layer.name
        assert (tuple(layer.kernel.shape), tuple(layer.bias.shape)) == ((7, 7, channels, 1), (channels,))
    assert not [layer.name for layer in model.layers if getattr(layer, "groups", 1) > 1]


@builds_models
def test_convnext_tiny_with_keras_applications_weights_gives_the_same_logits():
    reference = keras.applications.ConvNeXtTiny(
        weights=None, include_preprocessing=False, input_shape=COMPARISON_SHAPE, classifier_activation=None
    )
    _randomise(reference, seed=1)
    ours = architectures.build("convnext_tiny", input_shape=COMPARISON_SHAPE, classifier_activation=None)
    assert _copy_weights_by_name(reference, ours) == len(_flat_weighted_layers(ours))

    images = _images(COMPARISON_SHAPE)
    expected = np.asarray(reference(images, training=False))
    actual = np.asarray(ours(images, training=False))
    assert expected.std() > 0.1  # the logits carry signal, not just biases
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@builds_models
@pytest.mark.parametrize(
    ("input_shape", "small_input", "final_side"),
    [
        ((32, 32, 3), False, 1),  # stride 32 overall
        ((28, 28, 1), True, 3),  # Fashion-MNIST: stride 8, 28 -> 14 -> 7 -> 3
    ],
)
def test_convnext_tiny_forward_pass_is_finite_with_the_expected_final_map(
    input_shape, small_input, final_side
):
    model = architectures.build(
        "convnext_tiny", num_classes=10, input_shape=input_shape, small_input=small_input
    )
    last_block = model.get_layer("convnext_tiny_stage_3_block_2_stochastic_depth")
    assert tuple(last_block.output.shape) == (None, final_side, final_side, 768)
    probabilities = np.asarray(model(_images(input_shape), training=False))
    assert probabilities.shape == (2, 10)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@builds_models
def test_convnext_small_input_keeps_a_4x4_map_of_a_32px_image():
    model = architectures.build("convnext_tiny", input_shape=(32, 32, 3), small_input=True, include_top=False)
    assert model.output_shape == (None, 4, 4, 768)


@pytest.mark.parametrize(("input_shape", "small_input"), [((28, 28, 3), False), ((4, 4, 3), True)])
def test_convnext_input_below_the_minimum_raises_user_error(input_shape, small_input):
    with pytest.raises(architectures.UserError, match="at least"):
        architectures.build("convnext_tiny", input_shape=input_shape, small_input=small_input)


@pytest.mark.parametrize("rate", [-0.1, 1.0, "0.1", True, None])
def test_convnext_invalid_drop_path_rate_raises_user_error(rate):
    with pytest.raises(architectures.UserError, match="drop_path_rate"):
        architectures.build("convnext_tiny", drop_path_rate=rate)


@pytest.mark.parametrize("value", [0.0, -1e-6, float("nan"), float("inf"), "1e-6", True, None])
def test_convnext_invalid_layer_scale_init_value_raises_user_error(value):
    with pytest.raises(architectures.UserError, match="layer_scale_init_value"):
        architectures.build("convnext_tiny", layer_scale_init_value=value)


def test_convnext_unknown_option_raises_user_error_listing_the_options():
    with pytest.raises(architectures.UserError, match="its options are: drop_path_rate, layer_scale_init_value$"):
        architectures.build("convnext_tiny", stochastic_depth=0.1)


@builds_models
def test_convnext_options_set_drop_rates_linearly_and_layer_scale_gammas():
    model = architectures.build(
        "convnext_tiny",
        num_classes=10,
        input_shape=(8, 8, 3),
        small_input=True,
        drop_path_rate=0.3,
        layer_scale_init_value=0.25,
    )
    block_count = sum(SPECS["convnext_tiny"].stage_depths)
    rates = [layer.rate for layer in model.layers if layer.name.endswith("_stochastic_depth")]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.3, block_count))
    gammas = [layer.get_weights()[0] for layer in model.layers if layer.name.endswith("_layer_scale")]
    assert len(gammas) == block_count
    np.testing.assert_array_equal(np.concatenate(gammas), 0.25)


@builds_models
def test_convnext_stochastic_depth_is_identity_at_inference_and_drops_branches_while_training():
    keras.utils.set_random_seed(0)
    options = dict(num_classes=10, input_shape=(16, 16, 3), small_input=True, classifier_activation=None)
    # A layer scale of 1 makes every residual branch matter, so a dropped one shows.
    dropping = architectures.build("convnext_tiny", drop_path_rate=0.5, layer_scale_init_value=1.0, **options)
    plain = architectures.build("convnext_tiny", drop_path_rate=0.0, **options)
    plain.set_weights(dropping.get_weights())
    images = _images((16, 16, 3), batch=4)

    inference = np.asarray(plain(images, training=False))
    np.testing.assert_allclose(np.asarray(dropping(images, training=False)), inference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(plain(images, training=True)), inference, atol=1e-6, rtol=0)
    assert np.abs(np.asarray(dropping(images, training=True)) - inference).max() > 1e-2

    # The last block drops its whole branch per sample at rate 0.5 and rescales the kept ones by 2.
    last_block = dropping.get_layer("convnext_tiny_stage_3_block_2_stochastic_depth")
    shortcut, residual = np.zeros((256, 1, 1, 4), "float32"), np.ones((256, 1, 1, 4), "float32")
    per_sample = np.asarray(last_block([shortcut, residual], training=True))[:, 0, 0, 0]
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert 0.3 < np.mean(per_sample == 0.0) < 0.7


@builds_models
def test_convnext_keras_file_round_trip_keeps_outputs_and_drop_rates(tmp_path):
    model = architectures.build(
        "convnext_tiny", num_classes=10, input_shape=(32, 32, 3), small_input=True, drop_path_rate=0.2
    )
    path = tmp_path / "convnext_tiny.keras"
    model.save(path)
    restored = keras.models.load_model(path)

    images = _images((32, 32, 3))
    np.testing.assert_allclose(
        np.asarray(restored(images, training=False)), np.asarray(model(images, training=False)), atol=1e-6
    )
    assert restored.get_layer("convnext_tiny_stage_3_block_2_stochastic_depth").rate == pytest.approx(0.2)
    assert restored.get_layer("convnext_tiny_stage_0_block_0_layer_scale").init_value == pytest.approx(1e-6)
