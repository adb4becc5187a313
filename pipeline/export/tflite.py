"""TFLite models for phones: one raw-pixel image [1, H, W, C] in (float32 0..255, or int8 for
full-integer quantization), probabilities out, builtin operators only, so the stock LiteRT
runtime runs them; each written with a `.labels.txt` and a `.json` sidecar and run with LiteRT."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline import data
from pipeline.export.measure import ArtefactReport, EvalSet, measured, median_latency_ms, normalization_statistics

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_PRECISION_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic_int8", "int8": "int8"}
CALIBRATION_IMAGES = 200  # training images for int8 ranges; TFLite's guide suggests ~100-500
FLEX_OP_MESSAGE = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


def calibration_images(splits: data.DatasetSplits) -> np.ndarray:
    """float32 (n, H, W, C) raw training pixels 0..255, the model's own input; n <= CALIBRATION_IMAGES."""
    return np.stack([image.numpy() for image, _ in splits.train.take(CALIBRATION_IMAGES)]).astype(np.float32)


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


def export_tflite(
    model: keras.Model,
    class_names: Sequence[str],
    eval_set: EvalSet,
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
    first_image = eval_set.first_images(1)[0]
    latency = median_latency_ms(lambda: classifier.probabilities(first_image))
    notes = f"LiteRT interpreter, XNNPACK, {classifier.num_threads} thread(s), batch 1"
    if classifier.input["dtype"] == np.int8:
        scale, zero_point = classifier.input["quantization"]
        notes += f"; int8 input scale {scale:.4g} zero point {zero_point}"

    def predict(images: np.ndarray) -> np.ndarray:
        return np.stack([classifier.probabilities(image) for image in images])

    return measured("tflite", quantization, path, predict, eval_set, latency, classifier.num_threads, notes)
