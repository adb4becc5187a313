"""Training runs end to end through the command line, on real Fashion-MNIST files and on a
messy image folder: run-directory contents, re-running, resume after SIGKILL, SIGTERM,
divergence, evaluate and predict; one run with every feature on, and the evidence that each
took effect (EMA, mixed float16, XLA, each augmentation; clipping in test_train.py)."""

import csv
import dataclasses
import json
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import architectures  # noqa: F401  (custom layers for load_model)
from pipeline.augment import build_augmenter
from pipeline.checkpoints import BackupManager
from pipeline.config import from_yaml_file
from pipeline.train import make_optimizer
from tests.cli import TINY_RUN, run_cli, start_cli
from tests.pipeline.test_data import make_messy_folder

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed (scripts/bootstrap.sh installs it)"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny completed run shared by the read-only tests below."""
    output_dir = tmp_path_factory.mktemp("runs")
    result = run_cli("train", *TINY_RUN, "--output-dir", str(output_dir), "--run-name", "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir / "tiny", result


@needs_fashion_mnist
def test_run_directory_holds_config_checkpoints_logs_metrics_and_plots(tiny_run):
    run_dir, result = tiny_run
    for name in ("config.yaml", "history.csv", "best.weights.h5", "model.keras", "labels.txt", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "backup").glob("ckpt-*.index"))
    assert any((run_dir / "logs").iterdir())
    for plot in ("learning_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (run_dir / plot).read_bytes()[:8] == PNG_SIGNATURE, plot
    with open(run_dir / "history.csv") as history:
        rows = list(csv.DictReader(history))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 256
    assert 0.3 < metrics["top1_accuracy"] <= 1.0  # 2 epochs on 640 images: well above chance (0.1)
    assert metrics["run"]["epochs"] == 2
    assert len(metrics["per_class"]) == 10
    assert "test accuracy" in result.stdout and str(run_dir) in result.stdout
    assert not list(run_dir.glob(".tmp-*")), "temporary files left behind"


@needs_fashion_mnist
def test_saved_model_takes_raw_pixels_and_reproduces_the_test_accuracy(tiny_run):
    run_dir, _ = tiny_run
    model = keras.models.load_model(run_dir / "model.keras")
    assert model.input_shape == (None, 28, 28, 1)
    from pipeline.config import DataConfig
    from pipeline.data import load_splits

    splits = load_splits(DataConfig(max_eval_examples=256), seed=0)
    images, labels = map(np.concatenate, zip(*[(i.numpy(), l.numpy()) for i, l in splits.test.batch(256)]))
    accuracy = np.mean(np.argmax(model.predict(images.astype("float32"), verbose=0), -1) == labels)
    assert accuracy == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["top1_accuracy"], abs=1e-6)


@needs_fashion_mnist
def test_same_command_on_a_completed_run_does_not_retrain(tiny_run):
    run_dir, _ = tiny_run
    before = (run_dir / "model.keras").stat().st_mtime_ns
    result = run_cli("train", *TINY_RUN, "--output-dir", str(run_dir.parent), "--run-name", "tiny")
    assert result.returncode == 0, result.stderr
    assert "already completed" in result.stdout
    assert (run_dir / "model.keras").stat().st_mtime_ns == before


@needs_fashion_mnist
def test_changed_config_in_an_existing_run_directory_is_refused(tiny_run):
    run_dir, _ = tiny_run
    arguments = [*TINY_RUN, "--output-dir", str(run_dir.parent), "--run-name", "tiny", "--set", "train.learning_rate=0.01"]
    (run_dir / "metrics.json").rename(run_dir / "metrics.json.aside")  # an unfinished run with another config
    try:
        result = run_cli("train", *arguments)
    finally:
        (run_dir / "metrics.json.aside").rename(run_dir / "metrics.json")
    assert result.returncode == 2
    assert "different config (train.learning_rate" in result.stderr


@needs_fashion_mnist
def test_evaluate_and_predict_use_the_run_directory(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    evaluated = run_cli("evaluate", "--run-dir", str(run_dir), "--test-time-flip")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "top-1" in evaluated.stdout and (run_dir / "evaluation.json").is_file()
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert evaluation["top1_accuracy"] == pytest.approx(metrics["top1_accuracy"], abs=1e-6)  # single-pass stays the headline
    # Flip TTA: probabilities averaged with the mirrored image's, reported beside the plain accuracy.
    from pipeline.config import DataConfig
    from pipeline.data import load_splits

    model = keras.models.load_model(run_dir / "model.keras")
    splits = load_splits(DataConfig(max_eval_examples=256), seed=0)
    images, labels = map(np.concatenate, zip(*[(i.numpy(), l.numpy()) for i, l in splits.test.batch(256)]))
    images = images.astype("float32")
    averaged = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    flip_accuracy = evaluation["evaluated"]["test_time_flip"]["top1_accuracy"]
    assert flip_accuracy == pytest.approx(np.mean(np.argmax(averaged, -1) == labels), abs=1e-6)
    assert f"test-time flip (mean of the image and its mirror): top-1 {flip_accuracy:.2%}" in evaluated.stdout

    images = tmp_path / "photos"
    images.mkdir()
    for index in range(3):
        Image.fromarray(np.full((40, 30, 3), 60 * index, np.uint8)).save(images / f"item {index}.png")
    (images / "notes.png").write_text("not an image")
    (images / "cut.png").write_bytes((images / "item 1.png").read_bytes()[:20])  # cut inside its header
    predicted = run_cli("predict", "--run-dir", str(run_dir), "--top-k", "2", str(images))
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.count(",") == 1 for line in lines)
    assert "notes.png: not an image" in predicted.stderr and "cut.png: truncated" in predicted.stderr


def wait_for(condition, timeout: float, process) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def backups(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "backup").glob("ckpt-*.index"))


RESUMABLE_RUN = [
    "--epochs", "3", "--batch-size", "32",
    "--set", "data.max_train_examples=1280", "--set", "data.max_eval_examples=128",
    "--set", "train.steps_per_execution=2", "--set", "train.backup_every_steps=4",
]


@needs_fashion_mnist
def test_run_killed_mid_epoch_resumes_from_its_last_backup(tmp_path):
    arguments = ["train", *RESUMABLE_RUN, "--output-dir", str(tmp_path), "--run-name", "killed"]
    run_dir = tmp_path / "killed"
    process = start_cli(*arguments, log_path=tmp_path / "first.log")
    wait_for(lambda: len(backups(run_dir)) >= 2, timeout=180, process=process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (run_dir / "metrics.json").exists()

    result = run_cli(*arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from backup" in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["epochs"] == 3
    assert metrics["top1_accuracy"] > 0.3


@needs_fashion_mnist
def test_sigterm_saves_a_backup_and_exits_cleanly(tmp_path):
    arguments = ["train", *RESUMABLE_RUN, "--output-dir", str(tmp_path), "--run-name", "preempted"]
    run_dir = tmp_path / "preempted"
    log_path = tmp_path / "run.log"
    process = start_cli(*arguments, log_path=log_path)
    wait_for(lambda: len(backups(run_dir)) >= 1, timeout=180, process=process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    log = log_path.read_text()
    assert "received SIGTERM: saved a backup at epoch" in log
    assert "Traceback" not in log
    assert backups(run_dir)


@needs_fashion_mnist
def test_diverging_loss_stops_with_a_clear_message(tmp_path):
    result = run_cli("train", *TINY_RUN, "--output-dir", str(tmp_path), "--set", "train.learning_rate=1e12")
    assert result.returncode == 1
    assert "loss became nan" in result.stderr.lower() or "loss became inf" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_training_on_a_messy_image_folder_skips_and_reports_bad_files(tmp_path):
    root = tmp_path / "messy"
    make_messy_folder(root)
    for class_index, class_name in enumerate(("cat", "dog")):  # enough clean images to split three ways
        for index in range(12):
            shade = 40 + 150 * class_index + index
            Image.fromarray(np.full((36, 28, 3), shade, np.uint8)).save(root / class_name / f"clean {index}.png")
    result = run_cli(
        "train", "--dataset", f"folder:{root}", "--image-size", "32", "--arch", "resnet20", "--epochs", "1",
        "--batch-size", "4", "--output-dir", str(tmp_path / "runs"), "--run-name", "messy",
        "--set", "data.validation_fraction=0.2", "--set", "train.warmup_epochs=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 3 of" in result.stderr
    metrics = json.loads((tmp_path / "runs" / "messy" / "metrics.json").read_text())
    assert metrics["data"]["skipped"] == {"empty": 1, "truncated": 1, "not an image": 1}


@needs_fashion_mnist
def test_main_job_without_a_subcommand_trains_evaluates_and_exports(tmp_path):
    result = run_cli(*TINY_RUN, "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "fashion_mnist-airbench94_w16"
    assert "test accuracy" in result.stdout and "total wall time" in result.stdout
    assert (run_dir / "export" / "fashion_mnist-airbench94_w16" / "1" / "saved_model.pb").is_file()
    assert sorted(p.name for p in (run_dir / "export" / "tflite" / "fashion_mnist-airbench94_w16" / "1").glob("*.tflite")) == [
        "fashion_mnist-airbench94_w16_float32.tflite",
        "fashion_mnist-airbench94_w16_int8.tflite",
    ]
    report = json.loads((run_dir / "export" / "export_report.json").read_text())
    assert {(a["format"], a["quantization"]) for a in report["artefacts"]} >= {("saved_model", "none"), ("tflite", "int8")}


EVERYTHING_ON = [
    "--set", "train.ema_decay=0.9", "--set", "train.optimizer=adamw", "--set", "train.learning_rate=0.003",
    "--set", "train.gradient_clip_norm=1.0", "--set", "train.precision=mixed_float16", "--set", "train.jit_compile=true",
    "--set", "augment.random_resized_crop=true", "--set", "augment.rand_augment=true",
    "--set", "augment.mixup_alpha=0.2", "--set", "augment.cutmix_alpha=1.0", "--set", "augment.random_erasing=0.25",
    "--set", "augment.test_time_flip=true",
]  # pad-crop and flip are on by default
AUGMENTATIONS_OFF = dict(
    random_resized_crop=False, random_crop_padding=0, horizontal_flip=False, rand_augment=False,
    mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0,
)


@pytest.fixture(scope="module")
def everything_run(tmp_path_factory):
    """One tiny run with every feature on, shared by the tests below that each check one of them.
    TensorFlow's C++ log is on: its XLA line is the evidence that the step was compiled."""
    output_dir = tmp_path_factory.mktemp("runs")
    result = run_cli(
        "train", *TINY_RUN, *EVERYTHING_ON, "--output-dir", str(output_dir), "--run-name", "everything",
        env={"TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir / "everything", result


@needs_fashion_mnist
def test_ema_adamw_clipping_float16_xla_and_every_augmentation_run_together(everything_run):
    run_dir, result = everything_run
    assert "precision: mixed_float16" in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["top1_accuracy"] > 0.15 and metrics["run"]["precision"] == "mixed_float16"
    assert 0.0 < metrics["run"]["test_time_flip"]["top1_accuracy"] <= 1.0  # reported beside, not instead
    assert "test-time flip (mean of the image and its mirror): top-1" in result.stdout
    config = from_yaml_file(run_dir / "config.yaml")
    train = config.train
    assert (train.ema_decay, train.optimizer, train.gradient_clip_norm, train.precision, train.jit_compile) == (
        0.9, "adamw", 1.0, "mixed_float16", True
    )
    assert [name for name, off in AUGMENTATIONS_OFF.items() if getattr(config.augment, name) == off] == []


@needs_fashion_mnist
def test_run_with_ema_saves_the_average_of_its_best_epoch_not_the_raw_weights(everything_run):
    run_dir, _ = everything_run
    config = from_yaml_file(run_dir / "config.yaml")
    model = keras.models.load_model(run_dir / "model.keras")
    saved = [variable.numpy() for variable in model.trainable_variables]
    with open(run_dir / "history.csv") as history:
        val_accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(history)]
    best_epoch = int(np.argmax(val_accuracies)) + 1  # the first best, as the run keeps it

    # The backup written after the best epoch holds that epoch's raw weights and the optimizer's
    # EMA; the run's own optimizer (loss scaling and EMA included) must match it variable for variable.
    optimizer = make_optimizer(config.train, steps_per_epoch=1)
    optimizer.build(model.trainable_variables)
    backups = BackupManager(run_dir, model, optimizer, chief=False)
    for path in backups.manager.checkpoints:
        backups.checkpoint.restore(path).assert_consumed()
        if (int(backups.epoch.numpy()), int(backups.step_in_epoch.numpy())) == (best_epoch, 0):
            break
    else:
        pytest.fail(f"no backup from the end of epoch {best_epoch}")
    raw = [variable.numpy() for variable in model.trainable_variables]
    averages = [variable.numpy() for variable in optimizer.inner_optimizer._model_variables_moving_average]
    assert len(averages) == len(saved) == len(raw)
    for saved_weight, average in zip(saved, averages):
        np.testing.assert_array_equal(saved_weight, average, err_msg="model.keras does not hold the EMA")
    assert not any(np.array_equal(saved_weight, raw_weight) for saved_weight, raw_weight in zip(saved, raw))
    model.load_weights(run_dir / "best.weights.h5")
    for best_weight, average in zip(model.trainable_variables, averages):
        np.testing.assert_array_equal(best_weight.numpy(), average, err_msg="best.weights.h5 does not hold the EMA")


@needs_fashion_mnist
def test_run_in_mixed_float16_computes_every_layer_in_float16_and_outputs_float32(everything_run):
    run_dir, _ = everything_run
    model = keras.models.load_model(run_dir / "model.keras")
    backbone = model.get_layer(from_yaml_file(run_dir / "config.yaml").model.arch)
    assert {layer.dtype_policy.name for layer in backbone.layers if layer.weights} == {"mixed_float16"}
    assert {variable.dtype for variable in model.weights} == {"float32"}  # mixed precision keeps float32 weights
    assert model.output.dtype == "float32"


@needs_fashion_mnist
def test_run_with_jit_compile_compiles_its_step_with_xla(everything_run):
    _, result = everything_run
    assert "Compiled cluster using XLA" in result.stderr  # TensorFlow logs it once, on the first XLA compile


@needs_fashion_mnist
def test_each_augmentation_of_the_run_changes_a_batch(everything_run):
    """Each augmentation in the saved config, alone, through the augmenter the run builds from it."""
    run_dir, _ = everything_run
    config = from_yaml_file(run_dir / "config.yaml").augment
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 28, 28, 1)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
    for name in AUGMENTATIONS_OFF:
        alone = dataclasses.replace(config, **{**AUGMENTATIONS_OFF, name: getattr(config, name)})
        augmenter = build_augmenter(alone, image_shape=(28, 28, 1), num_classes=10, seed=0)
        assert augmenter is not None, f"{name}={getattr(config, name)} alone builds no augmenter"
        augmented_images, augmented_labels = map(np.asarray, augmenter(images, labels))
        assert not np.array_equal(augmented_images, images), f"{name} changed no image"
        if name in ("mixup_alpha", "cutmix_alpha"):
            assert np.any((augmented_labels > 0) & (augmented_labels < 1)), f"{name} mixed no labels"
