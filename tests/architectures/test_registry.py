"""Every registered variant, checked the same way (timm's tests/test_models.py pattern):
parameter count against the reference table, no auto-named layers, output shapes, a forward
pass, multiply-adds, the `models` table's figures; plus the registry's own behaviour."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import architectures
from architectures import registry
from architectures.flops import count_macs
from architectures.zoo_sizes import SIZES
from architectures.zoo_table import build_uninitialised
from keras.src.utils.naming import to_snake_case
from tests.architectures.reference_counts import GMACS, GMACS_TOLERANCE, PARAMS, SMALL_IMAGE_PARAMS

ALL_NAMES = architectures.names()
# The table reference_counts.py copies, where the shared folder sits beside the repository.
SHARED_REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "param_counts.md"
# Forward passes at the default size only where they are cheap on 2 CPU cores.
CHEAP_AT_DEFAULT_GMACS = 2.0
# Options adding outputs that only training uses (GoogLeNet's auxiliary classifiers): the gradient
# step turns them on, so that their layers must get a gradient too.
TRAINING_OUTPUTS = {"aux_logits": True}
# Grouped convolutions run XLA-compiled on CPUs, one layer at a time, and so do their gradients:
# the gradient step alone takes 8 s (resnext50_32x4d) and 23 s (resnext101_32x8d) on 2 cores.
SLOW_TO_TRAIN = {"resnext50_32x4d", "resnext101_32x8d"}


def trainable_parameters(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def auto_named_layers(model: keras.Model) -> list[str]:
    """Layers still carrying Keras's build-history names like `conv2d_17` or `add`."""
    return [
        layer.name
        for layer in model.layers
        if re.fullmatch(rf"{re.escape(to_snake_case(type(layer).__name__))}(_\d+)?", layer.name)
    ]


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def test_every_lecture_variant_is_registered():
    expected = set(PARAMS) | set(SMALL_IMAGE_PARAMS) | {"mlp", "allconv"}
    assert expected <= set(ALL_NAMES), sorted(expected - set(ALL_NAMES))


@pytest.mark.skipif(not SHARED_REFERENCE.is_file(), reason=f"{SHARED_REFERENCE} is not checked out")
def test_reference_counts_copy_every_row_of_the_shared_table():
    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \| (exact|±[\d.]+%) \|", SHARED_REFERENCE.read_text(), re.MULTILINE)
    assert rows
    copied = {**PARAMS, **SMALL_IMAGE_PARAMS}
    for name, count, tolerance in rows:
        relative = 0.0 if tolerance == "exact" else float(tolerance[1:-1]) / 100
        assert copied[name][:2] == (int(count.replace(",", "")), pytest.approx(relative)), name


@pytest.mark.parametrize("name", ALL_NAMES)
def test_variant_at_default_size(name):
    """Builds at its default input: reference parameters, explicit layer names, 1000 outputs,
    the `models` table's row (zoo_sizes.py); a forward pass where it is cheap."""
    variant = architectures.info(name)
    runs = name in SIZES and SIZES[name][1] / 1e9 < CHEAP_AT_DEFAULT_GMACS
    # Counting needs no weights, and initialising them is most of a large build's time.
    model = architectures.build(name) if runs else build_uninitialised(name)
    assert model.name == name
    assert model.input_shape == (None, variant.default_size, variant.default_size, 3)
    outputs = model.outputs
    assert outputs[0].shape == (None, 1000)
    assert auto_named_layers(model) == []
    if name in PARAMS:
        expected, tolerance, source = PARAMS[name]
        assert trainable_parameters(model) == pytest.approx(expected, rel=tolerance, abs=0), source
    macs = count_macs(model)
    if name in GMACS:
        assert macs / 1e9 == pytest.approx(GMACS[name], rel=GMACS_TOLERANCE)
    assert SIZES.get(name) == (trainable_parameters(model), macs), (
        "architectures/zoo_sizes.py is out of date: python -m architectures.zoo_table"
    )
    if runs:
        image = np.random.default_rng(0).uniform(-1, 1, (1, *model.input_shape[1:])).astype("float32")
        probabilities = np.asarray(model(image, training=False))
        assert probabilities.shape == (1, 1000)
        assert np.all(np.isfinite(probabilities))
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-4)


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_TRAIN else name for name in ALL_NAMES]
)
def test_variant_trains_on_small_images(name):
    """small_input adapts every family to 28-32 px: at 32x32x3 inference gives finite probabilities;
    at 28x28x1 one training-mode step on a batch of 2 gives a finite gradient for every trainable
    variable, non-zero wherever the variable can change the loss.

    The gradient is taken at one size only: it costs more than the build and the forward pass
    together (see SLOW_TO_TRAIN), and the two sizes share every layer type.
    """
    rng = np.random.default_rng(1)
    model = architectures.build(name, num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert auto_named_layers(model) == []
    outputs = model(rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32"), training=False)
    outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    assert outputs.shape == (2, 10)
    assert np.all(np.isfinite(np.asarray(outputs)))

    options = {key: value for key, value in TRAINING_OUTPUTS.items() if key in architectures.info(name).options}
    model = architectures.build(name, num_classes=10, input_shape=(28, 28, 1), small_input=True, **options)
    assert auto_named_layers(model) == []
    images = rng.uniform(-1, 1, (2, 28, 28, 1)).astype("float32")
    labels = keras.ops.one_hot(rng.integers(0, 10, 2), 10)
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        loss = sum(keras.ops.mean(keras.losses.categorical_crossentropy(labels, output)) for output in outputs)
    assert np.all(np.isfinite(np.asarray(outputs[0])))
    gradients = tape.gradient(loss, model.trainable_variables)
    rounding_only = biases_before_batch_norm(model)
    for variable, gradient in zip(model.trainable_variables, gradients):
        assert gradient is not None, f"{variable.path} is not connected to the loss"
        assert np.all(np.isfinite(np.asarray(gradient))), f"{variable.path} gets a non-finite gradient"
        if variable.path not in rounding_only:  # see biases_before_batch_norm for the exception
            assert np.any(np.asarray(gradient) != 0), f"{variable.path} gets a zero gradient"


def biases_before_batch_norm(model: keras.Model) -> set[str]:
    """Biases of layers whose output goes only into BatchNormalization (torchvision's VGG-BN keeps
    them): in training mode BatchNorm subtracts the batch mean, which removes a constant bias, so
    its gradient is zero up to rounding (1e-8..1e-5 here, against 0.1..60 for the kernels)."""
    return {
        layer.bias.path
        for layer in model.layers
        if getattr(layer, "bias", None) is not None
        and layer._outbound_nodes
        and all(isinstance(node.operation, keras.layers.BatchNormalization) for node in layer._outbound_nodes)
    }


@pytest.mark.parametrize("name", sorted(SMALL_IMAGE_PARAMS))
def test_small_image_variant_parameters(name):
    expected, tolerance, source = SMALL_IMAGE_PARAMS[name]
    model = build_uninitialised(name, num_classes=10, input_shape=(32, 32, 3))
    assert trainable_parameters(model) == pytest.approx(expected, rel=tolerance), source


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v2"])
def test_headless_model_pools_features(name):
    pooled = build_uninitialised(name, include_top=False, pooling="avg", input_shape=(64, 64, 3))
    unpooled = build_uninitialised(name, include_top=False, input_shape=(64, 64, 3))
    assert len(pooled.output_shape) == 2
    assert len(unpooled.output_shape) == 4
    assert pooled.output_shape[-1] == unpooled.output_shape[-1]


def test_names_filter_by_wildcard_in_natural_order():
    assert architectures.names("resnet1*") == ["resnet18", "resnet101", "resnet110", "resnet152"]
    assert architectures.names("resnext*") == ["resnext50_32x4d", "resnext101_32x8d"]
    assert architectures.names("no_such_*") == []


def test_info_gives_family_default_size_and_declared_options():
    variant = architectures.info("resnet50")
    assert (variant.family, variant.default_size, variant.small_input_min_size) == ("resnet", 224, 8)
    assert list(variant.options) == ["output_stride", "layout", "attention"]
    assert variant.options["output_stride"].default == 32


def test_families_built_for_small_images_have_no_small_input_stem():
    for name in ["resnet20", "wrn_16_4", "densenet_bc_100_12", "mlp", "allconv"]:
        assert architectures.info(name).small_input_min_size is None, name


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(architectures.UserError, match=r"unknown architecture 'resnet5'.*resnet50"):
        architectures.build("resnet5")


def test_user_error_is_a_value_error():
    assert issubclass(architectures.UserError, ValueError)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"num_classes": 2.5}, "num_classes must be a positive integer"),
        ({"pooling": "mean"}, "pooling must be one of"),
        (
            {"input_shape": (16, 40, 3)},
            r"^input side 16 is too small for resnet18: it needs at least 32x32 pixels, or 8x8 with small_input=True$",
        ),
        ({"input_shape": (4, 4, 3), "small_input": True}, r"it needs at least 8x8 pixels$"),
        ({"small_input": "yes"}, r"^small_input must be True or False, got 'yes'$"),
        ({"input_shape": (64, 64)}, r"input_shape must be \(height, width, channels\)"),
        ({"input_shape": "big"}, r"input_shape must be \(height, width, channels\)"),
        (
            {"no_such_option": 1},
            r"^resnet18 has no option 'no_such_option'; its options are: attention, layout, output_stride$",
        ),
        ({"small_input": True, "output_stride": 4}, r"^resnet18 option output_stride must be one of 8, 16, 32, got 4$"),
        ({"output_stride": 16.0}, "output_stride must be one of 8, 16, 32, got 16.0"),
        ({"attention": "transformer"}, r"attention must be None or one of 'se', 'cbam', got 'transformer'$"),
        ({"weights": "missing.h5"}, "weights file not found: missing.h5"),
        ({"weights": "weights.npz"}, "weights must be None, 'imagenet' or a .h5, .weights.h5 or .keras file"),
        ({"weights": "imagenet"}, "keras.applications publishes no ImageNet weights for resnet18"),
    ],
)
def test_impossible_arguments_raise_user_error(arguments, message):
    with pytest.raises(architectures.UserError, match=message):
        architectures.build("resnet18", **arguments)


def test_check_fills_declared_defaults_and_checks_the_input_side():
    assert registry.check("resnet18", {"layout": "v1"}) == {"output_stride": 32, "layout": "v1", "attention": None}
    assert registry.check("resnet20", {}, image_side=8) == {}
    message = "^input side 7 is too small for resnet20: it needs at least 8x8 pixels$"  # no other stem to suggest
    with pytest.raises(architectures.UserError, match=message):
        registry.check("resnet20", {}, image_side=7, small_input=True)


@pytest.mark.parametrize(
    "declaration, allowed, refused, words",
    [
        ((float, 0.0, {"at_least": 0.0, "below": 1.0}), [0, 0.5], [1.0, -0.1, True, "0.1", float("nan"), None], "a number in [0, 1)"),
        ((float, 1e-6, {"above": 0.0}), [1e-9, 3], [0.0, float("inf")], "a number > 0"),
        ((float, 1.0, {"at_least": 0.25}), [0.25], [0.2], "a number >= 0.25"),
        ((float, None, {"at_least": 0.0, "below": 1.0}), [None, 0.1], [2.0], "None or a number in [0, 1)"),
        ((bool, False, {}), [True, False], [1, "yes", None], "True or False"),
        ((int, 32, {"choices": (8, 32)}), [8, 32], [16, 8.0, True], "one of 8, 32"),
    ],
)  # fmt: skip
def test_option_declarations_say_and_check_what_they_allow(declaration, allowed, refused, words):
    option_type, default, limits = declaration
    option = registry.Option("option", option_type, default, "test", **limits)
    assert option.describe() == words
    assert all(option.allows(value) for value in allowed)
    assert not any(option.allows(value) for value in refused)


def test_duplicate_variant_names_fail_at_registration():
    with pytest.raises(RuntimeError, match="names taken by another family"):

        @registry.register_family("copycat", {"resnet50": None}, default_size=224, reference="test")
        def copycat_features(spec, images):
            return images

    assert "copycat" not in registry.families()


def test_features_function_must_take_exactly_the_declared_options():
    with pytest.raises(RuntimeError, match=r"takes keyword options \['depth'\], but \['width'\] are declared"):

        @registry.register_family(
            "mismatch", {"mismatch_variant": None}, default_size=32, reference="test",
            options=(registry.Option("width", int, 1, "test"),),
        )  # fmt: skip
        def mismatch_features(spec, images, *, depth):
            return images

    with pytest.raises(RuntimeError, match=r"\['small_input'\] are declared"):

        @registry.register_family(
            "no_small_stem", {"no_small_stem_variant": None}, default_size=224, reference="test", small_input_min_size=8
        )
        def no_small_stem_features(spec, images):
            return images

    with pytest.raises(RuntimeError, match="belong in the Option declarations"):

        @registry.register_family(
            "defaulted", {"defaulted_variant": None}, default_size=32, reference="test",
            options=(registry.Option("width", int, 1, "test"),),
        )  # fmt: skip
        def defaulted_features(spec, images, *, width=2):
            return images

    assert not {"mismatch", "no_small_stem", "defaulted"} & set(registry.families())
