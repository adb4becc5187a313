"""ResNet family: layouts, dilation, attention, and keras.applications' layer names."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import architectures
from architectures.zoo_table import build_uninitialised
from tests.architectures.keras_reference import build_keras_uninitialised, randomise_weights


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def weighted_layer_shapes(model: keras.Model) -> dict[str, list[tuple]]:
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


@pytest.mark.parametrize(
    "ours, theirs",
    [("resnet50", keras.applications.ResNet50), ("resnet101", keras.applications.ResNet101)],
)
def test_v1_layout_has_keras_applications_names_and_shapes(ours, theirs):
    """Every weighted keras.applications layer exists in ours; conv biases are the only extra weights."""
    reference = weighted_layer_shapes(build_keras_uninitialised(theirs, weights=None, input_shape=(64, 64, 3)))
    model = weighted_layer_shapes(build_uninitialised(ours, layout="v1", input_shape=(64, 64, 3)))
    assert set(reference) == set(model)
    for name, shapes in reference.items():
        expected = shapes[:1] if name.endswith("_conv") else shapes  # keras convs carry a bias
        assert model[name] == expected, name


def stride_of(model: keras.Model, layer_name: str) -> int:
    return model.get_layer(layer_name).strides[0]


def test_layout_moves_the_stride_between_1x1_and_3x3():
    torchvision_style = build_uninitialised("resnet50", input_shape=(64, 64, 3))
    keras_style = build_uninitialised("resnet50", layout="v1", input_shape=(64, 64, 3))
    assert (stride_of(torchvision_style, "conv3_block1_1_conv"), stride_of(torchvision_style, "conv3_block1_2_conv")) == (1, 2)
    assert (stride_of(keras_style, "conv3_block1_1_conv"), stride_of(keras_style, "conv3_block1_2_conv")) == (2, 1)
    assert torchvision_style.count_params() == keras_style.count_params()


@pytest.mark.parametrize("output_stride, dilations", [(32, (1, 1)), (16, (1, 2)), (8, (2, 4))])
def test_output_stride_replaces_strides_with_dilation(output_stride, dilations):
    model = build_uninitialised("resnet50", include_top=False, input_shape=(128, 128, 3), output_stride=output_stride)
    assert model.output_shape == (None, 128 // output_stride, 128 // output_stride, 2048)
    # As torchvision: a dilated stage's first block keeps the previous dilation, the rest use the new one.
    assert model.get_layer("conv4_block2_2_conv").dilation_rate[0] == dilations[0]
    assert model.get_layer("conv5_block2_2_conv").dilation_rate[0] == dilations[1]
    assert build_uninitialised("resnet50").count_params() == build_uninitialised(
        "resnet50", output_stride=output_stride
    ).count_params()


def test_dilated_basic_blocks_keep_resolution():
    model = architectures.build("resnet18", include_top=False, input_shape=(64, 64, 3), output_stride=8)
    assert model.output_shape == (None, 8, 8, 512)


@pytest.mark.parametrize("kind, layer_name", [("se", "conv2_block1_se_reduce"), ("cbam", "conv2_block1_cbam_spatial_conv")])
def test_attention_option_adds_blocks_to_any_resnet(kind, layer_name):
    model = architectures.build("resnet18", attention=kind, num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert model.get_layer(layer_name) is not None
    plain = architectures.build("resnet18", num_classes=10, input_shape=(32, 32, 3), small_input=True)
    assert model.count_params() > plain.count_params()


def test_se_gate_scales_channels_between_zero_and_one():
    model = architectures.build("se_resnet50", include_top=False, input_shape=(64, 64, 3))
    gate = keras.Model(model.input, model.get_layer("conv2_block1_se_expand").output)
    values = np.asarray(gate(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")))
    assert values.shape == (2, 1, 1, 256)
    assert np.all((values > 0) & (values < 1))


def test_cbam_spatial_gate_sits_in_every_bottleneck_and_changes_the_output():
    """The reference count's 16 x 100: each bottleneck has a bias-free 7x7 2->1 conv and a
    BatchNorm (2 trainable), and each of the 16 gates reaches the logits."""
    model = architectures.build("cbam_resnet50", input_shape=(64, 64, 3), classifier_activation=None)
    stage_depths = (3, 4, 6, 3)
    blocks = [f"conv{stage + 2}_block{block + 1}" for stage, depth in enumerate(stage_depths) for block in range(depth)]
    spatial_convs = [layer for layer in model.layers if layer.name.endswith("_cbam_spatial_conv")]
    assert [conv.name for conv in spatial_convs] == [f"{block}_cbam_spatial_conv" for block in blocks]
    for block, conv in zip(blocks, spatial_convs):
        batch_norm = model.get_layer(f"{block}_cbam_spatial_bn")
        assert tuple(conv.kernel.shape) == (7, 7, 2, 1) and not conv.use_bias
        gate_weights = conv.trainable_weights + batch_norm.trainable_weights
        assert sum(int(np.prod(weight.shape)) for weight in gate_weights) == 100

    randomise_weights(model, seed=3)  # at initialisation a residual branch barely moves the logits
    images = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    forward = tf.function(lambda images: model(images, training=False))  # traced once: 5x faster than eager
    logits = np.asarray(forward(images))
    for conv in spatial_convs:
        kernel = conv.kernel.numpy()
        conv.kernel.assign(np.zeros_like(kernel))  # the gate becomes a constant sigmoid(0) = 0.5
        changed = np.asarray(forward(images))
        conv.kernel.assign(kernel)
        assert np.abs(changed - logits).max() > 1e-3 * np.abs(logits).max(), conv.name


def test_small_input_stem_keeps_28px_resolution_until_conv3():
    model = architectures.build("resnet18", include_top=False, input_shape=(28, 28, 1), small_input=True)
    assert model.get_layer("conv2_block1_out").output.shape == (None, 28, 28, 64)
    assert model.output_shape == (None, 4, 4, 512)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"output_stride": 4}, "output_stride must be one of"),
        ({"layout": "v2"}, "layout must be one of"),
        ({"attention": "transformer"}, "attention must be None or one of"),
        ({"small_input": True, "output_stride": 16}, "output_stride applies to the ImageNet stem"),
    ],
)
def test_bad_options_raise_user_error(options, message):
    with pytest.raises(architectures.UserError, match=message):
        architectures.build("resnet50", input_shape=(64, 64, 3), **options)


def test_saved_resnet_reloads_with_same_outputs(tmp_path):
    model = architectures.build("se_resnet50", num_classes=5, input_shape=(32, 32, 3), small_input=True)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(reloaded(images)), atol=1e-6)
