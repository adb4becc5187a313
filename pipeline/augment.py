"""Batch augmentation for training: the one place that chooses between Keras core and keras-cv.

keras-cv 0.9.0 is frozen and Keras core took over its augmentation layers, so Keras core is used
wherever it has the layer, and keras-cv nowhere: the one thing core lacks, an Inception-style crop,
is a single batched `tf.image` op. Why each step is built as it is stands on the step; the speed
of the alternatives is in BENCHMARKS.md (findings).

Order: geometric (resized crop, pad-crop, flip) -> RandAugment -> random erasing -> MixUp or CutMix
(with both on, each batch uses one of them with probability 1/2, as timm's `Mixup(switch_prob=0.5)`).

Randomness is stateless, so the same seed and batches give the same augmented batches whatever
`num_parallel_calls` is, even under op determinism: a Keras layer's `SeedGenerator` is a variable
that parallel `.map` calls would race on. Each batch's key is `fold_in(seed, fingerprint(images))`
and the k-th draw traced into the graph is `fold_in(key, k)`. (A batch repeated byte for byte gets
the same augmentation; shuffling makes every epoch's batches new.)

Requires the TensorFlow backend (the layers run inside the tf.data graph). Label smoothing is the
loss's. References: RandAugment (Cubuk et al. 2020), Random Erasing (Zhong et al. 2020), mixup
(Zhang et al. 2018), CutMix (Yun et al. 2019), Inception crop (Szegedy et al. 2015; torchvision
`RandomResizedCrop`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import tensorflow as tf

from architectures.errors import UserError
from pipeline.config import AugmentConfig

PIXEL_RANGE = (0, 255)
RAND_AUGMENT_NUM_OPS = 2  # keras.layers.RandAugment's and the paper's default N
RESIZED_CROP_SCALE = (0.08, 1.0)  # crop area / image area, Inception and torchvision
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # crop width / height, sampled log-uniformly
KERAS_CUTMIX_MAX_ALPHA = 1.0  # keras.layers.CutMix bounds its factor to [0, 1]

Augmenter = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
ImageStep = Callable[[tf.Tensor, "_BatchSeeds"], tf.Tensor]
MixStep = Callable[[tf.Tensor, tf.Tensor, "_BatchSeeds"], tuple[tf.Tensor, tf.Tensor]]


class _BatchSeeds(keras.random.SeedGenerator):
    """A stateless stand-in for a layer's `SeedGenerator` while one batch is traced.

    Keras random ops accept a `SeedGenerator` and call its `next()`; the k-th call gives `fold_in(key, k)`,
    where `key` is a per-batch int64 tensor of shape (2,). The count advances at trace time only.
    """

    def __init__(self, batch_key: tf.Tensor):
        # No super().__init__(): it would create the seed variable this class exists to avoid.
        self._batch_key = batch_key
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._batch_key, self._draws)


def build_augmenter(
    config: AugmentConfig, *, image_shape: tuple[int, int, int], num_classes: int, seed: int
) -> Augmenter | None:
    """A function for `tf.data` `.map` after batching, or None when every augmentation is off.

    (images float32 (B, H, W, C) in 0..255, one-hot labels float32 (B, num_classes)) -> the same shapes and
    dtypes, images clipped to 0..255, label rows still summing to 1 (MixUp and CutMix mix them).
    """
    height, width, _ = image_shape
    _check(config, height, width)
    image_steps = _image_steps(config, height, width)
    mix = _mix_step(config)
    if not image_steps and mix is None:
        return None
    seed_pair = tf.constant([seed, 0], tf.int64)

    def augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.ensure_shape(images, (None, *image_shape))
        labels = tf.ensure_shape(labels, (None, num_classes))
        seeds = _BatchSeeds(tf.random.experimental.stateless_fold_in(seed_pair, _content_hash(images)))
        for step in image_steps:
            images = step(images, seeds)
        if mix is not None:
            images, labels = mix(images, labels, seeds)
        images = tf.clip_by_value(images, *map(float, PIXEL_RANGE))
        return tf.ensure_shape(images, (None, *image_shape)), labels

    return augment


def describe(config: AugmentConfig) -> str:
    """One line for the log, e.g. 'pad-crop 4px, flip, mixup 0.2 (keras core)'."""
    parts = []
    if config.random_resized_crop:
        parts.append("resized-crop 0.08-1")
    if config.random_crop_padding:
        parts.append(f"pad-crop {config.random_crop_padding}px")
    if config.horizontal_flip:
        parts.append("flip")
    if config.rand_augment:
        parts.append(f"randaugment {config.rand_augment_magnitude:g}")
    if config.random_erasing:
        parts.append(f"erasing p={config.random_erasing:g}")
    mixes = [f"mixup {config.mixup_alpha:g}"] * bool(config.mixup_alpha)
    mixes += [f"cutmix {config.cutmix_alpha:g}"] * bool(config.cutmix_alpha)
    if mixes:
        parts.append(" or ".join(mixes) + (" per batch" if len(mixes) == 2 else ""))
    if not parts:
        return "no augmentation"
    libraries = []
    if len(parts) > config.random_resized_crop:  # anything but the resized crop is Keras core
        libraries.append("keras core")
    if config.random_resized_crop:
        libraries.append("tf.image")
    return f"{', '.join(parts)} ({' + '.join(libraries)})"


def _check(config: AugmentConfig, height: int, width: int) -> None:
    """Limits that depend on the image or on Keras (config.validate checks the rest)."""
    if config.random_crop_padding >= min(height, width):
        raise UserError(
            f"augment.random_crop_padding must be smaller than the image side {min(height, width)}, "
            f"got {config.random_crop_padding}"
        )
    if config.cutmix_alpha > KERAS_CUTMIX_MAX_ALPHA:
        raise UserError(
            f"augment.cutmix_alpha must be in [0, {KERAS_CUTMIX_MAX_ALPHA:g}] (Keras CutMix), got {config.cutmix_alpha}"
        )


def _content_hash(images: tf.Tensor) -> tf.Tensor:
    """int64 scalar from the batch's bytes: a per-batch seed that needs no state."""
    fingerprint = tf.fingerprint(tf.reshape(images, (1, -1)))[0]  # (8,) uint8
    return tf.bitcast(fingerprint, tf.int64)


# ----------------------------------------------------------------------------- per-image steps


def _image_steps(config: AugmentConfig, height: int, width: int) -> list[ImageStep]:
    steps: list[ImageStep] = []
    if config.random_resized_crop:
        steps.append(lambda images, seeds: _random_resized_crop(images, seeds, height, width))
    if config.random_crop_padding:
        steps.append(_layer_step(_pad_crop_layer(config.random_crop_padding, height, width)))
    if config.horizontal_flip:
        steps.append(_layer_step(keras.layers.RandomFlip("horizontal", dtype="float32")))
    if config.rand_augment:
        rand_augment_ops = _rand_augment_ops(config.rand_augment_magnitude)
        steps.append(lambda images, seeds: _rand_augment(images, seeds, rand_augment_ops))
    if config.random_erasing:
        probability = config.random_erasing
        # A float factor p would draw each image's probability from [0, p]; (p, p) makes it p.
        erasing = keras.layers.RandomErasing(
            factor=(probability, probability), value_range=PIXEL_RANGE, dtype="float32"
        )
        steps.append(_layer_step(erasing))
    return steps


def _layer_step(layer: keras.layers.Layer) -> ImageStep:
    """Run a Keras image preprocessing layer with this batch's stateless seeds.

    Layers are made with dtype float32 so that a mixed-precision global policy does not turn images into
    float16; their `__call__` would draw from the layer's own seed variable, so this calls its two halves.
    """

    def step(images: tf.Tensor, seeds: _BatchSeeds) -> tf.Tensor:
        transformation = layer.get_random_transformation(images, training=True, seed=seeds)
        return layer.transform_images(images, transformation, training=True)

    return step


def _pad_crop_layer(padding: int, height: int, width: int) -> keras.layers.Layer:
    """Zero-pad by `padding` px then crop back, per image: a shift of -padding..padding px with zero fill.

    Not `RandomCrop`, which crops the whole batch at one location. Nearest interpolation keeps the
    shift a whole number of pixels (the sampled real shift is rounded).
    """
    return keras.layers.RandomTranslation(
        height_factor=padding / height,
        width_factor=padding / width,
        fill_mode="constant",
        fill_value=0.0,
        interpolation="nearest",
        dtype="float32",
    )


def _random_resized_crop(images: tf.Tensor, seeds: _BatchSeeds, height: int, width: int) -> tf.Tensor:
    """Inception-style crop, resized back: (B, H, W, C) -> (B, H, W, C), one box per image.

    Area fraction ~ U(0.08, 1), width/height ratio log-uniform in [3/4, 4/3]. A box that does not fit is
    clipped to the image side (torchvision retries 10 times, then takes a centre crop; clipping keeps one
    batched op). Keras core has no such layer, and keras-cv's `RandomCropAndResize` loops per image, uses
    stateful RNG and samples the ratio linearly.
    """
    batch_size = tf.shape(images)[0]
    area = tf.random.stateless_uniform((batch_size,), seeds.next(), *RESIZED_CROP_SCALE)
    log_ratio = tf.random.stateless_uniform((batch_size,), seeds.next(), *map(math.log, RESIZED_CROP_RATIO))
    pixel_ratio = tf.exp(log_ratio) * (height / width)  # width/height as fractions of the image sides
    crop_height = tf.minimum(tf.sqrt(area / pixel_ratio), 1.0)
    crop_width = tf.minimum(tf.sqrt(area * pixel_ratio), 1.0)
    top = tf.random.stateless_uniform((batch_size,), seeds.next()) * (1.0 - crop_height)
    left = tf.random.stateless_uniform((batch_size,), seeds.next()) * (1.0 - crop_width)
    boxes = tf.stack([top, left, top + crop_height, left + crop_width], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch_size), (height, width))


def _rand_augment_ops(magnitude: float) -> list[keras.layers.Layer]:
    """The op layers of `keras.layers.RandAugment(factor=magnitude)`, same arguments and order (keras 3.15).

    `magnitude` keeps Keras's meaning: each geometric op draws from [0, magnitude] of its own unit,
    one-sided, so at 0.5 rotations reach 180 degrees and shifts half the image (the paper: 30 degrees, 45%).
    """
    factor = (0, magnitude)  # RandAugment turns its float factor into this range for every op
    shared = {"dtype": "float32"}
    color = {"value_range": PIXEL_RANGE, "dtype": "float32"}
    return [
        keras.layers.RandomShear(x_factor=factor, y_factor=factor, interpolation="bilinear", **shared),
        keras.layers.RandomTranslation(height_factor=factor, width_factor=factor, interpolation="bilinear", **shared),
        keras.layers.RandomRotation(factor=factor, interpolation="bilinear", **shared),
        keras.layers.RandomBrightness(factor=factor, **color),
        keras.layers.RandomColorDegeneration(factor=factor, **color),
        keras.layers.RandomContrast(factor=factor, **color),
        keras.layers.RandomSharpness(factor=factor, **color),
        keras.layers.RandomPosterization(factor=max(1, int(8 * magnitude)), **color),
        keras.layers.Solarization(addition_factor=factor, threshold_factor=factor, **color),
        keras.layers.AutoContrast(**color),
        keras.layers.Equalization(**color),
    ]


def _rand_augment(images: tf.Tensor, seeds: _BatchSeeds, ops: list[keras.layers.Layer]) -> tf.Tensor:
    """Each image gets RAND_AUGMENT_NUM_OPS ops drawn uniformly; each op runs once, on its images only.

    As the paper, ops are chosen per image; `keras.layers.RandAugment` picks them once per batch and
    runs all 11 per slot. On one channel colour degeneration is the identity.
    """
    batch_size = tf.shape(images)[0]
    positions = tf.range(batch_size)
    for _ in range(RAND_AUGMENT_NUM_OPS):
        op_index = tf.random.stateless_uniform((batch_size,), seeds.next(), 0, len(ops), dtype=tf.int32)
        groups = tf.dynamic_partition(images, op_index, len(ops))
        group_positions = tf.dynamic_partition(positions, op_index, len(ops))
        augmented_groups = [_skip_if_empty(_layer_step(op), group, seeds) for op, group in zip(ops, groups)]
        images = tf.ensure_shape(tf.dynamic_stitch(group_positions, augmented_groups), images.shape)
    return images


def _skip_if_empty(step: ImageStep, images: tf.Tensor, seeds: _BatchSeeds) -> tf.Tensor:
    """`step(images)`, or the empty group as is: Keras `Equalization` fails on a batch of 0 images."""
    return tf.cond(tf.shape(images)[0] > 0, lambda: step(images, seeds), lambda: images)


# ----------------------------------------------------------------------------- MixUp and CutMix


def _mix_step(config: AugmentConfig) -> MixStep | None:
    mixup = _mixup(config.mixup_alpha) if config.mixup_alpha else None
    cutmix = _cutmix(config.cutmix_alpha) if config.cutmix_alpha else None
    if mixup is None or cutmix is None:
        return mixup or cutmix

    def mixup_or_cutmix(images: tf.Tensor, labels: tf.Tensor, seeds: _BatchSeeds) -> tuple[tf.Tensor, tf.Tensor]:
        use_cutmix = tf.random.stateless_uniform((), seeds.next()) < 0.5
        return tf.cond(use_cutmix, lambda: cutmix(images, labels, seeds), lambda: mixup(images, labels, seeds))

    return mixup_or_cutmix


def _mixup(alpha: float) -> MixStep:
    """Each image blended with a random partner of the batch, weight ~ Beta(alpha, alpha), labels alike."""
    layer = keras.layers.MixUp(alpha=alpha, dtype="float32")

    def mix(images: tf.Tensor, labels: tf.Tensor, seeds: _BatchSeeds) -> tuple[tf.Tensor, tf.Tensor]:
        transformation = layer.get_random_transformation(images, training=True, seed=seeds)
        return layer.transform_images(images, transformation), layer.transform_labels(labels, transformation)

    return mix


def _cutmix(alpha: float) -> MixStep:
    """A box from a random partner pasted into each image; the partner's label weight is the pasted fraction."""
    # Keras draws CutMix's Beta parameter from U(factor); (alpha, alpha) makes it Beta(alpha, alpha).
    layer = keras.layers.CutMix(factor=(alpha, alpha), dtype="float32")

    def mix(images: tf.Tensor, labels: tf.Tensor, seeds: _BatchSeeds) -> tuple[tf.Tensor, tf.Tensor]:
        transformation = layer.get_random_transformation(images, training=True, seed=seeds)
        mixed_images = layer.transform_images(images, transformation)
        # Keras weighs labels by the real-valued box area, which differs from the pixels pasted by up to a
        # row and a column; the mask is what was pasted.
        pasted_mask = tf.cast(transformation["batch_masks"], tf.float32)  # (B, H, W, C), 1 where pasted
        pasted_fraction = tf.reduce_mean(pasted_mask, axis=(1, 2, 3))[:, None]
        partner_labels = tf.gather(labels, transformation["permutation_order"])
        return mixed_images, (1.0 - pasted_fraction) * labels + pasted_fraction * partner_labels

    return mix
