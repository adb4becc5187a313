"""What every source produces: three `Split`s of cheap records and the function that decodes them.

A split keeps its records (file paths, encoded bytes or small in-memory pixels) apart from
decoding, so the training pipeline can shuffle, shard per worker and skip on records, and
decode only what this worker trains on now.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline.config import DataConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_SIDE = 224  # pixels, when data.image_size is unset and the source's images vary in size

Decode = Callable[..., tuple[tf.Tensor, tf.Tensor]]  # *record -> (uint8 (H, W, C), int64 label)
ImageConverter = Callable[[tf.Tensor], tf.Tensor]


def _keep(*record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return record[0], record[1]


@dataclass(frozen=True)
class Split:
    """One split: records in a fixed order, and how to decode one into `(uint8 image, int64 label)`."""

    records: tf.data.Dataset
    size: int
    decode: Decode = _keep  # the default: records already are (image, label)
    # True when a whole-split shuffle buffer of records is cheap (paths, indices); False when
    # records are pixels or encoded bytes, which then shuffle in `data.shuffle_buffer`.
    small_records: bool = False
    # Identifies the decoded contents for a disk cache (source, files, sizes); None: not cacheable.
    fingerprint: str | None = None
    # Per-worker records that read only this worker's files (TFDS); None: every n-th record.
    records_for_worker: Callable[[tf.distribute.InputContext], tf.data.Dataset] | None = None

    def images(self) -> tf.data.Dataset:
        """Decoded `(uint8 image, int64 label)` in the records' order."""
        return self.decoded(self.records)

    def decoded(self, records: tf.data.Dataset) -> tf.data.Dataset:
        """`records` (this split's, or some of them) decoded to `(uint8 image, int64 label)`, in order."""
        if self.decode is _keep:
            return records
        return records.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)

    def head(self, count: int) -> Split:
        """The first `count` records (all when there are fewer), decoded alike."""
        return dataclasses.replace(
            self, records=self.records.take(count), size=min(count, self.size), fingerprint=None, records_for_worker=None
        )

    def worker_records(self, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        if input_context is None or input_context.num_input_pipelines == 1:
            return self.records
        if self.records_for_worker is not None:
            return self.records_for_worker(input_context)
        return self.records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


@dataclass(frozen=True)
class DatasetSplits:
    """Three splits of `(uint8 (H, W, C), int64 label)`, in a fixed order."""

    splits: dict[str, Split]  # "train", "validation", "test"; train not shuffled
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) of every image
    source: str  # one line for the log, e.g. "Fashion-MNIST IDX files in /usr/share/..."
    skipped: dict[str, int]  # folder sources: reason -> files skipped; empty otherwise
    cache: str = "memory"  # how decoded images are kept: "memory", "disk" or "none" (see cache.py)
    cache_reason: str = ""  # why, for the log

    @property
    def num_examples(self) -> dict[str, int]:
        return {role: split.size for role, split in self.splits.items()}

    @property
    def train(self) -> tf.data.Dataset:
        return self.splits["train"].images()

    @property
    def validation(self) -> tf.data.Dataset:
        return self.splits["validation"].images()

    @property
    def test(self) -> tf.data.Dataset:
        return self.splits["test"].images()


def holdout_size(count: int, fraction: float) -> int:
    return int(count * fraction + 0.5)


def capped(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


def target_shape(
    source_shape: tuple[int | None, int | None, int | None], config: DataConfig, name: str
) -> tuple[int, int, int]:
    """(H, W, C) after `data.image_size` and `data.channels`; sources of varying size default to 224 px."""
    height, width, channels = source_shape
    if config.image_size is not None:
        height = width = config.image_size
    elif height is None or width is None:
        height = width = DEFAULT_SIDE
        logger.info("%s: images vary in size; resizing to %d px (set data.image_size to choose)", name, height)
    if channels not in (1, 3):
        raise UserError(f"{name} has {channels}-channel images; only 1 (grayscale) or 3 (RGB) are supported")
    return height, width, config.channels or channels


def image_converter(
    source_shape: tuple[int | None, int | None, int], target_shape: tuple[int, int, int]
) -> ImageConverter:
    """uint8 (h, w, c) -> uint8 `target_shape`: bilinear resize (antialiased) and 1 <-> 3 channels."""
    height, width, channels = target_shape
    needs_resize = tuple(source_shape[:2]) != (height, width)
    source_channels = source_shape[2]

    def convert(image: tf.Tensor) -> tf.Tensor:
        if not needs_resize and source_channels == channels:
            return image
        pixels = tf.cast(image, tf.float32)
        if source_channels == 3 and channels == 1:
            pixels = tf.image.rgb_to_grayscale(pixels)  # before resizing: a third of the work
        if needs_resize:
            pixels = tf.image.resize(pixels, (height, width), method="bilinear", antialias=True)
        if source_channels == 1 and channels == 3:
            pixels = tf.image.grayscale_to_rgb(pixels)
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(pixels, target_shape)

    return convert


def array_split(images: np.ndarray, labels: np.ndarray, converter: ImageConverter | None, fingerprint: str | None = None) -> Split:
    """(N, h, w, c) uint8 and (N,) labels in memory -> a Split (converted to the target shape on decode)."""
    records = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
    if converter is None:
        return Split(records, len(labels), fingerprint=fingerprint)
    return Split(records, len(labels), decode=lambda image, label: (converter(image), label), fingerprint=fingerprint)


def empty_split(image_shape: tuple[int, int, int]) -> Split:
    return array_split(np.zeros((0, *image_shape), np.uint8), np.zeros((0,), np.int64), None)
