"""Table 7: fine-tuning a pretrained backbone against training from scratch, and its int8 TFLite model.

There are no ImageNet files here, so the "pretrained" backbone is made first: mobilenet_v2
(alpha 0.35, 32x32x3) trained on Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress,
coat) behind the [-1, 1] scaling keras.applications' MobileNetV2 weights expect, and written as
keras.applications' `_notop` file, under its name, in a temporary KERAS_HOME. Then classes 5-9
(sandal, shirt, sneaker, bag, ankle boot), a few thousand images, through the pipeline:
`model.weights: imagenet` with the new head trained alone for `freeze_epochs`, then the whole
network, against the same network from scratch at the same number of steps. The curves are the
validation accuracy at each epoch's end; test accuracy is on the classes' official test images.
The fine-tuned run is exported to float32 and full-int8 TFLite; the goal is int8 within 1 point
of float32.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchContext

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
ARCH, ALPHA, IMAGE_SIDE = "mobilenet_v2", 0.35, 32
PRETRAIN_CLASSES, FINETUNE_CLASSES = range(0, 5), range(5, 10)
BN_MOMENTUM = 0.9  # the pipeline's: Keras's 0.999 leaves the moving statistics behind in a short run

SETTINGS = {
    "pretrain_images": 30000, "pretrain_epochs": 4, "pretrain_learning_rate": 2e-3,
    "finetune_images": 2000, "epochs": 6, "freeze_epochs": 1, "batch_size": 64, "test_images": 5000,
    "head_learning_rate": 2e-3, "fine_tune_learning_rate": 5e-4, "scratch_learning_rate": 2e-3,
}  # fmt: skip
QUICK_SETTINGS = {
    **SETTINGS, "pretrain_images": 512, "pretrain_epochs": 1, "finetune_images": 256, "epochs": 2, "batch_size": 32,
    "test_images": 128,
}  # fmt: skip


def run(context: BenchContext) -> dict[str, Any]:
    if not FASHION_MNIST_DIR.is_dir():
        return {"status": f"not measured: {FASHION_MNIST_DIR} missing (scripts/bootstrap.sh installs it)", "rows": []}
    settings = QUICK_SETTINGS if context.quick else SETTINGS
    work_dir = Path(tempfile.mkdtemp(prefix="convnets-bench-finetune-"))
    try:
        train_images, train_labels = _read_fashion_mnist("train")
        test_images, test_labels = _read_fashion_mnist("t10k")
        started = time.perf_counter()
        pretrain_accuracy = _pretrain(train_images, train_labels, test_images, test_labels, settings, work_dir / "keras_home")
        pretrain_seconds = time.perf_counter() - started
        data_dir = _write_idx_subset(work_dir / "classes_5_9", train_images, train_labels, test_images, test_labels, settings)
        rows = []
        for start in ("pretrained", "scratch"):
            with _keras_home(work_dir / "keras_home"):
                rows.append(_train(start, data_dir, settings, context.runs_dir))
        tflite = _tflite_accuracies(Path(rows[0]["run_dir"]), work_dir / "export")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "status": "measured",
        "settings": {**settings, "arch": ARCH, "alpha": ALPHA, "image_side": IMAGE_SIDE},
        "pretrain": {"test_accuracy": pretrain_accuracy, "seconds": round(pretrain_seconds, 1)},
        "rows": rows,
        "tflite": tflite,
    }


def _read_fashion_mnist(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) images and int labels from Debian's gzipped IDX files."""
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz") as images_file:
        images = np.frombuffer(images_file.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz") as labels_file:
        labels = np.frombuffer(labels_file.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _subset(images: np.ndarray, labels: np.ndarray, classes: range, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` examples of `classes`, labels renumbered from 0."""
    keep = np.flatnonzero(np.isin(labels, classes))[:count]
    return images[keep], labels[keep] - classes.start


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 32, 32, 3) float32 0..255, resized as the pipeline resizes."""
    import tensorflow as tf

    resized = tf.image.resize(images[..., None].astype("float32"), (IMAGE_SIDE, IMAGE_SIDE), method="bilinear", antialias=True)
    return np.repeat(np.clip(np.round(resized.numpy()), 0, 255), 3, axis=-1)


def _pretrain(train_images, train_labels, test_images, test_labels, settings: dict[str, Any], keras_home: Path) -> float:
    """Train the backbone on classes 0-4 and write it as keras.applications' `_notop` file; its test accuracy."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    import architectures
    from architectures import pretrained

    images, labels = _subset(train_images, train_labels, PRETRAIN_CLASSES, settings["pretrain_images"])
    held_images, held_labels = _subset(test_images, test_labels, PRETRAIN_CLASSES, settings["test_images"])
    builder = architectures.build(ARCH, num_classes=len(PRETRAIN_CLASSES), input_shape=(IMAGE_SIDE, IMAGE_SIDE, 3), alpha=ALPHA)
    for layer in builder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    pixels = keras.Input((IMAGE_SIDE, IMAGE_SIDE, 3))
    model = keras.Model(pixels, builder(pretrained.ImageNetPreprocessing(pretrained.PUBLISHED[ARCH].preprocessing)(pixels)))
    model.compile(
        optimizer=keras.optimizers.AdamW(settings["pretrain_learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(_as_rgb(images), labels, batch_size=settings["batch_size"], epochs=settings["pretrain_epochs"], verbose=2)
    _, accuracy = model.evaluate(_as_rgb(held_images), held_labels, batch_size=256, verbose=0)
    backbone = keras.Model(builder.input, builder.get_layer("out_relu").output)  # the `_notop` file holds no head
    file_name = pretrained.file_name(ARCH, include_top=False, options={"alpha": ALPHA}, image_side=IMAGE_SIDE)
    (keras_home / "models").mkdir(parents=True, exist_ok=True)
    with h5py.File(keras_home / "models" / file_name, "w") as weights_file:
        legacy_h5_format.save_weights_to_hdf5_group(weights_file, backbone)
    logger.info("pretrained %s on classes 0-4: %.1f%% test accuracy; wrote %s", ARCH, 100 * accuracy, file_name)
    return float(accuracy)


def _write_idx_subset(directory: Path, train_images, train_labels, test_images, test_labels, settings) -> Path:
    """Classes 5-9 as an `idx:DIR` dataset: the IDX files the pipeline reads, labels 0-4."""
    directory.mkdir(parents=True)
    splits = {
        "train": _subset(train_images, train_labels, FINETUNE_CLASSES, settings["finetune_images"]),
        "t10k": _subset(test_images, test_labels, FINETUNE_CLASSES, settings["test_images"]),
    }
    for prefix, (images, labels) in splits.items():
        header = np.array([0x0803, len(images), 28, 28], ">i4").tobytes()
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as images_file:
            images_file.write(header + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as labels_file:
            labels_file.write(np.array([0x0801, len(labels)], ">i4").tobytes() + labels.astype(np.uint8).tobytes())
    return directory


@contextlib.contextmanager
def _keras_home(path: Path) -> Iterator[None]:
    previous = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KERAS_HOME", None)
        else:
            os.environ["KERAS_HOME"] = previous


def _train(start: str, data_dir: Path, settings: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """One pipeline run on classes 5-9: from the pretrained file, or from scratch; the same steps."""
    from pipeline.config import load_config, validate
    from pipeline.run import train_run

    common = [
        f"data.dataset=idx:{data_dir}", f"data.image_size={IMAGE_SIDE}", "data.channels=3",
        f"model.arch={ARCH}", f"model.options={{alpha: {ALPHA}}}", "augment.horizontal_flip=false",
        f"train.epochs={settings['epochs']}", f"train.batch_size={settings['batch_size']}", "train.optimizer=adamw",
        "train.weight_decay=1e-4", "train.warmup_epochs=0.2", "distribute.strategy=default",
        f"output_dir={runs_dir}", f"run_name=finetune-{start}",
    ]  # fmt: skip
    if start == "pretrained":
        common += [
            "model.weights=imagenet", f"train.freeze_backbone_epochs={settings['freeze_epochs']}",
            f"train.learning_rate={settings['head_learning_rate']}",
            f"train.fine_tune_learning_rate={settings['fine_tune_learning_rate']}",
        ]  # fmt: skip
    else:
        common.append(f"train.learning_rate={settings['scratch_learning_rate']}")
    config = load_config(assignments=common)
    validate(config)
    summary = train_run(config, overwrite=True)
    with open(summary.run_dir / "history.csv") as history:
        curve = [
            {"epoch": int(row["epoch"]) + 1, "val_accuracy": float(row["val_accuracy"]), "seconds": float(row["seconds"])}
            for row in csv.DictReader(history)
        ]
    return {
        "start": start,
        "run_dir": str(summary.run_dir),
        "test_accuracy": summary.test_accuracy,
        "train_seconds": round(summary.train_seconds, 1),
        "curve": curve,
    }


def _tflite_accuracies(run_dir: Path, export_dir: Path) -> dict[str, Any]:
    from pipeline.export import export_run

    report = export_run(run_dir, formats=("tflite",), quantize=("none", "int8"), export_dir=export_dir)
    accuracy = {artefact.quantization: artefact.test_accuracy for artefact in report.artefacts}
    return {
        "keras_float32": report.keras_test_accuracy,
        "tflite_float32": accuracy["none"],
        "tflite_int8": accuracy["int8"],
        "int8_within_one_point": abs(accuracy["int8"] - accuracy["none"]) <= 0.01,
    }
