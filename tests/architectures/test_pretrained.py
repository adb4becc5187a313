"""`weights="imagenet"`: keras.applications' own file names, URLs and hashes, the file found in
a temporary `KERAS_HOME`, the offline error, and the preprocessing each family's weights expect."""

import logging

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

import architectures
from architectures import pretrained
from tests.architectures.keras_reference import build_keras_uninitialised, randomise_weights
from tests.architectures.test_weights import raw_pixels, write_legacy_h5

# Every variant keras.applications publishes, with the arguments that pick its file.
KERAS_FILES = [
    ("resnet50", keras.applications.ResNet50, {}), ("resnet101", keras.applications.ResNet101, {}),
    ("resnet152", keras.applications.ResNet152, {}), ("vgg16", keras.applications.VGG16, {}),
    ("vgg19", keras.applications.VGG19, {}), ("densenet121", keras.applications.DenseNet121, {}),
    ("densenet169", keras.applications.DenseNet169, {}), ("densenet201", keras.applications.DenseNet201, {}),
    ("xception", keras.applications.Xception, {}), ("mobilenet_v1", keras.applications.MobileNet, {"alpha": 0.25}),
    ("mobilenet_v2", keras.applications.MobileNetV2, {"alpha": 0.35}),
    ("convnext_tiny", keras.applications.ConvNeXtTiny, {}), ("convnext_small", keras.applications.ConvNeXtSmall, {}),
    ("convnext_base", keras.applications.ConvNeXtBase, {}), ("convnext_large", keras.applications.ConvNeXtLarge, {}),
]  # fmt: skip


class _Fetched(Exception):
    pass


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    (tmp_path / "keras_home" / "models").mkdir(parents=True)
    return tmp_path / "keras_home" / "models"


@pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])
@pytest.mark.parametrize("name, keras_builder, options", KERAS_FILES, ids=[row[0] for row in KERAS_FILES])
def test_file_url_and_hash_are_the_ones_keras_applications_fetches(name, keras_builder, options, include_top, monkeypatch):
    fetched = {}

    def record(fname, origin, cache_subdir, file_hash=None, **_):
        fetched.update(fname=fname, origin=origin, file_hash=file_hash)
        raise _Fetched

    monkeypatch.setattr(file_utils, "get_file", record)
    side = 224 if include_top else 160  # keras's heads take their default side only; MobileNets have files for 160
    input_shape = None if include_top else (side, side, 3)
    with pytest.raises(_Fetched):
        build_keras_uninitialised(keras_builder, weights="imagenet", include_top=include_top, input_shape=input_shape, **options)
    published = pretrained.PUBLISHED[name]
    expected_name = pretrained.file_name(name, include_top=include_top, options=options, image_side=side)
    assert fetched["fname"] == expected_name
    assert fetched["origin"] == pretrained.BASE_URL + published.folder + expected_name
    assert fetched["file_hash"] == (None if published.hashes is None else published.hashes[0 if include_top else 1])


@pytest.mark.parametrize("num_classes, expected_file", [
    (1000, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"),
    (5, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
])  # fmt: skip
def test_imagenet_finds_keras_applications_file_in_keras_home(num_classes, expected_file, keras_home, caplog):
    include_top = num_classes == 1000
    reference = keras.applications.MobileNetV2(weights=None, alpha=0.35, include_top=include_top, input_shape=(32, 32, 3))
    randomise_weights(reference, seed=0)
    write_legacy_h5(reference, keras_home / expected_file)
    with caplog.at_level(logging.INFO):
        ours = architectures.build("mobilenet_v2", num_classes=num_classes, alpha=0.35, input_shape=(32, 32, 3), weights="imagenet")
    assert str(keras_home / expected_file) in caplog.text
    assert ("new: predictions" in caplog.text) != include_top
    features = keras.Model(ours.input, ours.get_layer("out_relu").output)
    images = raw_pixels(1, (32, 32, 3))
    expected = reference(keras.applications.mobilenet_v2.preprocess_input(images.copy()))
    if include_top:  # keras's model ends at its classifier; ours too
        np.testing.assert_allclose(np.asarray(ours(images)), np.asarray(expected), atol=1e-5)
    else:
        np.testing.assert_allclose(np.asarray(features(images)), np.asarray(expected), atol=1e-4)


def test_offline_without_cached_file_names_the_file_directory_and_url(keras_home, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a closed port: offline, at once
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    with pytest.raises(architectures.UserError) as raised:
        architectures.build("mobilenet_v2", num_classes=3, input_shape=(32, 32, 3), weights="imagenet")
    message = str(raised.value)
    assert "\n" not in message
    assert file_name in message and str(keras_home) in message
    assert f"{pretrained.BASE_URL}mobilenet_v2/{file_name}" in message
    assert not list(keras_home.iterdir()), "a failed download leaves no file behind"


@pytest.mark.parametrize("name, options, message", [
    ("resnet18", {}, "publishes no ImageNet weights for resnet18"),
    ("mobilenet_v2", {"alpha": 0.3}, "alpha 0.35, 0.5, 0.75, 1, 1.3, 1.4; got alpha=0.3"),
])  # fmt: skip
def test_variants_without_published_weights_are_refused(name, options, message):
    with pytest.raises(architectures.UserError, match=message):
        pretrained.check_imagenet(name, options)


@pytest.mark.parametrize("mode, preprocess_input", [
    ("caffe", keras.applications.resnet.preprocess_input),
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
])  # fmt: skip
def test_preprocessing_layer_matches_keras_preprocess_input(mode, preprocess_input):
    images = raw_pixels(2, (5, 5, 3))
    layer = pretrained.ImageNetPreprocessing(mode)
    np.testing.assert_allclose(np.asarray(layer(images)), preprocess_input(images.copy()), atol=1e-5)
    assert pretrained.ImageNetPreprocessing.from_config(layer.get_config()).mode == mode


def test_model_with_imagenet_preprocessing_round_trips_through_keras_file(tmp_path):
    images = keras.Input((8, 8, 3))
    model = keras.Model(images, pretrained.ImageNetPreprocessing("caffe")(images))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    pixels = raw_pixels(3, (8, 8, 3))
    np.testing.assert_array_equal(np.asarray(loaded(pixels)), np.asarray(model(pixels)))
