"""Fine-tuning from keras.applications weights, end to end on a tiny photo folder: `imagenet`
found in a temporary KERAS_HOME (a randomised file in keras.applications' layout, under its own
name), the frozen phase (backbone bit-identical to the file, BatchNorm statistics still, the head
training), the switch on resume (every layer trains), the export (predictions equal the Keras
model's); the phase schedule; the offline error through the command line."""

import dataclasses
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import architectures  # noqa: F401  (custom layers for load_model)
from architectures.errors import UserError
from pipeline import run
from pipeline.config import load_config, validate
from pipeline.export import export_run
from pipeline.finetune import FineTuningPhases, TwoPhaseSchedule
from pipeline.strategy import make_strategy
from tests.architectures.keras_reference import randomise_weights
from tests.architectures.test_weights import write_legacy_h5
from tests.cli import run_cli

NOTOP_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # keras's name at any side off its list


def make_photo_folder(root: Path, images_per_class: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for label, colour in (("cat", (200, 60, 40)), ("dog", (40, 80, 200))):
        (root / label).mkdir(parents=True)
        for index in range(images_per_class):
            pixels = np.clip(rng.normal(colour, 50, (40, 40, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return root


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A KERAS_HOME holding a randomised MobileNetV2 (alpha 0.35) `_notop` file; returns the file's layers."""
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    reference = keras.applications.MobileNetV2(weights=None, alpha=0.35, include_top=False, input_shape=(32, 32, 3))
    randomise_weights(reference, seed=0)
    write_legacy_h5(reference, models / NOTOP_FILE)
    return {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def _config(tmp_path: Path, epochs: int):
    config = load_config(assignments=[
        f"data.dataset=folder:{make_photo_folder(tmp_path / 'photos') if epochs == 1 else tmp_path / 'photos'}",
        "data.image_size=32", "data.channels=3", f"data.cache_dir={tmp_path / 'cache'}",
        "model.arch=mobilenet_v2", "model.weights=imagenet", "model.options={alpha: 0.35}",
        f"train.epochs={epochs}", "train.freeze_backbone_epochs=1", "train.batch_size=8", "train.warmup_epochs=0",
        "train.learning_rate=0.05", "train.fine_tune_learning_rate=0.01", "train.ema_decay=0.9",
        "train.precision=float32", "train.steps_per_execution=2", "train.backup_every_steps=0",
        "distribute.strategy=default", f"output_dir={tmp_path / 'runs'}", "run_name=photos",
    ])  # fmt: skip
    validate(config)
    return config


def _builder_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    builder = model.get_layer("mobilenet_v2")
    return {layer.name: [np.array(weight) for weight in layer.get_weights()] for layer in builder.layers if layer.weights}


def test_frozen_phase_trains_the_head_only_then_every_layer_trains_and_exports_equal(tmp_path, keras_home):
    config = _config(tmp_path, epochs=1)
    strategy = make_strategy("default")
    run_dir = config.run_dir
    training = run._prepare(config, strategy, run_dir, run_dir, chief=True, exporting=False)
    assert "normalize" not in [layer.name for layer in training.model.layers]  # the weights' own preprocessing
    assert training.model.get_layer("mobilenet_v2").get_layer("imagenet_preprocessing").mode == "tf"
    before = _builder_weights(training.model)
    started = time.perf_counter()
    run._finish(training, run._fit(training), started)
    after_frozen = _builder_weights(training.model)

    assert set(keras_home) == set(after_frozen) - {"predictions"}
    for name, file_arrays in keras_home.items():  # kernels, BN scales and moving statistics alike
        for trained, written in zip(after_frozen[name], file_arrays):
            np.testing.assert_array_equal(trained, written, err_msg=f"{name} moved while frozen")
    assert not np.array_equal(after_frozen["predictions"][0], before["predictions"][0]), "the head did not train"

    # Resumed with a second epoch: restored at epoch 1, past the frozen epoch, so every layer trains.
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2))
    resumed = run._prepare(longer, strategy, run_dir, run_dir, chief=True, exporting=False)
    assert resumed.state.epoch == 1
    restored = _builder_weights(resumed.model)
    train_seconds = run._fit(resumed)
    assert len(resumed.state.history) == 2
    unchanged = [
        name for name, arrays in _builder_weights(resumed.model).items()
        if all(np.array_equal(a, b) for a, b in zip(arrays, restored[name]))
    ]  # fmt: skip
    assert unchanged == []
    run._finish(resumed, train_seconds, started)

    report = export_run(run_dir, formats=["saved_model", "tflite"], quantize=["none"])
    for artefact in report.artefacts:
        assert artefact.top1_agreement == 1.0, artefact.format
        assert artefact.max_abs_prob_diff < 1e-4, artefact.format  # float32 throughout; TFLite's kernels sum in another order


def test_phase_follows_the_epoch_number_so_a_resumed_run_re_enters_it():
    images = keras.Input((8, 8, 3))
    backbone_layer = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(images, keras.layers.Dense(2, name="predictions")(backbone_layer(images)))
    resumed_in_frozen_phase = FineTuningPhases([backbone_layer], freeze_epochs=2)
    assert resumed_in_frozen_phase.enter(1) and not backbone_layer.trainable
    assert len(model.trainable_variables) == 2  # the head's kernel and bias
    assert not resumed_in_frozen_phase.enter(1)  # no change, no retrace
    resumed_after_it = FineTuningPhases([backbone_layer], freeze_epochs=2)
    assert resumed_after_it.enter(2) and backbone_layer.trainable
    assert len(model.trainable_variables) == 4


def test_schedule_warms_up_and_decays_twice_restarting_at_the_switch():
    schedule = TwoPhaseSchedule(head_learning_rate=0.1, fine_tune_learning_rate=0.01, warmup_steps=2, frozen_steps=10, total_steps=30)
    rates = [float(schedule(step)) for step in range(30)]
    assert rates[0] == 0.0 and rates[2] == pytest.approx(0.1)
    assert rates[9] < 0.01  # decayed to near zero by the switch
    assert rates[10] == 0.0 and rates[12] == pytest.approx(0.01)  # its own warmup, to the fine-tuning peak
    assert rates[29] < rates[12] and max(rates[10:]) == pytest.approx(0.01)


def test_offline_without_cached_file_exits_2_with_one_line_naming_the_expected_path(tmp_path):
    photos = make_photo_folder(tmp_path / "photos", images_per_class=6)
    keras_home = tmp_path / "empty_keras_home"
    result = run_cli(
        "train", "--arch", "mobilenet_v2", "--weights", "imagenet", "--dataset", f"folder:{photos}", "--image-size", "32",
        "--batch-size", "4", "--output-dir", str(tmp_path / "runs"), "--set", f"data.cache_dir={tmp_path / 'cache'}",
        env={"KERAS_HOME": str(keras_home), "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert f"{file_name} are not in {keras_home / 'models'}" in errors[0]
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{file_name}" in errors[0]


@pytest.mark.parametrize("assignments, message", [
    (["train.freeze_backbone_epochs=1"], "train.freeze_backbone_epochs needs pretrained weights"),
    (["model.weights=imagenet", "train.freeze_backbone_epochs=9"], r"freeze_backbone_epochs must be in \[0, epochs=8\]"),
    (["model.weights=imagenet", "train.fine_tune_learning_rate=0"], "fine_tune_learning_rate must be > 0"),
    (["model.weights=imagenet", "data.channels=1", "model.arch=mobilenet_v2"], "ImageNet weights take RGB images"),
    (["model.weights=imagenet"], "publishes no ImageNet weights for airbench94_w16"),
])  # fmt: skip
def test_fine_tuning_settings_are_checked_before_any_work(assignments, message):
    with pytest.raises(UserError, match=message):
        validate(load_config(assignments=assignments))
