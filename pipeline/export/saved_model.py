"""The TF Serving SavedModel: a `tf.Module` whose signatures decode encoded images themselves.

Built from `tf.Module` + `tf.function` signatures and `tf.saved_model.save` rather than Keras's
`model.export`, whose endpoints return the model's own outputs only, not decoding plus several
named outputs:
    serving_default  image_bytes: string [batch] of encoded JPEG/PNG/BMP/GIF, sent over REST as
                     {"b64": ...}; the `_bytes` suffix marks binary data to REST clients
    image_tensor     images: uint8 [batch, H, W, C]
    outputs          probabilities float32 [batch, K], classes int32 [batch, k] (top-k indices,
                     k = min(5, K)), labels string [batch, k], scores float32 [batch, k]
`assets.extra/tf_serving_warmup_requests` holds a few real test images, which TF Serving
replays through the model before it serves the version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import data
from pipeline.export.measure import ArtefactReport, EvalSet, cpu_threads, measured, median_latency_ms
from pipeline.serving_signatures import IMAGE_BYTES_INPUT, IMAGE_TENSOR_INPUT, MAX_TOP_K, SERVING_SIGNATURE, TENSOR_SIGNATURE

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # inside a version directory
WARMUP_IMAGES = 3  # test images in the TF Serving warmup file


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
        """One JPEG/PNG/GIF/BMP/WebP -> float32 (H, W, C) pixels, by the decoder training uses (`data.decode_image`).

        A client sends upright images: EXIF orientation is read by Pillow on the client's side
        (`predict` does), not in the graph.
        """
        return tf.cast(data.decode_image(encoded, (self.height, self.width, self.channels)), tf.float32)

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

    path = directory / WARMUP_FILE
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


def export_saved_model(
    model: keras.Model, class_names: Sequence[str], eval_set: EvalSet, directory: Path, model_name: str
) -> ArtefactReport:
    """The SavedModel and its warmup records in `directory`, measured through `serving_default` on PNG bytes."""
    save_serving_model(model, class_names, directory)
    write_warmup_requests(directory, model_name, [encode_png(image) for image in eval_set.first_images(WARMUP_IMAGES)])
    serve = tf.saved_model.load(str(directory)).signatures[SERVING_SIGNATURE]

    def predict(images: np.ndarray) -> np.ndarray:
        encoded = tf.constant([encode_png(image) for image in images])
        return serve(**{IMAGE_BYTES_INPUT: encoded})["probabilities"].numpy()

    single = tf.constant([encode_png(eval_set.first_images(1)[0])])
    latency = median_latency_ms(lambda: serve(**{IMAGE_BYTES_INPUT: single}))
    notes = "serving_default on PNG-encoded test images, TensorFlow's default thread pool on this CPU"
    return measured("saved_model", "none", directory, predict, eval_set, latency, cpu_threads(), notes)
