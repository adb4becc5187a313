"""The `tf.data` pipelines that feed the model: training epochs, evaluation shares, and the
channel statistics.

A training epoch works on a split's records (paths, indices or in-memory pixels) for as long as
it can: shuffle, shard per worker and skip what a resumed epoch already trained on, and only
then decode, in parallel, what this worker trains on. Batches come out as they were decoded,
`(uint8 images (B, H, W, C), int64 labels (B,))`, and the train step converts them with
`model_inputs`; an augmentation works on floats, so augmented batches come out converted,
`(float32 images 0..255, float32 one-hot labels (B, num_classes))`. Evaluation
likewise decodes on each worker only that worker's share of the records.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from pipeline.config import DataConfig
from pipeline.data.splits import Split

Augment = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
EpochPipeline = Callable[[int, int, "tf.distribute.InputContext | None"], tf.data.Dataset]


def epoch_pipelines(
    split: Split,
    config: DataConfig,
    *,
    global_batch_size: int,
    seed: int,
    augment: Augment | None,
    num_classes: int,
    in_memory: bool,
) -> EpochPipeline:
    """`make(epoch, skip_batches, input_context)`: epoch `epoch`'s batches, resumable.

    Each epoch shuffles with its own seed (`seed * 1000 + epoch`), so epoch k's order is the
    same after a resume, and `skip_batches` skips what a resumed epoch already trained on.
    With `input_context` (`distribute_datasets_from_function`) a worker reads its own shard
    and yields per-replica batches. `in_memory` keeps each worker's decoded shard after its
    first epoch (`data.cache: memory`); otherwise records are decoded every epoch.
    """
    sources: dict[tuple[int, int], tf.data.Dataset] = {}

    def source(input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        """This worker's records, or its decoded shard cached once (the same object every epoch)."""
        key = (input_context.num_input_pipelines, input_context.input_pipeline_id) if input_context else (1, 0)
        if key not in sources:
            records = split.worker_records(input_context)
            sources[key] = records.map(split.decode, num_parallel_calls=tf.data.AUTOTUNE).cache() if in_memory else records
        return sources[key]

    def make(epoch: int, skip_batches: int, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        return train_pipeline(
            split,
            config,
            global_batch_size=global_batch_size,
            seed=seed * 1_000 + epoch,
            augment=augment,
            num_classes=num_classes,
            input_context=input_context,
            skip_batches=skip_batches,
            source=source(input_context),
            decoded=in_memory,
        )

    return make


def train_pipeline(
    split: Split,
    config: DataConfig,
    *,
    global_batch_size: int,
    seed: int,
    augment: Augment | None = None,
    num_classes: int,
    input_context: tf.distribute.InputContext | None = None,
    skip_batches: int = 0,
    source: tf.data.Dataset | None = None,
    decoded: bool = False,
) -> tf.data.Dataset:
    """One epoch of `split` in batches; reshuffled (seeded) on every iteration.

    The last partial batch is dropped so every replica gets equal batches. `source` is this
    worker's records (default: `split.worker_records(input_context)`), or with `decoded` its
    already decoded images. `augment(images, one_hot_labels)` runs on whole batches.
    """
    options = tf.data.Options()
    options.deterministic = config.deterministic
    # No autotune model thread: on TF 2.21 it sometimes is not woken when the epoch's iterator
    # is destroyed, which then blocks for the rest of its optimisation period (up to 60 s; 28-39 s
    # with zero CPU measured at the end of 50-s epochs, in about half of them). AUTOTUNE
    # parallelism then stays at the number of cores, which is what it tunes towards on a
    # training machine anyway.
    options.autotune.enabled = False
    if input_context is None:  # a strategy given this dataset whole shards it by element
        batch_size = global_batch_size
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    else:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = split.worker_records(input_context) if source is None else source
    # Paths and indices are cheap: shuffle the whole split. Pixels and encoded bytes use the
    # configured buffer.
    buffer = max(split.size, 1) if split.small_records and not decoded else config.shuffle_buffer
    dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if skip_batches:
        dataset = dataset.skip(skip_batches * batch_size)  # before decoding: a resumed epoch skips for free
    if not decoded:
        dataset = dataset.map(split.decode, num_parallel_calls=tf.data.AUTOTUNE)
    if split.records_for_worker is not None and input_context is not None and input_context.num_input_pipelines > 1:
        # Workers reading whole files get unequal shares; each still runs every step of the epoch.
        dataset = dataset.repeat()
    # Batching stays sequential: parallel batching took threads from the decoding map (13% fewer
    # images/s streaming 256 -> 224 px JPEGs on 2 cores).
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if augment is not None:
        dataset = dataset.map(lambda images, labels: model_inputs(images, labels, num_classes), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    # Without augmentation, batches stay uint8 until the train step: a float32 copy of every batch
    # in the pipeline cost 6-9% of the streamed rate (224 px, 2 cores), and it is 4x the bytes to
    # hand to an accelerator.
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def model_inputs(images: tf.Tensor, labels: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch as the model trains on it, `(float32 images 0..255, float32 one-hot labels)`, from
    uint8 images and integer labels; already converted parts pass through."""
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    if labels.dtype.is_integer:
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return images, labels


class EvaluationImages:
    """A split to evaluate, decoded per input pipeline: pipeline i of n reads and decodes only
    records i, i + n, ... (never whole files per worker, as TFDS training does), so the shares
    differ by at most one example and their sizes are known without reading them."""

    def __init__(self, split: Split, in_memory: bool):
        self.split = split
        self.in_memory = in_memory
        self._shares: dict[tuple[int, int], tf.data.Dataset] = {}  # (pipelines, pipeline id) -> its share

    @property
    def size(self) -> int:
        return self.split.size

    def share_size(self, input_context: tf.distribute.InputContext) -> int:
        return len(range(input_context.input_pipeline_id, self.size, input_context.num_input_pipelines))

    def share(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This pipeline's `(uint8 image, int64 label)` in record order; with `in_memory`, the same
        object every call, kept after its first pass."""
        key = (input_context.num_input_pipelines, input_context.input_pipeline_id)
        if key not in self._shares:
            records = self.split.records
            if input_context.num_input_pipelines > 1:
                records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            images = self.split.decoded(records)
            self._shares[key] = images.cache() if self.in_memory else images
        return self._shares[key]


def evaluation_images(split: Split, in_memory: bool) -> EvaluationImages:
    """`split` for `evaluate_exactly`, each pipeline's share decoded in order; with `in_memory`,
    each share is kept after its first pass."""
    return EvaluationImages(split, in_memory)


def channel_statistics(dataset: tf.data.Dataset, max_examples: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation, in 0..255 units, of the first `max_examples` images."""
    totals = squares = None
    pixel_count = 0
    # Small batches, summed from uint8: 1,024 images at 224 px made a 1.2 GB float64 copy, the
    # largest allocation of a run on a streamed folder.
    for images, _ in dataset.take(max_examples).batch(64):
        pixels = images.numpy().reshape(-1, images.shape[-1])
        batch_totals = pixels.sum(axis=0, dtype=np.float64)
        batch_squares = np.square(pixels, dtype=np.float32).sum(axis=0, dtype=np.float64)  # 255^2 is exact in float32
        totals = batch_totals if totals is None else totals + batch_totals
        squares = batch_squares if squares is None else squares + batch_squares
        pixel_count += pixels.shape[0]
    if pixel_count == 0:
        raise ValueError("channel_statistics needs at least one image")
    mean = totals / pixel_count
    std = np.sqrt(np.maximum(squares / pixel_count - np.square(mean), 0.0))
    return mean.tolist(), std.tolist()
