"""Table 3: images/s of the input pipeline, and whether a training step ever waits for it.

Loaders, each on the same images and with the same caching:
- ours: `data.load_splits` then `data.epoch_pipelines` (per epoch shuffle, decode, batch, float
  conversion, augmentation, prefetch), as `pipeline/run.py` trains;
- `keras.utils.image_dataset_from_directory` (the folder only), with the same augmentation
  function mapped over its batches;
- bare loops over the same files, in parallel: `tf.io.read_file` and `tf.io.decode_jpeg` alone
  (the floor of streaming), and the same plus a bilinear resize to the row's size rounded to
  uint8 (the least any loader must do to hand out images of that size).
Sources: Fashion-MNIST (IDX files, 28x28x1, in memory) and a folder of JPEGs written once from
Fashion-MNIST (`folder_images` files, upscaled to `folder_file_side` px RGB, quality 90), read at
each of `folder_sizes`: streamed (ours with `data.cache: none`, keras's loader as it is: both
decode every file every epoch), and ours again with `data.cache: memory`. "First epoch" counts
from the start of loading; "steady" is a later epoch (median of `repeats`). Streamed, ours and
keras's later epochs alternate, and "vs keras" is the median of the paired ratios.

"vs training": resnet20 (the main job's model until issue 13; Fashion-MNIST 28x28x1, default TrainConfig and
augmentation) trained through the pipeline's Trainer on in-memory synthetic batches and on our
real pipeline, epochs alternating; a ratio near 1 means the step never waits for its input.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchContext, TrainingProbe, alternate, median, paired_ratio, release_models

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
DEFAULT_MODEL = "resnet20"
OURS, KERAS = "ours (data.epoch_pipelines)", "keras image_dataset_from_directory"
BARE_DECODE, BARE_RESIZE = "tf.io.decode_jpeg only", "tf.io.decode_jpeg + resize"
CACHINGS = {"none": "streamed", "memory": "in memory"}  # data.cache -> how the table says it


@dataclass(frozen=True)
class PipelineSettings:
    fashion_mnist_max_train: int | None  # cap on Fashion-MNIST's training images; None: all 54,000
    folder_images: int  # JPEG files written, equally many per class
    folder_file_side: int  # pixels, square
    folder_sizes: tuple[int, ...]  # data.image_size values the folder is read at
    batch_size: int
    repeats: int  # steady-state epochs per row
    training_overrides: dict[str, Any]  # changes to the default TrainConfig (quick runs only)
    training_calls_per_epoch: int
    training_repeats: int  # epochs per input, alternating


FULL = PipelineSettings(
    fashion_mnist_max_train=None, folder_images=3000, folder_file_side=256, folder_sizes=(64, 224),
    batch_size=128, repeats=3, training_overrides={}, training_calls_per_epoch=6, training_repeats=3,
)  # fmt: skip
QUICK = PipelineSettings(
    fashion_mnist_max_train=512, folder_images=100, folder_file_side=64, folder_sizes=(64,), batch_size=32,
    repeats=1, training_overrides={"batch_size": 32, "steps_per_execution": 2}, training_calls_per_epoch=2,
    training_repeats=1,
)  # fmt: skip


def _augmentations() -> dict[str, Any]:
    """Name -> AugmentConfig (None: no augmentation)."""
    from pipeline.config import AugmentConfig

    return {
        "off": None,
        "pad-crop+flip (default)": AugmentConfig(),
        "pad-crop+flip+RandAugment": AugmentConfig(rand_augment=True),
    }


def run(context: BenchContext) -> dict[str, Any]:
    from pipeline import data
    from pipeline.config import DataConfig

    settings = QUICK if context.quick else FULL
    augmentations = _augmentations()
    started = time.perf_counter()
    fashion_config = DataConfig(max_train_examples=settings.fashion_mnist_max_train)
    fashion = data.load_splits(fashion_config, seed=0)
    load_seconds = time.perf_counter() - started
    rows = _fashion_mnist_rows(fashion, fashion_config, load_seconds, augmentations, settings)
    folder = jpeg_folder(context.cache_dir, fashion, settings.folder_images, settings.folder_file_side)
    folder_augmentations = {name: augmentations[name] for name in ("off", "pad-crop+flip+RandAugment")}
    for size in settings.folder_sizes:
        rows += _folder_rows(folder, size, folder_augmentations, settings)
    for row in rows:
        logger.info("pipeline: %s", row)
    training = _vs_training(fashion, fashion_config, settings)
    logger.info("pipeline vs training: %s", training)
    return {
        "status": "measured",
        "settings": {
            "batch_size": settings.batch_size,
            "repeats": settings.repeats,
            "fashion_mnist_train_images": fashion.num_examples["train"],
            "folder_images": settings.folder_images,
            "folder_file_side": settings.folder_file_side,
            "folder_sizes": list(settings.folder_sizes),
        },
        "rows": rows,
        "training": training,
    }


# ----------------------------------------------------------------------------- the JPEG folder


def jpeg_folder(cache_dir: Path, splits: Any, count: int, side: int) -> Path:
    """`count` JPEGs from Fashion-MNIST's training images, `count // classes` per class, written once.

    (side, side) RGB, bilinear upscaling, one subfolder per class; reused when it exists.
    """
    import numpy as np
    from PIL import Image

    folder = cache_dir / f"fashion_mnist_jpeg_{count}x{side}px"
    if folder.is_dir():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-jpeg-", dir=cache_dir))
    num_classes = len(splits.class_names)
    per_class = count // num_classes
    written = np.zeros(num_classes, int)
    class_dirs = [staging / f"{index}_{_slug(name)}" for index, name in enumerate(splits.class_names)]
    for class_dir in class_dirs:
        class_dir.mkdir()
    for images, labels in splits.train.batch(1024):
        for image, label in zip(images.numpy(), labels.numpy()):
            if written[label] < per_class:
                picture = Image.fromarray(image[..., 0]).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
                picture.save(class_dirs[label] / f"{written[label]:05d}.jpg", quality=JPEG_QUALITY)
                written[label] += 1
        if written.min() >= per_class:
            break
    os.replace(staging, folder)  # whole or not at all
    logger.info("wrote %d JPEGs to %s", int(written.sum()), folder)
    return folder


def _slug(name: str) -> str:
    return "".join(character if character.isalnum() else "_" for character in name)


# ----------------------------------------------------------------------------- measurements

EpochMaker = Callable[[int], Any]  # epoch index -> a dataset of batches for one epoch


def _count_images(dataset: Any) -> int:
    """Images in one pass over a dataset of batches (image batches, or (images, labels) pairs)."""
    import tensorflow as tf

    return sum(int(tf.nest.flatten(batch)[0].shape[0]) for batch in dataset)


def _first_epoch(make_epoch: EpochMaker, setup_seconds: float) -> tuple[float, int]:
    """(images/s of epoch 0 counting `setup_seconds` before it, images per epoch)."""
    started = time.perf_counter()
    images = _count_images(make_epoch(0))
    return images / (setup_seconds + time.perf_counter() - started), images


def _later_epochs(make_epoch: EpochMaker) -> Callable[[], float]:
    """A rate function: each call runs the next epoch (1, 2, ...) and returns its images/s."""
    epochs = itertools.count(1)

    def rate() -> float:
        started = time.perf_counter()
        images = _count_images(make_epoch(next(epochs)))
        return images / (time.perf_counter() - started)

    return rate


def _row(
    source: str, size: Any, loader: str, augmentation: str, first: tuple[float, int], steady: list[float], caching: str
) -> dict:
    first_rate, images = first
    return {
        "source": source,
        "caching": caching,
        "image_size": size,
        "loader": loader,
        "augmentation": augmentation,
        "images_per_epoch": images,
        "first_epoch_images_per_second": round(first_rate, 1),
        "steady_images_per_second": round(median(steady), 1),
        "steady_vs_keras": None,
        "steady_vs_bare_decode": None,
        "steady_vs_bare_resize": None,
        "repeats": len(steady),
    }


def _our_epochs(splits: Any, data_config: Any, augment_config: Any, batch_size: int) -> EpochMaker:
    """Our training input, one pipeline per epoch (`data.epoch_pipelines`, what pipeline/run.py trains with)."""
    from pipeline import augment, data

    num_classes = len(splits.class_names)
    augmenter = None
    if augment_config is not None:
        augmenter = augment.build_augmenter(augment_config, image_shape=splits.image_shape, num_classes=num_classes, seed=0)
    make = data.epoch_pipelines(
        splits.splits["train"], data_config, global_batch_size=batch_size, seed=0, augment=augmenter,
        num_classes=num_classes, in_memory=splits.cache == "memory",
    )  # fmt: skip
    return lambda epoch: make(epoch, 0, None)


def _keras_epochs(folder: Path, size: int, num_classes: int, augment_config: Any, batch_size: int) -> tuple[EpochMaker, float]:
    """keras's folder loader with the same augmentation mapped over its batches; (epochs, set-up seconds)."""
    import keras
    import tensorflow as tf

    from pipeline import augment

    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(
        folder, label_mode="categorical", color_mode="rgb", batch_size=batch_size, image_size=(size, size),
        shuffle=True, seed=0, verbose=False,
    )  # fmt: skip
    if augment_config is not None:
        augmenter = augment.build_augmenter(augment_config, image_shape=(size, size, 3), num_classes=num_classes, seed=0)
        dataset = dataset.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return (lambda epoch: dataset), time.perf_counter() - started  # each pass reshuffles and decodes again


def _fashion_mnist_rows(splits: Any, data_config: Any, load_seconds: float, augmentations: dict, settings) -> list[dict]:
    rows = []
    for name, augment_config in augmentations.items():
        make_epoch = _our_epochs(splits, data_config, augment_config, settings.batch_size)
        first = _first_epoch(make_epoch, load_seconds)
        later = _later_epochs(make_epoch)
        steady = [later() for _ in range(settings.repeats)]
        rows.append(_row("Fashion-MNIST", splits.image_shape[0], OURS, name, first, steady, CACHINGS[splits.cache]))
    return rows


def _folder_rows(folder: Path, size: int, augmentations: dict, settings) -> list[dict]:
    """Ours and keras's loader at one size, both streamed; ours again with the images in memory.

    Streamed, both decode every file every epoch: like with like, their later epochs alternate,
    for the ratios; without augmentation the two bare loops alternate with them. Keras's loader
    has no in-memory mode of the same work (`.cache()` on its batches would freeze the first
    epoch's batches and order), so ours in memory stands alone.
    """
    from pipeline import data
    from pipeline.config import DataConfig

    rows = []
    for cache, caching in CACHINGS.items():
        folder_config = DataConfig(dataset=f"folder:{folder}", image_size=size, cache=cache, cache_dir=str(folder.parent / "index"))
        started = time.perf_counter()
        splits = data.load_splits(folder_config, seed=0)
        load_seconds = time.perf_counter() - started
        for name, augment_config in augmentations.items():
            ours = _our_epochs(splits, folder_config, augment_config, settings.batch_size)
            if cache != "none":
                first = _first_epoch(ours, load_seconds)
                later = _later_epochs(ours)
                rows.append(_row("JPEG folder", size, OURS, name, first, [later() for _ in range(settings.repeats)], caching))
                continue
            keras_loader, keras_setup_seconds = _keras_epochs(folder, size, len(splits.class_names), augment_config, settings.batch_size)
            loaders = {OURS: (ours, load_seconds), KERAS: (keras_loader, keras_setup_seconds)}
            if augment_config is None:
                loaders[BARE_DECODE] = (_bare_epochs(folder, None, settings.batch_size), 0.0)
                loaders[BARE_RESIZE] = (_bare_epochs(folder, size, settings.batch_size), 0.0)
            firsts = {loader: _first_epoch(make_epoch, setup) for loader, (make_epoch, setup) in loaders.items()}
            steady = alternate({loader: _later_epochs(make_epoch) for loader, (make_epoch, _) in loaders.items()}, settings.repeats)
            loader_rows = {loader: _row("JPEG folder", size, loader, name if loader in (OURS, KERAS) else "-",
                                        firsts[loader], steady[loader], caching) for loader in loaders}  # fmt: skip
            for key, loader in (("steady_vs_keras", KERAS), ("steady_vs_bare_decode", BARE_DECODE), ("steady_vs_bare_resize", BARE_RESIZE)):
                if loader in loaders:
                    loader_rows[OURS][key] = round(paired_ratio(steady[OURS], steady[loader]), 3)
            rows += loader_rows.values()
    return rows


def _bare_epochs(folder: Path, size: int | None, batch_size: int) -> EpochMaker:
    """`tf.io.read_file` and `tf.io.decode_jpeg` over the folder's files in parallel, then with `size`
    a bilinear resize to (size, size) rounded to uint8; batched, nothing else."""
    import tensorflow as tf

    paths = [str(path) for path in sorted(folder.rglob("*.jpg"))]

    def load(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return image if size is None else tf.cast(tf.image.resize(image, (size, size)) + 0.5, tf.uint8)

    def make_epoch(epoch: int) -> Any:
        files = tf.data.Dataset.from_tensor_slices(paths)
        return files.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return make_epoch


def _vs_training(splits: Any, data_config: Any, settings: PipelineSettings) -> dict[str, Any]:
    """The default model's training images/s on synthetic batches and on our pipeline, alternating."""
    from pipeline import augment, data
    from pipeline.config import AugmentConfig, TrainConfig

    config = dataclasses.replace(TrainConfig(), **settings.training_overrides)
    num_classes = len(splits.class_names)
    probe = TrainingProbe(
        arch=DEFAULT_MODEL, image_shape=splits.image_shape, num_classes=num_classes, train_config=config,
        calls_per_epoch=settings.training_calls_per_epoch,
    )  # fmt: skip
    augmenter = augment.build_augmenter(AugmentConfig(), image_shape=splits.image_shape, num_classes=num_classes, seed=0)

    real_batches = data.epoch_pipelines(
        splits.splits["train"], data_config, global_batch_size=config.batch_size, seed=0, augment=augmenter,
        num_classes=num_classes, in_memory=splits.cache == "memory",
    )  # fmt: skip

    samples = alternate(
        {"synthetic": probe.epoch_rate, "pipeline": lambda: probe.epoch_rate(real_batches)}, settings.training_repeats
    )
    precision = probe.precision
    del probe
    release_models()
    return {
        "arch": DEFAULT_MODEL,
        "image_shape": list(splits.image_shape),
        "precision": precision,
        "batch_size": config.batch_size,
        "augmentation": "pad-crop+flip (default)",
        "synthetic_images_per_second": round(median(samples["synthetic"]), 1),
        "pipeline_images_per_second": round(median(samples["pipeline"]), 1),
        "ratio": round(paired_ratio(samples["pipeline"], samples["synthetic"]), 3),
        "repeats": settings.training_repeats,
    }
