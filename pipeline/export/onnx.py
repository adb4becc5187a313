"""ONNX: the float32 model converted with tf2onnx and run with onnxruntime.

The graph takes raw pixels, uint8 [batch, H, W, C] named `images` (the SavedModel's
`image_tensor` input; normalisation is inside), and returns `probabilities` float32 [batch, K];
the batch dimension is dynamic (`batch`). The model's metadata (`custom_metadata_map` in
onnxruntime) holds the class names, the input description and the normalisation as JSON.

Exact GELU (ConvNeXt, ViT, ResMLP) is `0.5 x erfc(-x / sqrt 2)` in TensorFlow, and tf2onnx has
no converter for `Erfc`; ONNX's own `Gelu` needs opset 20, beyond tf2onnx 1.17's 18. The
conversion rewrites `Erfc(x)` as `1 - Erf(x)`, the same function: float32 rounding moves a GELU
output by at most |x| * 1.2e-7 (measured on [-10, 10]); the tanh approximation would move it by
up to 4.7e-4.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.export.measure import (
    ArtefactReport,
    EvalSet,
    cpu_threads,
    measured,
    median_latency_ms,
    normalization_statistics,
)
from pipeline.serving_signatures import IMAGE_TENSOR_INPUT

OPSET = 18  # the newest tf2onnx 1.17 writes; 17+ lets it fuse LayerNormalization into one op
OUTPUT_NAME = "probabilities"
BATCH_DIMENSION = "batch"


def convert_to_onnx(model: keras.Model, metadata: dict[str, object]):
    """An `onnx.ModelProto` of `model`: uint8 raw pixels [batch, H, W, C] -> probabilities [batch, K].

    `metadata` values are stored as strings in the model's metadata (JSON where not a string).
    """
    import onnx
    import tf2onnx

    height, width, channels = (int(side) for side in model.input_shape[1:])
    signature = [tf.TensorSpec([None, height, width, channels], tf.uint8, name=IMAGE_TENSOR_INPUT)]
    forward = tf.function(
        lambda images: {OUTPUT_NAME: model(tf.cast(images, tf.float32), training=False)}, input_signature=signature
    )
    concrete = forward.get_concrete_function()
    # `tf2onnx.convert.from_function` would make every captured tensor a graph input too (the
    # Normalization layer's mean and variance); freezing turns them into constants.
    captured = {tensor.name for tensor in concrete.graph.internal_captures}
    input_names = [tensor.name for tensor in concrete.inputs if tensor.name not in captured]
    output_names = [tensor.name for tensor in concrete.outputs]
    # tf2onnx logs every rewrite at INFO and its own version banner; keep the export's log readable.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    model_proto, _ = tf2onnx.convert.from_graph_def(
        tf2onnx.tf_loader.from_function(concrete, input_names, output_names),
        input_names=input_names,
        output_names=output_names,
        tensors_to_rename=tf2onnx.convert.tensor_names_from_structed(concrete, input_names, output_names),
        opset=OPSET,
        custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
    )
    _name_batch_dimension(model_proto)
    onnx.helper.set_model_props(
        model_proto, {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    )
    onnx.checker.check_model(model_proto)
    return model_proto


def _erfc_as_one_minus_erf(ctx, node, name, args) -> None:
    """tf2onnx handler: the TensorFlow node `Erfc(x)` becomes the ONNX nodes `1 - Erf(x)`."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{name}_one_minus"),
                                  inputs=[one.output[0], node.output[0]])  # fmt: skip


def _name_batch_dimension(model_proto) -> None:
    """tf2onnx names the unknown batch dimension `unk__N` (another N on the input and the output);
    call it `batch` wherever it appears."""
    graph = model_proto.graph
    generated = {value.type.tensor_type.shape.dim[0].dim_param for value in [*graph.input, *graph.output]} - {""}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dimension in value.type.tensor_type.shape.dim:
            if dimension.dim_param in generated:
                dimension.dim_param = BATCH_DIMENSION


class OnnxClassifier:
    """An .onnx classifier in onnxruntime (CPU): uint8 images [N, H, W, C] in, probabilities [N, K] out."""

    def __init__(self, path: Path, num_threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        self.num_threads = num_threads or cpu_threads()
        options.intra_op_num_threads = self.num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {IMAGE_TENSOR_INPUT: images.astype(np.uint8)})[0]


def onnx_metadata(
    model: keras.Model, *, model_name: str, version: int, arch: str, class_names: Sequence[str]
) -> dict[str, object]:
    """What an app needs to feed the model and read its output, for the ONNX model's metadata."""
    height, width, channels = (int(side) for side in model.input_shape[1:])
    return {
        "model": model_name,
        "version": str(version),
        "arch": arch,
        "input": f"{IMAGE_TENSOR_INPUT}: uint8 raw pixels 0..255 [batch, {height}, {width}, {channels}], "
        f"{'grayscale' if channels == 1 else 'RGB'}",
        "normalization_inside": normalization_statistics(model),  # the model computes (pixel - mean) / std itself
        "output": f"{OUTPUT_NAME}: float32 softmax [batch, {int(model.output_shape[-1])}]",
        "class_names": list(class_names),
    }


def export_onnx(
    model: keras.Model,
    class_names: Sequence[str],
    eval_set: EvalSet,
    directory: Path,
    *,
    model_name: str,
    version: int,
    arch: str,
) -> ArtefactReport:
    """`<model_name>.onnx` in `directory`, measured with onnxruntime."""
    metadata = onnx_metadata(model, model_name=model_name, version=version, arch=arch, class_names=class_names)
    path = directory / f"{model_name}.onnx"
    path.write_bytes(convert_to_onnx(model, metadata).SerializeToString())
    classifier = OnnxClassifier(path)
    first_image = eval_set.first_images(1)
    latency = median_latency_ms(lambda: classifier.probabilities(first_image))
    notes = f"onnxruntime CPUExecutionProvider, opset {OPSET}, uint8 pixels in"
    return measured("onnx", "none", path, classifier.probabilities, eval_set, latency, classifier.num_threads, notes)
