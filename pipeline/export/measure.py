"""The float32 Keras reference every artefact is compared with, and the measuring: each artefact
is run on the run's test split for its accuracy, top-1 agreement, probability difference and
batch-1 latency."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline import data

logger = logging.getLogger(__name__)

LATENCY_REPEATS = 50  # batch-1 calls timed per artefact, after LATENCY_WARMUP untimed ones
LATENCY_WARMUP = 5
EVAL_BATCH = 256  # images per call while measuring accuracy (SavedModel and ONNX; TFLite runs batch 1)


@dataclass(frozen=True)
class ArtefactReport:
    """One exported file or directory, measured by running it on the run's test split."""

    format: str  # saved_model | tflite | onnx
    quantization: str  # none | float16 | dynamic | int8 (SavedModel and ONNX: none)
    path: Path  # the SavedModel version directory, or the model file
    size_bytes: int  # on disk; a directory's files added up
    test_accuracy: float  # top-1, fraction in [0, 1]
    top1_agreement: float  # fraction of test images with the float32 Keras model's top-1
    max_abs_prob_diff: float  # largest |probability - Keras probability| over images and classes
    batch1_latency_ms: float  # median of LATENCY_REPEATS single-image calls on this CPU
    latency_threads: int  # CPU threads the runtime used for those calls
    notes: str  # how it was run


@dataclass(frozen=True)
class ExportReport:
    """One export: every artefact's measurements; also written to `path` as JSON."""

    run_dir: Path
    model_name: str  # TF Serving's model name
    version: int
    export_dir: Path
    num_eval_examples: int  # test images every artefact was measured on
    keras_test_accuracy: float  # the float32 Keras model on the same images
    artefacts: list[ArtefactReport]
    path: Path  # <export_dir>/export_report.json

    def table(self) -> str:
        """The artefacts as an aligned text table, the Keras reference first."""
        header = f"{'format':<12} {'quantization':<12} {'size':>9} {'test acc':>9} {'agree':>8} {'max|dp|':>9} {'ms b=1':>7}  path"
        rows = [header, f"{'keras':<12} {'none':<12} {'':>9} {self.keras_test_accuracy:>9.2%}"]
        for artefact in self.artefacts:
            rows.append(
                f"{artefact.format:<12} {artefact.quantization:<12} {human_size(artefact.size_bytes):>9} "
                f"{artefact.test_accuracy:>9.2%} {artefact.top1_agreement:>8.2%} {artefact.max_abs_prob_diff:>9.1e} "
                f"{artefact.batch1_latency_ms:>7.2f}  {artefact.path}"
            )
        rows.append(f"{self.num_eval_examples} test images; version {self.version} of {self.model_name}; report {self.path}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


Predict = Callable[[np.ndarray], np.ndarray]  # uint8 images (B, H, W, C) -> float32 probabilities (B, K)


@dataclass(frozen=True)
class EvalSet:
    """The test images every artefact is measured on, read EVAL_BATCH at a time (never all in
    memory), and the float32 Keras reference's probabilities on them, computed once."""

    examples: tf.data.Dataset  # (uint8 (H, W, C), int64 label), in the split's order
    keras_probabilities: np.ndarray  # float32 (N, K): N x K numbers, not N images
    keras_accuracy: float  # top-1 of the float32 Keras model

    @property
    def size(self) -> int:
        return len(self.keras_probabilities)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(uint8 images (B, H, W, C), int64 labels (B,), Keras's probabilities (B, K)), EVAL_BATCH at a time."""
        batches = self.examples.batch(EVAL_BATCH).prefetch(1).as_numpy_iterator()
        for start, (images, labels) in zip(range(0, self.size, EVAL_BATCH), batches):
            yield images, labels, self.keras_probabilities[start : start + len(labels)]

    def first_images(self, count: int) -> np.ndarray:
        """uint8 (count, H, W, C): the first test images, for warmup requests and latency."""
        return next(self.examples.batch(count).as_numpy_iterator())[0]


def float32_model(model: keras.Model) -> keras.Model:
    """A copy of `model` computing in float32, with the same weights.

    A model trained under a mixed policy keeps `mixed_bfloat16` in every layer's config, and
    bfloat16 compute has no TFLite kernels. The serialized config is rewritten (every dtype
    policy and recorded tensor dtype to float32) and rebuilt; weights are float32 already.
    """

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            if node.get("class_name") == "__keras_tensor__":
                return {**node, "config": {**node["config"], "dtype": "float32"}}
            return {key: to_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    clone = keras.saving.deserialize_keras_object(to_float32(keras.saving.serialize_keras_object(model)))
    clone.set_weights(model.get_weights())
    return clone


def normalization_statistics(model: keras.Model) -> dict[str, list[float]] | None:
    """Mean and std (0..255 pixel units) of the model's own Normalization layer, if it has one."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer_config = layer.get_config()
            mean = np.ravel(np.asarray(layer_config["mean"], np.float64))
            std = np.sqrt(np.ravel(np.asarray(layer_config["variance"], np.float64)))
            return {"mean": mean.tolist(), "std": std.tolist()}
    return None


def load_eval_set(model: keras.Model, splits: data.DatasetSplits, max_eval_examples: int | None) -> EvalSet:
    """The first `max_eval_examples` test images (None: all) and the float32 model's probabilities on them."""
    if splits.image_shape != tuple(model.input_shape[1:]):
        raise UserError(
            f"the run's test images are {'x'.join(map(str, splits.image_shape))} but its model takes "
            f"{'x'.join(map(str, model.input_shape[1:]))}; was config.yaml edited?"
        )
    test = splits.test if max_eval_examples is None else splits.test.take(max_eval_examples)
    forward = tf.function(lambda batch: model(batch, training=False))
    probabilities, correct = [], 0
    for images, labels in test.batch(EVAL_BATCH).prefetch(1).as_numpy_iterator():
        probabilities.append(forward(tf.convert_to_tensor(images.astype(np.float32))).numpy())
        correct += int(np.sum(probabilities[-1].argmax(1) == labels))
    if not probabilities:
        raise UserError("the run's test split is empty: there is nothing to measure the exports on")
    keras_probabilities = np.concatenate(probabilities)
    return EvalSet(test, keras_probabilities, correct / len(keras_probabilities))


def measured(
    fmt: str,
    quantization: str,
    path: Path,
    predict: Predict,
    eval_set: EvalSet,
    latency_ms: float,
    latency_threads: int,
    notes: str,
) -> ArtefactReport:
    """The report of an artefact whose `predict` is run on `eval_set`, batch by batch, beside the Keras reference."""
    correct = agreeing = 0
    max_abs_prob_diff = 0.0
    for images, labels, keras_probabilities in eval_set.batches():
        probabilities = predict(images)
        correct += int(np.sum(probabilities.argmax(1) == labels))
        agreeing += int(np.sum(probabilities.argmax(1) == keras_probabilities.argmax(1)))
        max_abs_prob_diff = max(max_abs_prob_diff, float(np.max(np.abs(probabilities - keras_probabilities))))
    report = ArtefactReport(
        format=fmt,
        quantization=quantization,
        path=path,
        size_bytes=size_on_disk(path),
        test_accuracy=correct / eval_set.size,
        top1_agreement=agreeing / eval_set.size,
        max_abs_prob_diff=max_abs_prob_diff,
        batch1_latency_ms=latency_ms,
        latency_threads=latency_threads,
        notes=notes,
    )
    logger.info(
        "%s %s: test accuracy %.2f%%, top-1 agreement %.2f%%, max |dp| %.1e, %.2f ms/image, %s",
        fmt, quantization, 100 * report.test_accuracy, 100 * report.top1_agreement,
        report.max_abs_prob_diff, latency_ms, human_size(report.size_bytes),
    )  # fmt: skip
    return report


def cpu_threads() -> int:
    """The threads TensorFlow's and onnxruntime's default pools use: one per usable core."""
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def median_latency_ms(call: Callable[[], object]) -> float:
    for _ in range(LATENCY_WARMUP):
        call()
    timings = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return 1000 * statistics.median(timings)


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def human_size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.1f} KB"
    return f"{size_bytes / 1024**2:.1f} MB"
