"""Exports of a trained run that load without any of our code: a TF Serving SavedModel and
TFLite models for phones, each measured on the run's test split by running it.

An export directory (default `<run_dir>/export`) holds:
    models.config                          TF Serving `--model_config_file`, absolute base paths
    export_report.json                     the last export's measurements (`ExportReport`)
    <model_name>/<version>/                SavedModel; TF Serving's base path is <model_name>/
        saved_model.pb, variables/, assets/labels.txt
        assets.extra/tf_serving_warmup_requests
    tflite/<model_name>/<version>/<model_name>_<precision>.tflite, .labels.txt, .json
    onnx/<model_name>/<version>/<model_name>.onnx   (only where tf2onnx and onnxruntime are installed)

A version is a positive integer: by default one more than any version of the model in any
format. Every artefact of an export is written into hidden `.tmp-*` directories beside its
version directory and renamed into place only after all of them were converted and measured,
so TF Serving (which loads the numeric directories only) never sees half an export and an
existing version is never overwritten.

The SavedModel is built from `tf.Module` + `tf.function` signatures and `tf.saved_model.save`
rather than Keras's `model.export`, whose endpoints return the model's own outputs only, not
decoding plus several named outputs:
    serving_default  image_bytes: string [batch] of encoded JPEG/PNG/BMP/GIF, sent over REST as
                     {"b64": ...}; the `_bytes` suffix marks binary data to REST clients
    image_tensor     images: uint8 [batch, H, W, C]
    outputs          probabilities float32 [batch, K], classes int32 [batch, k] (top-k indices,
                     k = min(5, K)), labels string [batch, k], scores float32 [batch, k]

TFLite models take one raw-pixel image [1, H, W, C] (float32 0..255, or int8 for full-integer
quantization) and contain only builtin operators, so the stock LiteRT runtime runs them.
Runs trained under mixed precision are exported with float32 compute: TFLite and serving CPUs
want float32, and the Keras reference every artefact is compared with is that float32 model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline import data
from pipeline.config import from_yaml_file
from pipeline.files import write_text_atomically
from pipeline.run import CONFIG_FILE, load_run_model, predict_probabilities

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_PRECISION_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic_int8", "int8": "int8"}
SERVING_SIGNATURE, TENSOR_SIGNATURE = "serving_default", "image_tensor"
IMAGE_BYTES_INPUT, IMAGE_TENSOR_INPUT = "image_bytes", "images"
SERVING_OUTPUTS = ("probabilities", "classes", "labels", "scores")
MAX_TOP_K = 5  # k of the classes/labels/scores outputs: min(5, K), as the top-5 metric
CALIBRATION_IMAGES = 200  # training images for int8 ranges; TFLite's guide suggests ~100-500
WARMUP_IMAGES = 3  # test images in the TF Serving warmup file
LATENCY_REPEATS = 50  # batch-1 calls timed per artefact, after LATENCY_WARMUP untimed ones
LATENCY_WARMUP = 5
SAVED_MODEL_EVAL_BATCH = 256  # encoded images per serving_default call while measuring accuracy
REPORT_FILE, SERVING_CONFIG_FILE = "export_report.json", "models.config"
FORMAT_TREES = {"tflite": "tflite", "onnx": "onnx"}  # sub-trees of the export directory; SavedModels sit at its top
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # safe in TF Serving URLs and file names
FLEX_OP_MESSAGE = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


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
                f"{artefact.format:<12} {artefact.quantization:<12} {_human_size(artefact.size_bytes):>9} "
                f"{artefact.test_accuracy:>9.2%} {artefact.top1_agreement:>8.2%} {artefact.max_abs_prob_diff:>9.1e} "
                f"{artefact.batch1_latency_ms:>7.2f}  {artefact.path}"
            )
        rows.append(f"{self.num_eval_examples} test images; version {self.version} of {self.model_name}; report {self.path}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass(frozen=True)
class _EvalSet:
    """The test images every artefact is measured on, and the Keras reference on them."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    keras_probabilities: np.ndarray  # float32 (N, K)


# ----------------------------------------------------------------------------- entry point


def export_run(
    run_dir: str | Path,
    *,
    formats: Sequence[str] = ("saved_model", "tflite"),
    quantize: Sequence[str] = ("none", "int8"),
    model_name: str | None = None,
    version: int | None = None,
    export_dir: str | Path | None = None,
    max_eval_examples: int | None = None,
) -> ExportReport:
    """Export a completed run in `formats` (TFLite once per `quantize`) as a new version.

    Every artefact is run on the run's test split (the first `max_eval_examples` images;
    None: all) and compared with the float32 Keras model. Bad input raises `UserError`
    before anything is written; a failure later leaves no version directory behind.
    """
    formats, quantize = _checked_choices(formats, FORMATS, "format"), _checked_choices(quantize, QUANTIZATIONS, "quantization")
    if "onnx" in formats:
        _require_onnx_packages()
    if max_eval_examples is not None and max_eval_examples < 1:
        raise UserError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} has no {CONFIG_FILE}: export needs the run's config to find its test split")
    model_name = _checked_model_name(model_name or run_dir.resolve().name)
    export_dir = Path(export_dir) if export_dir is not None else run_dir / "export"
    version = _choose_version(export_dir, model_name, version)

    trained_model, class_names, _ = load_run_model(run_dir)
    config = from_yaml_file(run_dir / CONFIG_FILE)
    model = float32_model(trained_model)
    splits = data.load_splits(config.data, config.seed)
    eval_set = _load_eval_set(model, splits, max_eval_examples)
    keras_accuracy = float(np.mean(eval_set.keras_probabilities.argmax(1) == eval_set.labels))
    logger.info(
        "export %s version %d: Keras float32 reference %.2f%% on %d test images",
        model_name, version, 100 * keras_accuracy, len(eval_set.labels),
    )

    def export_format(fmt: str, directory: Path) -> list[ArtefactReport]:
        if fmt == "saved_model":
            return [_export_saved_model(model, class_names, eval_set, directory, model_name)]
        if fmt == "tflite":
            calibration = _calibration_images(splits)
            return [
                _export_tflite(
                    model, class_names, eval_set, directory,
                    model_name=model_name, version=version, quantization=quantization,
                    arch=config.model.arch, calibration_images=calibration,
                )
                for quantization in quantize
            ]
        return [_export_onnx(model, eval_set, directory, model_name)]

    artefacts = _export_versions(export_dir, model_name, version, formats, export_format)
    if "saved_model" in formats:
        write_text_atomically(export_dir / SERVING_CONFIG_FILE, serving_config_text(export_dir))
    report = ExportReport(
        run_dir=run_dir,
        model_name=model_name,
        version=version,
        export_dir=export_dir,
        num_eval_examples=len(eval_set.labels),
        keras_test_accuracy=keras_accuracy,
        artefacts=artefacts,
        path=export_dir / REPORT_FILE,
    )
    write_text_atomically(report.path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _export_versions(
    export_dir: Path,
    model_name: str,
    version: int,
    formats: Sequence[str],
    export_format: Callable[[str, Path], list[ArtefactReport]],
) -> list[ArtefactReport]:
    """`export_format(format, staging_dir)` for every format, then each staging directory
    renamed to its version; after a failure anywhere, every staging directory is deleted."""
    parents = {fmt: _version_parent(export_dir, fmt, model_name) for fmt in formats}
    staging: dict[str, Path] = {}
    artefacts: list[ArtefactReport] = []
    try:
        for fmt, parent in parents.items():
            parent.mkdir(parents=True, exist_ok=True)
            staging[fmt] = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent))
        for fmt in formats:
            artefacts += export_format(fmt, staging[fmt])
        for fmt, parent in parents.items():
            _publish(staging[fmt], parent / str(version))
    finally:
        for directory in staging.values():
            shutil.rmtree(directory, ignore_errors=True)  # already gone where published
    published = []
    for artefact in artefacts:
        final_path = parents[artefact.format] / str(version) / artefact.path.relative_to(staging[artefact.format])
        published.append(ArtefactReport(**{**asdict(artefact), "path": final_path}))
    return published


def _checked_choices(values: Sequence[str], allowed: tuple[str, ...], kind: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    for value in values:
        if value not in allowed:
            raise UserError(f"unknown export {kind} {value!r}; choose from {', '.join(allowed)}")
    if not values:
        raise UserError(f"no export {kind} given; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))  # in the given order, each once


def _checked_model_name(model_name: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(model_name) or model_name in FORMAT_TREES.values():
        raise UserError(
            f"model name {model_name!r} must be letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit) and not {' or '.join(FORMAT_TREES.values())}"
        )
    return model_name


def _require_onnx_packages() -> None:
    missing = [package for package in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(package) is None]
    if missing:
        raise UserError(
            f"onnx export needs the packages tf2onnx and onnxruntime, which are not installed "
            f"(missing: {', '.join(missing)}; pip install tf2onnx onnxruntime)"
        )


# ----------------------------------------------------------------------------- versions


def _version_parent(export_dir: Path, fmt: str, model_name: str) -> Path:
    return export_dir / FORMAT_TREES[fmt] / model_name if fmt in FORMAT_TREES else export_dir / model_name


def _existing_versions(export_dir: Path, model_name: str) -> set[int]:
    """Numeric version directories of `model_name` in every format's tree."""
    versions = set()
    for fmt in FORMATS:
        parent = _version_parent(export_dir, fmt, model_name)
        if parent.is_dir():
            versions |= {int(child.name) for child in parent.iterdir() if child.name.isdigit()}
    return versions


def _choose_version(export_dir: Path, model_name: str, version: int | None) -> int:
    existing = _existing_versions(export_dir, model_name)
    if version is None:
        return max(existing, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"export version must be a positive integer, got {version!r}")
    if version in existing:
        raise UserError(
            f"version {version} of {model_name} already exists in {export_dir}; exports never overwrite "
            f"(next free version: {max(existing) + 1})"
        )
    return version


def _publish(staging: Path, final: Path) -> None:
    """Rename a finished staging directory to its version; never onto an existing one."""
    if final.exists():
        raise UserError(f"{final} appeared while exporting (another export running?); export again for the next version")
    staging.rename(final)
    logger.info("wrote %s", final)


def serving_config_text(export_dir: Path) -> str:
    """TF Serving's `--model_config_file` text proto for every SavedModel in `export_dir`."""
    entries = []
    for model_dir in sorted(export_dir.iterdir()) if export_dir.is_dir() else []:
        if model_dir.name in FORMAT_TREES.values() or not model_dir.is_dir():
            continue
        if any(child.name.isdigit() and (child / "saved_model.pb").is_file() for child in model_dir.iterdir()):
            base_path = str(model_dir.resolve()).replace("\\", "\\\\").replace('"', '\\"')
            entries.append(
                f'  config {{\n    name: "{model_dir.name}"\n    base_path: "{base_path}"\n'
                f'    model_platform: "tensorflow"\n  }}\n'
            )
    return "model_config_list {\n" + "".join(entries) + "}\n"


# ----------------------------------------------------------------------------- model and data


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


def _load_eval_set(model: keras.Model, splits: data.DatasetSplits, max_eval_examples: int | None) -> _EvalSet:
    if splits.image_shape != tuple(model.input_shape[1:]):
        raise UserError(
            f"the run's test images are {'x'.join(map(str, splits.image_shape))} but its model takes "
            f"{'x'.join(map(str, model.input_shape[1:]))}; was config.yaml edited?"
        )
    test = splits.test if max_eval_examples is None else splits.test.take(max_eval_examples)
    images, labels = [], []
    for image_batch, label_batch in test.batch(1024):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not images:
        raise UserError("the run's test split is empty: there is nothing to measure the exports on")
    images = np.concatenate(images)
    return _EvalSet(images, np.concatenate(labels).astype(np.int64), predict_probabilities(model, images.astype(np.float32)))


def _calibration_images(splits: data.DatasetSplits) -> np.ndarray:
    """float32 (n, H, W, C) raw training pixels 0..255, the model's own input; n <= CALIBRATION_IMAGES."""
    return np.stack([image.numpy() for image, _ in splits.train.take(CALIBRATION_IMAGES)]).astype(np.float32)


def normalization_statistics(model: keras.Model) -> dict[str, list[float]] | None:
    """Mean and std (0..255 pixel units) of the model's own Normalization layer, if it has one."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer_config = layer.get_config()
            mean = np.ravel(np.asarray(layer_config["mean"], np.float64))
            std = np.sqrt(np.ravel(np.asarray(layer_config["variance"], np.float64)))
            return {"mean": mean.tolist(), "std": std.tolist()}
    return None


def _measured(
    fmt: str,
    quantization: str,
    path: Path,
    probabilities: np.ndarray,
    eval_set: _EvalSet,
    latency_ms: float,
    latency_threads: int,
    notes: str,
) -> ArtefactReport:
    """The report of an artefact whose float32 (N, K) `probabilities` on `eval_set` are measured."""
    keras_probabilities = eval_set.keras_probabilities
    report = ArtefactReport(
        format=fmt,
        quantization=quantization,
        path=path,
        size_bytes=_size_on_disk(path),
        test_accuracy=float(np.mean(probabilities.argmax(1) == eval_set.labels)),
        top1_agreement=float(np.mean(probabilities.argmax(1) == keras_probabilities.argmax(1))),
        max_abs_prob_diff=float(np.max(np.abs(probabilities - keras_probabilities))),
        batch1_latency_ms=latency_ms,
        latency_threads=latency_threads,
        notes=notes,
    )
    logger.info(
        "%s %s: test accuracy %.2f%%, top-1 agreement %.2f%%, max |dp| %.1e, %.2f ms/image, %s",
        fmt, quantization, 100 * report.test_accuracy, 100 * report.top1_agreement,
        report.max_abs_prob_diff, latency_ms, _human_size(report.size_bytes),
    )
    return report


def _cpu_threads() -> int:
    """The threads TensorFlow's and onnxruntime's default pools use: one per usable core."""
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def _median_latency_ms(call: Callable[[], object]) -> float:
    for _ in range(LATENCY_WARMUP):
        call()
    timings = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return 1000 * statistics.median(timings)


# ----------------------------------------------------------------------------- SavedModel


class ServingModule(tf.Module):
    """The SavedModel's root: the float32 model, class names and the two serving signatures."""

    def __init__(self, model: keras.Model, class_names: Sequence[str], labels_file: Path):
        super().__init__(name="classifier")
        self.model = model
        self.labels_file = tf.saved_model.Asset(str(labels_file))  # copied to assets/labels.txt
        self.height, self.width, self.channels = (int(side) for side in model.input_shape[1:])
        self.class_names = tf.constant(list(class_names))
        self.top_k = min(MAX_TOP_K, len(class_names))
        self.serve_bytes = tf.function(
            self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)]
        )
        self.serve_tensor = tf.function(
            self._serve_tensor,
            input_signature=[tf.TensorSpec([None, self.height, self.width, self.channels], tf.uint8, name=IMAGE_TENSOR_INPUT)],
        )

    def _serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """string [batch] of encoded images -> the named outputs."""
        pixels = tf.map_fn(
            self._decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.height, self.width, self.channels], tf.float32),
        )
        return self._outputs(pixels)

    def _serve_tensor(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [batch, H, W, C] -> the named outputs."""
        return self._outputs(tf.cast(images, tf.float32))

    def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """One JPEG/PNG/BMP/GIF -> float32 (H, W, C) whole pixel values, as `data.py` prepares training images.

        Decoded with its own channels (1-4) and converted here, since `decode_image` refuses
        channels=1 for BMP and GIF. Alpha is dropped; RGB -> gray uses ITU-R 601 luma (as
        Pillow and `tf.image.rgb_to_grayscale`); resizing is bilinear and antialiased, and
        skipped at the model's size.
        """
        image = tf.cast(tf.io.decode_image(encoded, channels=0, expand_animations=False), tf.float32)
        has_color = tf.shape(image)[-1] >= 3
        if self.channels == 1:
            image = tf.cond(has_color, lambda: tf.image.rgb_to_grayscale(image[..., :3]), lambda: image[..., :1])
        else:
            image = tf.cond(has_color, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
        at_size = tf.reduce_all(tf.shape(image)[:2] == [self.height, self.width])
        image = tf.cond(
            at_size,
            lambda: image,
            lambda: tf.image.resize(image, (self.height, self.width), method="bilinear", antialias=True),
        )
        image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
        return tf.ensure_shape(image, [self.height, self.width, self.channels])

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.model(pixels, training=False)
        scores, classes = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "classes": classes,
            "labels": tf.gather(self.class_names, classes),
            "scores": scores,
        }


def save_serving_model(model: keras.Model, class_names: Sequence[str], directory: Path) -> None:
    """Write a SavedModel with the `serving_default` and `image_tensor` signatures into `directory`."""
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / "labels.txt"
        labels_file.write_text("\n".join(class_names) + "\n")
        module = ServingModule(model, class_names, labels_file)
        tf.saved_model.save(
            module,
            str(directory),
            signatures={SERVING_SIGNATURE: module.serve_bytes, TENSOR_SIGNATURE: module.serve_tensor},
        )


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes (lossless, so decoding gives the same pixels back)."""
    return tf.io.encode_png(image).numpy()


def write_warmup_requests(directory: Path, model_name: str, encoded_images: Sequence[bytes]) -> Path:
    """`assets.extra/tf_serving_warmup_requests`: TFRecord of PredictionLogs TF Serving replays at load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = directory / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for encoded in encoded_images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE)
            )
            request.inputs[IMAGE_BYTES_INPUT].CopyFrom(tf.make_tensor_proto([encoded], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def _export_saved_model(
    model: keras.Model, class_names: Sequence[str], eval_set: _EvalSet, directory: Path, model_name: str
) -> ArtefactReport:
    save_serving_model(model, class_names, directory)
    encoded = [encode_png(image) for image in eval_set.images]
    write_warmup_requests(directory, model_name, encoded[:WARMUP_IMAGES])
    serve = tf.saved_model.load(str(directory)).signatures[SERVING_SIGNATURE]
    batches = [encoded[start : start + SAVED_MODEL_EVAL_BATCH] for start in range(0, len(encoded), SAVED_MODEL_EVAL_BATCH)]
    probabilities = np.concatenate([serve(**{IMAGE_BYTES_INPUT: tf.constant(batch)})["probabilities"].numpy() for batch in batches])
    single = tf.constant(encoded[:1])
    latency = _median_latency_ms(lambda: serve(**{IMAGE_BYTES_INPUT: single}))
    notes = "serving_default on PNG-encoded test images, TensorFlow's default thread pool on this CPU"
    return _measured("saved_model", "none", directory, probabilities, eval_set, latency, _cpu_threads(), notes)


# ----------------------------------------------------------------------------- TFLite


def convert_to_tflite(
    model: keras.Model, quantization: str, *, arch: str, calibration_images: np.ndarray | None = None
) -> bytes:
    """A TFLite flatbuffer of `model` for one image: float32 raw pixels [1, H, W, C] -> probabilities [1, K].

    Builtin operators only: a model that would need Flex (TensorFlow) ops raises `UserError`.
    `int8` is full-integer (int8 input and output), calibrated on `calibration_images`
    (float32 (N, H, W, C) raw pixels, fed one at a time); `dynamic` stores int8 weights with
    float activations; `float16` stores float16 weights.
    """
    # A fixed batch of 1 keeps every shape static, which mobile delegates want. Converting a
    # Keras model freezes its weights into constants; `from_concrete_functions` with a
    # trackable object keeps them as resource variables that LiteRT leaves uninitialised.
    pixels = keras.Input(batch_shape=(1, *model.input_shape[1:]), name="pixels")
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(pixels, model(pixels)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if calibration_images is None:
            raise ValueError("int8 quantization needs calibration_images")
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    # Not exported under tf.lite in TF 2.21; the converter raises it for unsupported ops.
    from tensorflow.lite.python.convert_phase import ConverterError

    # Keras prints the endpoints of the SavedModel it writes for the converter to stdout
    # unless interactive logging is off (then they go to the absl logger).
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with warnings.catch_warnings():
            # int8 input statistics come from the representative dataset, not from the caller.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            flatbuffer = converter.convert()
    except ConverterError as error:
        flex_ops = sorted(set(FLEX_OP_MESSAGE.findall(str(error))))
        if not flex_ops:
            raise
        raise UserError(f"cannot convert {arch} to TFLite without Flex ops: {', '.join(flex_ops)}") from None
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
    custom = custom_operators(flatbuffer)
    if custom:
        raise UserError(f"cannot convert {arch} to TFLite without Flex ops: {', '.join(custom)}")
    return flatbuffer


def custom_operators(flatbuffer: bytes) -> list[str]:
    """Names of the non-builtin operators (Flex ops are custom ops named Flex*) in a TFLite model."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    names = []
    for index in range(model.OperatorCodesLength()):
        operator = model.OperatorCodes(index)
        # Codes above 127 live in BuiltinCode only; the deprecated int8 field keeps older ones.
        code = max(operator.BuiltinCode(), operator.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            names.append(operator.CustomCode().decode())
    return names


class TFLiteClassifier:
    """A .tflite classifier run with LiteRT (XNNPACK default delegate): uint8 images in, probabilities out."""

    def __init__(self, path: Path, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.num_threads = num_threads
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """uint8 or float (H, W, C) raw pixels -> float32 (K,) (dequantized for int8 outputs)."""
        pixels = image.astype(np.float32)[np.newaxis]
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] == np.int8:
            pixels = np.clip(np.round(pixels / scale + zero_point), -128, 127)
        self.interpreter.set_tensor(self.input["index"], pixels.astype(self.input["dtype"]))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero_point = self.output["quantization"]
        if self.output["dtype"] == np.int8:
            return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return output.astype(np.float32)


def tflite_sidecar(
    classifier: TFLiteClassifier,
    *,
    model_name: str,
    version: int,
    arch: str,
    quantization: str,
    file_name: str,
    class_names: Sequence[str],
    normalization: dict | None,
) -> dict:
    """What an app needs to feed the model and read its output, for the JSON beside the .tflite file."""

    def tensor(details: dict, float_meaning: str, int8_meaning: str) -> dict:
        description = {"shape": [int(side) for side in details["shape"]], "dtype": np.dtype(details["dtype"]).name}
        if details["dtype"] == np.int8:
            scale, zero_point = details["quantization"]
            return {**description, "values": int8_meaning, "scale": float(scale), "zero_point": int(zero_point)}
        return {**description, "values": float_meaning}

    _, height, width, channels = (int(side) for side in classifier.input["shape"])
    int8_input = "int8 raw pixels: q = round(pixel / scale) + zero_point, pixel 0..255"
    int8_output = "int8 probabilities: p = (q - zero_point) * scale"
    return {
        "model": model_name,
        "version": version,
        "arch": arch,
        "quantization": quantization,
        "file": file_name,
        "input": {
            **tensor(classifier.input, "raw pixels 0..255 float32", int8_input),
            "height": height,
            "width": width,
            "channels": channels,
            "color": "grayscale" if channels == 1 else "RGB",
        },
        "normalization_inside": normalization,  # the model computes (pixel - mean) / std itself
        "output": tensor(classifier.output, "probabilities (softmax) float32", int8_output),
        "class_names": list(class_names),
    }


def _export_tflite(
    model: keras.Model,
    class_names: Sequence[str],
    eval_set: _EvalSet,
    directory: Path,
    *,
    model_name: str,
    version: int,
    quantization: str,
    arch: str,
    calibration_images: np.ndarray,
) -> ArtefactReport:
    """`<model_name>_<precision>.tflite` with its .json and .labels.txt, measured with LiteRT."""
    flatbuffer = convert_to_tflite(model, quantization, arch=arch, calibration_images=calibration_images)
    stem = f"{model_name}_{TFLITE_PRECISION_NAMES[quantization]}"
    path = directory / f"{stem}.tflite"
    path.write_bytes(flatbuffer)
    classifier = TFLiteClassifier(path)
    sidecar = tflite_sidecar(
        classifier,
        model_name=model_name,
        version=version,
        arch=arch,
        quantization=quantization,
        file_name=path.name,
        class_names=class_names,
        normalization=normalization_statistics(model),
    )
    (directory / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    (directory / f"{stem}.labels.txt").write_text("\n".join(class_names) + "\n")
    probabilities = np.stack([classifier.probabilities(image) for image in eval_set.images])
    latency = _median_latency_ms(lambda: classifier.probabilities(eval_set.images[0]))
    notes = f"LiteRT interpreter, XNNPACK, {classifier.num_threads} thread(s), batch 1"
    if classifier.input["dtype"] == np.int8:
        scale, zero_point = classifier.input["quantization"]
        notes += f"; int8 input scale {scale:.4g} zero point {zero_point}"
    return _measured("tflite", quantization, path, probabilities, eval_set, latency, classifier.num_threads, notes)


# ----------------------------------------------------------------------------- ONNX


def _export_onnx(model: keras.Model, eval_set: _EvalSet, directory: Path, model_name: str) -> ArtefactReport:
    """tf2onnx conversion of the raw-pixel model, run with onnxruntime (installed separately)."""
    import onnxruntime
    import tf2onnx

    height, width, channels = (int(side) for side in model.input_shape[1:])
    signature = [tf.TensorSpec([None, height, width, channels], tf.float32, name="pixels")]
    forward = tf.function(lambda pixels: model(pixels, training=False), input_signature=signature)
    path = directory / f"{model_name}.onnx"
    tf2onnx.convert.from_function(forward, input_signature=signature, output_path=str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _cpu_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    pixels = eval_set.images.astype(np.float32)
    batches = [pixels[start : start + SAVED_MODEL_EVAL_BATCH] for start in range(0, len(pixels), SAVED_MODEL_EVAL_BATCH)]
    probabilities = np.concatenate([session.run(None, {input_name: batch})[0] for batch in batches])
    latency = _median_latency_ms(lambda: session.run(None, {input_name: pixels[:1]}))
    return _measured(
        "onnx", "none", path, probabilities, eval_set, latency, options.intra_op_num_threads, "onnxruntime CPUExecutionProvider"
    )


# ----------------------------------------------------------------------------- files


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _human_size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.1f} KB"
    return f"{size_bytes / 1024**2:.1f} MB"

