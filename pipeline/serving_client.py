"""A TF Serving client for image files: top-k labels from a model exported by `pipeline.export`.

The files' encoded bytes go to the server as they are; the SavedModel's `serving_default`
signature decodes, converts and resizes them itself. Two transports, chosen by the URL:

    http://HOST:8501   REST: POST /v1/models/NAME:predict
                       {"signature_name": ..., "instances": [{"image_bytes": {"b64": ...}}, ...]}
                       -> {"predictions": [{"labels": [...], "scores": [...], ...}, ...]}
                       (TF Serving's row format; {"b64": ...} marks binary strings)
    grpc://HOST:8500   gRPC: PredictionService.Predict (tensorflow-serving-api), a string
                       tensor [batch] in, the `labels` and `scores` tensors [batch, k] out

REST needs only the standard library; gRPC imports grpc and TensorFlow (for its tensor protos)
when it is used. A server that cannot be reached or answers with an error is a `UserError`, in
one line.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from architectures.errors import UserError
from pipeline.image_files import image_files
from pipeline.serving_signatures import IMAGE_BYTES_INPUT, SERVING_SIGNATURE

logger = logging.getLogger(__name__)

REQUEST_BATCH = 32  # images per request: small requests stay under gRPC's 4 MB default message limit
Prediction = tuple[str, list[tuple[str, float]]]  # (file, [(class name, probability), ...] best first)


def predict_with_server(
    url: str,
    image_paths: Sequence[str | Path],
    *,
    model_name: str,
    signature: str = SERVING_SIGNATURE,
    top_k: int = 3,
    timeout: float = 10.0,
) -> list[Prediction]:
    """Top-k (class name, probability) per image file (folders: their images, sorted) from TF Serving.

    `url` is `http(s)://host:port` (REST) or `grpc://host:port`; `top_k` is capped at the
    k = min(5, K) labels the exported signature returns; `timeout` is seconds per request.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        send = _predict_rest
    elif parts.scheme == "grpc" and parts.netloc:
        send = _predict_grpc
    else:
        raise UserError(f"server URL must be http://HOST:PORT (REST, TF Serving's 8501) or grpc://HOST:PORT (8500); got {url!r}")
    files = image_files(image_paths)
    results: list[Prediction] = []
    for start in range(0, len(files), REQUEST_BATCH):
        batch = files[start : start + REQUEST_BATCH]
        rows = send(url, [file.read_bytes() for file in batch], model_name=model_name, signature=signature, timeout=timeout)
        for file, (labels, scores) in zip(batch, rows):
            results.append((str(file), [(label, float(score)) for label, score in list(zip(labels, scores))[:top_k]]))
    return results


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- REST


def _predict_rest(
    url: str, encoded_images: list[bytes], *, model_name: str, signature: str, timeout: float
) -> list[tuple[list[str], list[float]]]:
    """One REST predict call: (labels, scores) per image, best first."""
    endpoint = f"{url.rstrip('/')}/v1/models/{urllib.parse.quote(model_name, safe='')}:predict"
    body = {
        "signature_name": signature,
        "instances": [{IMAGE_BYTES_INPUT: {"b64": base64.b64encode(encoded).decode("ascii")}} for encoded in encoded_images],
    }
    request = urllib.request.Request(
        endpoint, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    logger.debug("POST %s (%d images)", endpoint, len(encoded_images))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as error:
        raise UserError(
            f"TF Serving at {url} answered HTTP {error.code} for model {model_name!r}: {_rest_error(error)}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot reach TF Serving at {url}: {_one_line(str(reason))}") from None
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or len(predictions) != len(encoded_images):
        raise UserError(f"TF Serving at {url} answered without one prediction per image: {_one_line(str(payload))[:200]}")
    return [_labels_and_scores(row, url, signature) for row in predictions]


def _rest_error(error: urllib.error.HTTPError) -> str:
    """TF Serving's {"error": "..."} text, else the body's start."""
    text = error.read().decode("utf-8", "replace")
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    return _one_line(str(text))[:300] or error.reason


def _labels_and_scores(row: object, url: str, signature: str) -> tuple[list[str], list[float]]:
    if not isinstance(row, dict) or "labels" not in row or "scores" not in row:
        raise UserError(
            f"signature {signature!r} at {url} has no 'labels' and 'scores' outputs; "
            "serve a SavedModel from 'run_pipeline.py export'"
        )
    return [str(label) for label in row["labels"]], [float(score) for score in row["scores"]]


# ----------------------------------------------------------------------------- gRPC


def _predict_grpc(
    url: str, encoded_images: list[bytes], *, model_name: str, signature: str, timeout: float
) -> list[tuple[list[str], list[float]]]:
    """One gRPC Predict call: (labels, scores) per image, best first."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs[IMAGE_BYTES_INPUT].CopyFrom(tf.make_tensor_proto(encoded_images, dtype=tf.string))
    target = urllib.parse.urlsplit(url).netloc
    logger.debug("gRPC Predict to %s (%d images)", target, len(encoded_images))
    with grpc.insecure_channel(target) as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            code, details = error.code(), _one_line(error.details() or "")
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UserError(f"cannot reach TF Serving at {url}: {code.name}: {details}") from None
            raise UserError(f"TF Serving at {url} answered {code.name} for model {model_name!r}: {details}") from None
    if "labels" not in response.outputs or "scores" not in response.outputs:
        raise UserError(
            f"signature {signature!r} at {url} has no 'labels' and 'scores' outputs; "
            "serve a SavedModel from 'run_pipeline.py export'"
        )
    labels = tf.make_ndarray(response.outputs["labels"])
    scores = tf.make_ndarray(response.outputs["scores"])
    return [
        ([label.decode("utf-8") for label in label_row], [float(score) for score in score_row])
        for label_row, score_row in zip(labels, scores)
    ]
