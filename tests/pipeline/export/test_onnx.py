"""ONNX for every family of the zoo: its smallest variant at 32x32x3 (small_input), with the
pipeline's normalisation inside, converted as the export converts it and run in onnxruntime.
The three largest (ViT-B, VGG-11, ConvNeXt-T: 29-133M parameters, 2 of the suite's 3 slowest
minutes) are built from narrower, shallower rows of their own spec tables: every layer type
and code path of the family, a fraction of the weights to convert."""

import dataclasses
import json
import math

import keras
import numpy as np
import onnxruntime
import pytest

import architectures
from architectures import registry, vgg
from architectures.zoo_sizes import SIZES
from pipeline.config import ModelConfig
from pipeline.export.onnx import convert_to_onnx, onnx_metadata
from pipeline.saved_runs import predict_probabilities
from pipeline.train import build_training_model

IMAGE_SHAPE = (32, 32, 3)


def smallest_variant_per_family() -> list[str]:
    """One variant per family: the one with the fewest parameters (unknown counts last)."""
    smallest: dict[str, str] = {}
    for name in architectures.names():
        family = architectures.info(name).family
        size = SIZES.get(name, (math.inf,))[0]
        if family not in smallest or size < SIZES.get(smallest[family], (math.inf,))[0]:
            smallest[family] = name
    return list(smallest.values())


NARROWED_SPECS = {
    "vit_b_16": lambda spec: dataclasses.replace(spec, hidden_dim=64, depth=2, num_heads=2, mlp_dim=128),
    "vgg11": lambda spec: dataclasses.replace(spec, stage_widths=(8, 16, 32, 64, 64)),
    "convnext_tiny": lambda spec: dataclasses.replace(spec, stage_depths=(1, 1, 2, 1), stage_widths=(16, 32, 64, 128)),
}


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.mark.parametrize("arch", smallest_variant_per_family())
def test_every_family_converts_to_onnx_and_matches_keras(arch, monkeypatch):
    if arch in NARROWED_SPECS:
        monkeypatch.setitem(registry._VARIANT_SPEC, arch, NARROWED_SPECS[arch](registry._VARIANT_SPEC[arch]))
        monkeypatch.setattr(vgg, "FC_UNITS", 64)  # VGG's 4,096-wide classifier alone is 17M weights
    keras.utils.set_random_seed(0)
    model = build_training_model(
        ModelConfig(arch=arch, small_input=True), image_shape=IMAGE_SHAPE, num_classes=10,
        channel_mean=[125.0, 123.0, 114.0], channel_std=[63.0, 62.0, 66.0],
    )  # fmt: skip
    class_names = [f"class_{index}" for index in range(10)]
    metadata = onnx_metadata(model, model_name="zoo", version=1, arch=arch, class_names=class_names)
    session = onnxruntime.InferenceSession(convert_to_onnx(model, metadata).SerializeToString(), providers=["CPUExecutionProvider"])

    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.type, given.shape, returned.shape) == ("tensor(uint8)", ["batch", *IMAGE_SHAPE], ["batch", 10])

    images = np.random.default_rng(0).integers(0, 256, (4, *IMAGE_SHAPE), dtype=np.uint8)
    expected = predict_probabilities(model, images.astype(np.float32))
    probabilities = session.run(["probabilities"], {"images": images})[0]
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(session.run(["probabilities"], {"images": images[:1]})[0], expected[:1], atol=1e-4, rtol=0)
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == class_names
