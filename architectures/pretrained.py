"""keras.applications' published ImageNet weights: which file, where it lives, and its input convention.

`weights="imagenet"` resolves to the file keras.applications itself would download, under its
own name, in Keras's cache (`$KERAS_HOME/models/`, default `~/.keras/models/`); a missing file is
fetched with `keras.utils.get_file` from keras.applications' URL with its hash check
(`keras/src/applications/*.py`: WEIGHTS_PATH, WEIGHTS_HASHES, file_hash). A model built from such
a file carries the preprocessing its weights were trained with, so it takes raw 0..255 pixels
(as keras.applications' ConvNeXt does with `include_preprocessing=True`):
- "caffe" (ResNet, VGG): RGB -> BGR, minus the ImageNet mean in 0..255;
- "tf" (MobileNet v1/v2, Xception): x / 127.5 - 1;
- "torch" (DenseNet; ConvNeXt's built-in `Normalization` has the same numbers): x / 255, minus
  the mean, over the standard deviation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from architectures.errors import UserError

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
IMAGENET_CLASSES = 1000  # the published heads' width
BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
PREPROCESSING_LAYER = "imagenet_preprocessing"

# imagenet_utils.preprocess_input's constants.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PublishedWeights:
    """One variant's files: `{side}` and `{alpha}` filled as keras.applications fills them."""

    preprocessing: str  # "caffe", "tf" or "torch"
    folder: str  # under BASE_URL
    top_file: str  # with the 1000-class head
    notop_file: str  # the backbone only
    hashes: tuple[str, str] | None = None  # (top, notop) for get_file; keras's MobileNets have none
    alpha_text: dict[float, str] = field(default_factory=dict)  # published width multipliers -> file spelling
    sides: tuple[int, ...] = ()  # input sides with their own file; any other side uses 224's


def _standard(variant: str, preprocessing: str, folder: str, hashes: tuple[str, str]) -> PublishedWeights:
    stem = f"{variant}_weights_tf_dim_ordering_tf_kernels"
    return PublishedWeights(preprocessing, folder, f"{stem}.h5", f"{stem}_notop.h5", hashes)


_MOBILENET_V1_SIDES = (128, 160, 192, 224)
_MOBILENET_V2_SIDES = (96, 128, 160, 192, 224)
_MOBILENET_V2_ALPHAS = {alpha: str(alpha) for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
_MOBILENET_V2_STEM = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"

PUBLISHED: dict[str, PublishedWeights] = {
    "resnet50": _standard("resnet50", "caffe", "resnet/", ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626")),
    "resnet101": _standard("resnet101", "caffe", "resnet/", ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21")),
    "resnet152": _standard("resnet152", "caffe", "resnet/", ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c")),
    "vgg16": _standard("vgg16", "caffe", "vgg16/", ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc")),
    "vgg19": _standard("vgg19", "caffe", "vgg19/", ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6")),
    "densenet121": _standard("densenet121", "torch", "densenet/", ("9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738")),
    "densenet169": _standard("densenet169", "torch", "densenet/", ("d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b")),
    "densenet201": _standard("densenet201", "torch", "densenet/", ("1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1")),
    "xception": _standard("xception", "tf", "xception/", ("0a58e3b7378bc2990ea3b43d5981f1f6", "b0042744bf5b25fce3cb969f33bebb97")),
    "mobilenet_v1": PublishedWeights(
        "tf", "mobilenet/", "mobilenet_{alpha}_{side}_tf.h5", "mobilenet_{alpha}_{side}_tf_no_top.h5",
        alpha_text={1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}, sides=_MOBILENET_V1_SIDES,
    ),
    "mobilenet_v2": PublishedWeights(
        "tf", "mobilenet_v2/", f"{_MOBILENET_V2_STEM}_{{alpha}}_{{side}}.h5", f"{_MOBILENET_V2_STEM}_{{alpha}}_{{side}}_no_top.h5",
        alpha_text=_MOBILENET_V2_ALPHAS, sides=_MOBILENET_V2_SIDES,
    ),
    "convnext_tiny": PublishedWeights("torch", "convnext/", "convnext_tiny.h5", "convnext_tiny_notop.h5", (
        "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1")),
    "convnext_small": PublishedWeights("torch", "convnext/", "convnext_small.h5", "convnext_small_notop.h5", (
        "ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c",
        "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab")),
    "convnext_base": PublishedWeights("torch", "convnext/", "convnext_base.h5", "convnext_base_notop.h5", (
        "52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6",
        "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45")),
    "convnext_large": PublishedWeights("torch", "convnext/", "convnext_large.h5", "convnext_large_notop.h5", (
        "070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6",
        "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd")),
}  # fmt: skip


def check_imagenet(name: str, options: dict[str, Any]) -> PublishedWeights:
    """The published entry for `name` with these options, else `UserError` naming what exists."""
    published = PUBLISHED.get(name)
    if published is None:
        raise UserError(f"keras.applications publishes no ImageNet weights for {name}; it does for: {', '.join(PUBLISHED)}")
    if published.alpha_text:
        alpha = options.get("alpha", 1.0)
        if alpha not in published.alpha_text:
            allowed = ", ".join(f"{value:g}" for value in published.alpha_text)
            raise UserError(f"{name} ImageNet weights exist for alpha {allowed}; got alpha={alpha!r}")
    return published


def file_name(name: str, *, include_top: bool, options: dict[str, Any], image_side: int) -> str:
    """keras.applications' file name; MobileNets at a side without a file of their own use 224's, as it does."""
    published = check_imagenet(name, options)
    template = published.top_file if include_top else published.notop_file
    side = image_side if image_side in published.sides else 224
    alpha = published.alpha_text.get(options.get("alpha", 1.0), "")
    return template.format(alpha=alpha, side=side)


def keras_cache_dir() -> Path:
    """`$KERAS_HOME/models`, read now (keras reads KERAS_HOME once, at import)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def imagenet_file(name: str, *, include_top: bool, options: dict[str, Any], image_side: int) -> str:
    """The cached file keras.applications would load, downloaded with its hash check when missing.

    A cached file is used as it is (placed by hand, or by keras.applications itself). Without it
    and without network access: `UserError` naming the file, the directory and the URL.
    """
    published = check_imagenet(name, options)
    fname = file_name(name, include_top=include_top, options=options, image_side=image_side)
    cache_dir = keras_cache_dir()
    cached = cache_dir / fname
    if cached.is_file():
        logger.info("ImageNet weights for %s: %s", name, cached)
        return str(cached)
    url = BASE_URL + published.folder + fname
    file_hash = None if published.hashes is None else published.hashes[0 if include_top else 1]
    logger.info("downloading %s to %s", url, cache_dir)
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models", cache_dir=str(cache_dir.parent), file_hash=file_hash)
    except Exception as error:  # get_file raises a bare Exception: "URL fetch failure on URL: errno -- reason"
        reason = str(error).strip().splitlines()[0].rsplit(" -- ", 1)[-1] if str(error).strip() else type(error).__name__
        raise UserError(
            f"ImageNet weights {fname} are not in {cache_dir} and could not be downloaded ({reason}); "
            f"fetch {url} into {cache_dir}/"
        ) from None


def is_keras_applications_file(weights_path: str | None) -> bool:
    """keras.applications' files are the legacy `.h5` layout; ours are `.weights.h5` and `.keras`."""
    return weights_path is not None and weights_path.endswith(".h5") and not weights_path.endswith(".weights.h5")


def preprocessing_for(name: str, weights: str | None) -> str | None:
    """The mode a model built from `weights` takes raw pixels through; None: the caller normalises."""
    published = PUBLISHED.get(name)
    if published is None or not (weights == IMAGENET or is_keras_applications_file(weights)):
        return None
    return published.preprocessing


@keras.saving.register_keras_serializable(package="convnets")
class ImageNetPreprocessing(keras.layers.Layer):
    """(batch, H, W, 3) raw 0..255 RGB -> the same shape as the weights' training saw it.

    Float32 whatever the policy: in bfloat16 the caffe mean 123.68 would round to 124.
    """

    def __init__(self, mode: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch"):
            raise UserError(f"preprocessing mode must be 'caffe', 'tf' or 'torch', got {mode!r}")
        self.mode = mode
        if mode == "caffe":
            self.offset, self.scale = -np.asarray(CAFFE_BGR_MEAN, "float32"), np.ones(3, "float32")
        elif mode == "tf":
            self.offset, self.scale = np.full(3, -127.5, "float32"), np.full(3, 1 / 127.5, "float32")
        else:
            self.offset = -255.0 * np.asarray(TORCH_MEAN, "float32")
            self.scale = 1.0 / (255.0 * np.asarray(TORCH_STD, "float32"))

    def call(self, images):
        if self.mode == "caffe":
            images = keras.ops.flip(images, axis=-1)  # RGB -> BGR
        return (images + self.offset) * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
