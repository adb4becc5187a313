"""Data sources to `tf.data`: Fashion-MNIST/MNIST, TFDS datasets, IDX files and image folders.

Every source becomes three unbatched `tf.data.Dataset`s of `(uint8 image (H, W, C), int64
label)` at one common size (`DatasetSplits`); `train_pipeline` batches them
into `(float32 images 0..255 (B, H, W, C), float32 one-hot labels (B, num_classes))`.

    fashion_mnist, mnist  TFDS's prepared copy, else Debian's IDX files
                          (/usr/share/datasets/fashion-mnist), else a TFDS download
    idx:DIR               MNIST-format IDX files (LeCun et al. 1998), gzipped or not
    tfds:NAME             any TFDS image classification dataset ("image" and "label" features)
    folder:PATH or DIR    one subfolder per class, optionally under train/ val/ test/

Image folders are decoded once, up front, with Pillow (torchvision's `ImageFolder` loader
does the same: `convert("RGB")`), so one bad file is skipped and reported before training
rather than crashing an epoch. Validation and test sets a source lacks are carved from its
training set, deterministically (the last fraction, or a seeded per-class split for folders).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import gzip
import io
import logging
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, ImageOps, UnidentifiedImageError

from architectures.errors import UserError
from pipeline.config import DataConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEFAULT_SIDE = 224  # pixels, when data.image_size is unset and the source's images vary in size
DEFAULT_FOLDER_CHANNELS = 3

# Names as published with MNIST and Fashion-MNIST, each optionally with ".gz".
IDX_FILE_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these datasets use
FOLDER_SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}

ImageConverter = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class DatasetSplits:
    """Three unbatched splits of `(uint8 (H, W, C), int64 label)`, in a fixed order."""

    train: tf.data.Dataset  # not shuffled; images already at `image_shape`
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) of every image
    num_examples: dict[str, int]  # {"train": n, "validation": n, "test": n}
    source: str  # one line for the log, e.g. "Fashion-MNIST IDX files in /usr/share/..."
    skipped: dict[str, int]  # folder sources: reason -> files skipped; empty otherwise


@dataclass(frozen=True)
class _BuiltinDataset:
    title: str
    debian_dir: Path  # where Debian's dataset-<name> package installs the IDX files
    class_names: tuple[str, ...]


BUILTIN_DATASETS = {
    "fashion_mnist": _BuiltinDataset(
        "Fashion-MNIST", Path("/usr/share/datasets/fashion-mnist"), FASHION_MNIST_CLASSES
    ),
    "mnist": _BuiltinDataset("MNIST", Path("/usr/share/datasets/mnist"), tuple(str(digit) for digit in range(10))),
}


@dataclass(frozen=True)
class DatasetSource:
    """`data.dataset` parsed: which loader reads it, and from what."""

    kind: str  # "builtin", "tfds", "idx" or "folder"
    argument: str  # the builtin's or TFDS's dataset name, or the directory (with ~ expanded)


def parse_dataset(dataset: str) -> DatasetSource:
    """The source `dataset` names; an existing directory without a prefix is an image folder.

    The one rule for `data.dataset`: `validate()` calls it before any heavy work. Known names
    and prefixes come first, so a directory called `mnist` needs `folder:mnist`.
    """
    if dataset in BUILTIN_DATASETS:
        return DatasetSource("builtin", dataset)
    kind, separator, argument = dataset.partition(":")
    if separator and argument and kind == "tfds":
        return DatasetSource(kind, argument)
    if separator and argument and kind in ("idx", "folder"):
        directory = Path(argument).expanduser()
        if not directory.is_dir():
            what = "IDX directory" if kind == "idx" else "image folder"
            raise UserError(f"data.dataset: {what} not found: {directory}")
        return DatasetSource(kind, str(directory))
    directory = Path(dataset).expanduser()
    if dataset and directory.is_dir():  # Path("") is the working directory
        return DatasetSource("folder", str(directory))
    raise UserError(
        "data.dataset must be fashion_mnist, mnist, tfds:NAME, folder:PATH, idx:DIR or the path of an existing "
        f"directory (an image folder); got {dataset!r}"
    )


def load_splits(config: DataConfig, seed: int) -> DatasetSplits:
    """The train/validation/test splits of `config.dataset`; `seed` fixes folder splits."""
    source = parse_dataset(config.dataset)
    if source.kind == "builtin":
        splits = _load_builtin(source.argument, config)
    elif source.kind == "tfds":
        splits = _load_tfds(source.argument, config)
    elif source.kind == "idx":
        splits = _splits_from_idx(Path(source.argument), config, None, f"IDX files in {source.argument}")
    else:
        splits = _load_folder(Path(source.argument), config, seed)
    logger.info(
        "data: %s; images %s; %d classes; %d train, %d validation, %d test examples",
        splits.source, "x".join(map(str, splits.image_shape)), len(splits.class_names),
        splits.num_examples["train"], splits.num_examples["validation"], splits.num_examples["test"],
    )  # fmt: skip
    return splits


# ----------------------------------------------------------------------------- batching


def train_pipeline(
    dataset: tf.data.Dataset,
    config: DataConfig,
    *,
    global_batch_size: int,
    seed: int,
    augment: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None = None,
    num_classes: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """One epoch per iteration of `(float32 (B, H, W, C) 0..255, float32 one-hot (B, num_classes))`.

    Reshuffled (seeded) every epoch; the last partial batch is dropped so every replica gets
    equal batches. With `input_context` (`distribute_datasets_from_function`) this pipeline
    reads its own shard and yields per-replica batches; without it the strategy shards by data.
    `augment(images, one_hot_labels) -> (images, labels)` runs on whole batches.
    """
    options = tf.data.Options()
    options.deterministic = config.deterministic
    # No autotune model thread: on TF 2.21 it sometimes is not woken when the epoch's iterator
    # is destroyed, which then blocks for the rest of its optimisation period (up to 60 s; 28-39 s
    # with zero CPU measured at the end of 50-s epochs, in about half of them). AUTOTUNE
    # parallelism then stays at the number of cores, which is what it tunes towards on a
    # training machine anyway; table 3 of BENCHMARKS.md measures the pipeline this way.
    options.autotune.enabled = False
    if input_context is None:
        batch_size = global_batch_size
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    else:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if config.cache:
        dataset = dataset.cache()  # before the shuffle, so each epoch gets a new order of the cached images
    dataset = dataset.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Batch uint8 first: the float conversion then runs once per batch, vectorized.
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_model_inputs(num_classes), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def epoch_pipelines(
    dataset: tf.data.Dataset,
    config: DataConfig,
    *,
    global_batch_size: int,
    seed: int,
    augment: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None,
    num_classes: int,
) -> Callable[[int, int, tf.distribute.InputContext | None], tf.data.Dataset]:
    """`make(epoch, skip_batches, input_context)`: epoch `epoch`'s `train_pipeline`, resumable.

    The source is cached once, here, so decoding happens in the first epoch only; each epoch
    then shuffles with its own seed (`seed * 1000 + epoch`), which makes epoch k's order the
    same after a resume, and `skip_batches` skips what a resumed epoch already trained on.
    """
    source = dataset.cache() if config.cache else dataset
    per_epoch_config = dataclasses.replace(config, cache=False)

    def make(epoch: int, skip_batches: int, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        pipeline = train_pipeline(
            source,
            per_epoch_config,
            global_batch_size=global_batch_size,
            seed=seed * 1_000 + epoch,
            augment=augment,
            num_classes=num_classes,
            input_context=input_context,
        )
        return pipeline.skip(skip_batches) if skip_batches else pipeline

    return make


def channel_statistics(dataset: tf.data.Dataset, max_examples: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation, in 0..255 units, of the first `max_examples` images."""
    totals = squares = None
    pixel_count = 0
    for images, _ in dataset.take(max_examples).batch(1024):
        pixels = images.numpy().reshape(-1, images.shape[-1]).astype(np.float64)
        batch_totals, batch_squares = pixels.sum(axis=0), np.square(pixels).sum(axis=0)
        totals = batch_totals if totals is None else totals + batch_totals
        squares = batch_squares if squares is None else squares + batch_squares
        pixel_count += pixels.shape[0]
    if pixel_count == 0:
        raise ValueError("channel_statistics needs at least one image")
    mean = totals / pixel_count
    std = np.sqrt(np.maximum(squares / pixel_count - np.square(mean), 0.0))
    return mean.tolist(), std.tolist()


def _model_inputs(num_classes: int) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    def convert(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(images, tf.float32), tf.one_hot(labels, num_classes, dtype=tf.float32)

    return convert


# ----------------------------------------------------------------------------- shared helpers


def _holdout_size(count: int, fraction: float) -> int:
    return int(count * fraction + 0.5)


def _capped(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


def _target_shape(
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


def _image_converter(
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


def _empty_dataset(image_shape: tuple[int, int, int]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((np.zeros((0, *image_shape), np.uint8), np.zeros((0,), np.int64)))


def _from_arrays(images: np.ndarray, labels: np.ndarray, converter: ImageConverter | None) -> tf.data.Dataset:
    """(N, h, w, c) uint8 and (N,) labels -> unbatched `(uint8 image, int64 label)`."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
    if converter is None:
        return dataset
    return dataset.map(lambda image, label: (converter(image), label), num_parallel_calls=tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- Fashion-MNIST, MNIST


def _load_builtin(name: str, config: DataConfig) -> DatasetSplits:
    """TFDS's prepared copy, else Debian's IDX files, else (if allowed) a TFDS download."""
    builtin = BUILTIN_DATASETS[name]
    title, class_names = builtin.title, builtin.class_names
    builder = _tfds_builder(name, config.data_dir)
    if builder.is_prepared():  # looks at files only; never downloads
        return _splits_from_tfds(builder, config, class_names, f"{title} from TFDS in {builder.data_dir}")
    if _find_idx_files(builtin.debian_dir) is not None:
        return _splits_from_idx(builtin.debian_dir, config, class_names, f"{title} IDX files in {builtin.debian_dir}")
    if not config.download:
        raise UserError(
            f"{name}: no prepared TFDS copy in {builder.data_dir_root}, no IDX files in {builtin.debian_dir}, "
            "and data.download is false; set data.download: true or data.data_dir"
        )
    _download(builder)
    return _splits_from_tfds(builder, config, class_names, f"{title} downloaded by TFDS to {builder.data_dir}")


# ----------------------------------------------------------------------------- TFDS


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    # Looking a builder up where nothing is prepared makes TFDS warn "Variant folder ... has no
    # dataset_info.json"; not having a prepared copy is normal here (we fall back), so hush it.
    absl_logger = logging.getLogger("absl")
    previous_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = data_dir or "the default data_dir"
        raise UserError(f"TFDS has no dataset {name!r} (and none is prepared in {where}){hint}") from None
    finally:
        absl_logger.setLevel(previous_level)


def _load_tfds(name: str, config: DataConfig) -> DatasetSplits:
    """A prepared TFDS dataset; downloaded first only if `data.download` allows it."""
    builder = _tfds_builder(name, config.data_dir)
    if not builder.is_prepared():
        if not config.download:
            raise UserError(
                f"tfds:{name} is not prepared in {builder.data_dir_root} and data.download is false; "
                "set data.download: true or data.data_dir to where it is prepared"
            )
        _download(builder)
    return _splits_from_tfds(builder, config, None, f"TFDS {name} in {builder.data_dir}")


def _download(builder: tfds.core.DatasetBuilder) -> None:
    logger.info("TFDS: downloading and preparing %s into %s", builder.name, builder.data_dir_root)
    builder.download_and_prepare()


def _tfds_split_ranges(
    split_sizes: dict[str, int], fraction: float, name: str
) -> tuple[dict[str, tuple[str, int, int]], str]:
    """role -> (TFDS split, start, end): the dataset's own splits, the rest carved from train's end.

    With no test split, a published validation split serves as the test set (as ImageNet's
    does) and validation is carved from train.
    """
    has_validation, has_test = "validation" in split_sizes, "test" in split_sizes
    ranges: dict[str, tuple[str, int, int]] = {}
    if has_test:
        ranges["test"] = ("test", 0, split_sizes["test"])
        if has_validation:
            ranges["validation"] = ("validation", 0, split_sizes["validation"])
    elif has_validation:
        ranges["test"] = ("validation", 0, split_sizes["validation"])
    carved = [role for role in ("test", "validation") if role not in ranges]
    holdout = _holdout_size(split_sizes["train"], fraction)
    train_end = split_sizes["train"] - holdout * len(carved)
    if train_end < 1:
        raise UserError(f"{name}: {split_sizes['train']} training examples are too few to hold out "
                        f"{len(carved)} x {fraction:.0%}; lower data.validation_fraction")  # fmt: skip
    ranges["train"] = ("train", 0, train_end)
    for index, role in enumerate(reversed(carved)):  # validation first, test last
        ranges[role] = ("train", train_end + index * holdout, train_end + (index + 1) * holdout)
    notes = [f"{role} is {fraction:.0%} of train" for role in carved]
    if has_validation and not has_test:
        notes.append("test is the validation split")
    return ranges, "".join(f"; {note}" for note in notes)


def _splits_from_tfds(
    builder: tfds.core.DatasetBuilder, config: DataConfig, class_names: tuple[str, ...] | None, source: str
) -> DatasetSplits:
    info = builder.info
    name = f"tfds:{builder.name}"
    missing = [key for key in ("image", "label") if key not in info.features]
    if missing:
        raise UserError(f"{name} has no {missing[0]!r} feature (features: {', '.join(info.features.keys())}); "
                        "only image classification datasets with 'image' and 'label' are supported")  # fmt: skip
    split_sizes = {split: split_info.num_examples for split, split_info in info.splits.items()}
    if "train" not in split_sizes:
        raise UserError(f"{name} has no 'train' split (splits: {', '.join(split_sizes)})")
    source_shape = tuple(info.features["image"].shape)
    image_shape = _target_shape(source_shape, config, name)
    converter = _image_converter(source_shape, image_shape)
    ranges, note = _tfds_split_ranges(split_sizes, config.validation_fraction, name)

    datasets, num_examples = {}, {}
    for role, (split, start, end) in ranges.items():
        end = start + _capped(end - start, config.max_train_examples if role == "train" else config.max_eval_examples)
        num_examples[role] = end - start
        if end == start:
            datasets[role] = _empty_dataset(image_shape)
            continue
        examples = builder.as_dataset(split=f"{split}[{start}:{end}]", shuffle_files=False)
        datasets[role] = examples.map(
            lambda example: (converter(example["image"]), tf.cast(example["label"], tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return DatasetSplits(
        **datasets,
        class_names=class_names or tuple(info.features["label"].names),
        image_shape=image_shape,
        num_examples=num_examples,
        source=source + note,
        skipped={},
    )


# ----------------------------------------------------------------------------- IDX files


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """role -> path of the four IDX files (".gz" preferred), or None if any is missing."""
    found = {}
    for role, stem in IDX_FILE_STEMS.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            return None
        found[role] = path
    return found


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) -> uint8 array of `ndim` dimensions."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise UserError(f"IDX file {path} is not a valid gzip file ({error})") from None
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise UserError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes "
            f"(magic number {raw[:4].hex() or 'missing'}, expected 0000080{ndim})"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    data_size = int(np.prod(shape))
    if len(raw) != header_size + data_size:
        raise UserError(
            f"IDX file {path} holds {len(raw) - header_size} bytes of data; its header {shape} needs {data_size}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def _read_class_names(path: Path, num_labels: int) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) < num_labels:
        raise UserError(f"{path} names {len(names)} classes but the labels go up to {num_labels - 1}")
    return names


def _splits_from_idx(
    directory: Path, config: DataConfig, class_names: tuple[str, ...] | None, source: str
) -> DatasetSplits:
    """Train, test and a validation set made of the last `validation_fraction` of train."""
    if not directory.is_dir():
        raise UserError(f"IDX directory not found: {directory}")
    paths = _find_idx_files(directory)
    if paths is None:
        expected = ", ".join(f"{stem}[.gz]" for stem in IDX_FILE_STEMS.values())
        raise UserError(f"{directory} lacks IDX files; expected {expected}")
    arrays = {role: _read_idx(path, 3 if role.endswith("images") else 1) for role, path in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise UserError(f"{paths[split + '_images']} has {len(arrays[split + '_images'])} images but "
                            f"{paths[split + '_labels']} has {len(arrays[split + '_labels'])} labels")  # fmt: skip
    if class_names is None:
        num_labels = int(max(arrays["train_labels"].max(initial=0), arrays["test_labels"].max(initial=0))) + 1
        names_file = directory / "classes.txt"
        if names_file.is_file():
            class_names = _read_class_names(names_file, num_labels)
        else:
            class_names = tuple(str(label) for label in range(num_labels))

    train_images = arrays["train_images"][..., np.newaxis]  # (N, 28, 28) -> (N, 28, 28, 1)
    test_images = arrays["test_images"][..., np.newaxis]
    train_size = len(train_images) - _holdout_size(len(train_images), config.validation_fraction)
    if train_size < 1:
        raise UserError(f"{paths['train_images']} has {len(train_images)} images: too few to hold out "
                        f"{config.validation_fraction:.0%} for validation; lower data.validation_fraction")  # fmt: skip
    parts = {
        "train": (train_images[:train_size], arrays["train_labels"][:train_size]),
        "validation": (train_images[train_size:], arrays["train_labels"][train_size:]),
        "test": (test_images, arrays["test_labels"]),
    }
    source_shape = tuple(train_images.shape[1:])
    image_shape = _target_shape(source_shape, config, source)
    converter = _image_converter(source_shape, image_shape)
    datasets, num_examples = {}, {}
    for role, (images, labels) in parts.items():
        count = _capped(len(images), config.max_train_examples if role == "train" else config.max_eval_examples)
        datasets[role] = _from_arrays(images[:count], labels[:count], converter)
        num_examples[role] = count
    return DatasetSplits(
        **datasets,
        class_names=class_names,
        image_shape=image_shape,
        num_examples=num_examples,
        source=source,
        skipped={},
    )


# ----------------------------------------------------------------------------- image folders


def _visible_children(directory: Path) -> list[Path]:
    """Sorted entries, without hidden ones (.DS_Store, .ipynb_checkpoints, AppleDouble ._x)."""
    return sorted(child for child in directory.iterdir() if not child.name.startswith("."))


def _class_folders(directory: Path) -> list[Path]:
    return [child for child in _visible_children(directory) if child.is_dir()]


def _files_under(directory: Path) -> list[Path]:
    """Every visible file below a class folder, at any depth, in sorted order."""
    return sorted(
        path for path in directory.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )  # fmt: skip


def _folder_candidates(split_dir: Path, class_index: dict[str, int], root: Path) -> list[tuple[Path, int]]:
    candidates = []
    for class_dir in _class_folders(split_dir):
        if class_dir.name not in class_index:
            raise UserError(f"class folder {class_dir.relative_to(root)} has no counterpart in {root / 'train'}")
        candidates += [(path, class_index[class_dir.name]) for path in _files_under(class_dir)]
    return candidates


def _stratified_holdouts(
    candidates: list[tuple[Path, int]], fraction: float, count: int, seed: int
) -> list[list[tuple[Path, int]]]:
    """[rest, holdout_1, ..., holdout_count]: per class, a seeded `fraction` for each holdout.

    Each class keeps at least one example in `rest`; a class's draw depends only on the seed
    and its label, so adding a class does not reshuffle the others.
    """
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for candidate in candidates:
        by_class.setdefault(candidate[1], []).append(candidate)
    parts: list[list[tuple[Path, int]]] = [[] for _ in range(count + 1)]
    for label, members in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(members))
        size = min(_holdout_size(len(members), fraction), (len(members) - 1) // count)
        for holdout in range(count):
            parts[holdout + 1] += [members[index] for index in order[holdout * size : (holdout + 1) * size]]
        parts[0] += [members[index] for index in order[count * size :]]
    return parts


def _folder_layout(
    root: Path, config: DataConfig, seed: int
) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]], str]:
    """Class names, candidate files per split (in a seeded fixed order), and a note for the log."""
    subfolders = _class_folders(root)
    split_dirs: dict[str, Path] = {}
    for folder in subfolders:
        role = FOLDER_SPLIT_NAMES.get(folder.name.lower())
        if role is not None:
            if role in split_dirs:
                raise UserError(f"{root} has both {split_dirs[role].name}/ and {folder.name}/; keep one")
            split_dirs[role] = folder
    if split_dirs and "train" not in split_dirs:
        raise UserError(f"{root} has {', '.join(path.name + '/' for path in split_dirs.values())} but no train/ folder")
    class_root = split_dirs.get("train", root)
    class_names = tuple(folder.name for folder in _class_folders(class_root))
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise UserError(f"{class_root} needs at least 2 class subfolders, found {len(class_names)}: {found}")
    ignored = [folder.name for folder in subfolders if split_dirs and folder not in split_dirs.values()]
    if ignored:
        logger.warning("folder:%s: ignoring %s beside the split folders", root, ", ".join(ignored))
    class_index = {name: index for index, name in enumerate(class_names)}

    candidates = {role: _folder_candidates(path, class_index, root) for role, path in split_dirs.items()}
    if not split_dirs:
        candidates["train"] = _folder_candidates(root, class_index, root)
    missing = [role for role in SPLITS if role not in candidates]
    note = f"split folders {', '.join(path.name for path in split_dirs.values())}" if split_dirs else "no split folders"
    if missing:
        carved = _stratified_holdouts(candidates["train"], config.validation_fraction, len(missing), seed)
        candidates["train"] = carved[0]
        candidates.update(zip(missing, carved[1:]))
        note += f"; {' and '.join(missing)} carved from train ({config.validation_fraction:.0%} each, seed {seed})"
    # A fixed seeded order (rather than class by class) so that capping a split keeps every class.
    for role, files in candidates.items():
        files.sort()
        order = np.random.default_rng([seed, SPLITS.index(role)]).permutation(len(files))
        candidates[role] = [files[index] for index in order]
    return class_names, candidates, note


def decode_image_file(path: Path, side: int, channels: int) -> np.ndarray | str:
    """uint8 (side, side, channels) pixels, or why the file cannot be used."""
    try:
        data = path.read_bytes()
    except OSError:
        return "unreadable"
    if not data:
        return "empty"
    mode = "RGB" if channels == 3 else "L"
    # A skipped file must never stop the scan, and Pillow signals a damaged file with almost any
    # exception, from `open` as much as from decoding: a PNG, BMP or JPEG cut inside its header
    # raises OSError("Truncated File Read") from `open`; plugins also raise SyntaxError, ValueError,
    # EOFError, struct.error, IndexError or TypeError. So this `try` holds Pillow's calls on the
    # file's content and nothing else: a bug in our own code still stops the run with a traceback.
    try:
        image = Image.open(io.BytesIO(data))
        image.draft(mode, (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
        image.load()  # decodes everything, so truncation shows here
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # Pillow's advice for palette transparency, and no warning
        image = image.convert(mode)  # CMYK, palette, RGBA, 16-bit: one mode; alpha is dropped
        if image.size != (side, side):
            image = image.resize((side, side), Image.Resampling.BILINEAR)  # antialiased when shrinking
    except UnidentifiedImageError:  # no format could read its header
        return "not an image"
    except Image.DecompressionBombError:  # over twice Image.MAX_IMAGE_PIXELS, or a header that says so
        return "too large"
    except Exception as error:  # noqa: BLE001 - see above
        logger.debug("cannot decode %s: %s", path, error)
        return "truncated" if "truncated" in str(error).lower() else "corrupt"
    return np.asarray(image, dtype=np.uint8).reshape(side, side, channels)


def _decode_split(
    candidates: list[tuple[Path, int]], image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Path]]]:
    """uint8 (N, H, W, C) images and int64 (N,) labels of the decodable files; (reason, path) of the rest."""
    side, _, channels = image_shape
    # Pillow releases the GIL while decoding, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor() as executor:
        results = list(executor.map(lambda candidate: decode_image_file(candidate[0], side, channels), candidates))
    kept = [(pixels, label) for pixels, (_, label) in zip(results, candidates) if not isinstance(pixels, str)]
    skipped = [(reason, path) for reason, (path, _) in zip(results, candidates) if isinstance(reason, str)]
    images = np.stack([pixels for pixels, _ in kept]) if kept else np.zeros((0, *image_shape), np.uint8)
    return images, np.array([label for _, label in kept], np.int64), skipped


def _load_folder(root: Path, config: DataConfig, seed: int) -> DatasetSplits:
    """Decode every file of every class folder once; skip (and report) what cannot be decoded."""
    class_names, candidates, note = _folder_layout(root, config, seed)
    if not candidates["train"]:
        raise UserError(f"image folder {root} has no files in its class folders")
    image_shape = (config.image_size or DEFAULT_SIDE, config.image_size or DEFAULT_SIDE,
                   config.channels or DEFAULT_FOLDER_CHANNELS)  # fmt: skip

    datasets, num_examples, skipped = {}, {}, []
    for role in SPLITS:
        limit = config.max_train_examples if role == "train" else config.max_eval_examples
        capped = candidates[role][: _capped(len(candidates[role]), limit)]
        images, labels, split_skipped = _decode_split(capped, image_shape)
        datasets[role] = _from_arrays(images, labels, None)
        num_examples[role] = len(labels)
        skipped += split_skipped
        if role == "train":
            if not len(labels):
                raise UserError(f"image folder {root}: none of its training files could be decoded")
            empty_classes = [name for index, name in enumerate(class_names) if not np.any(labels == index)]
            if empty_classes:
                logger.warning("folder:%s: no training images for class %s", root, ", ".join(empty_classes))
    reasons = Counter(reason for reason, _ in skipped)
    if reasons:
        scanned = sum(num_examples.values()) + len(skipped)
        first = {reason: path for reason, path in reversed(skipped)}  # reversed: the first path of each reason wins
        summary = ", ".join(
            f"{count} {reason} (e.g. {first[reason].relative_to(root)})" for reason, count in reasons.most_common()
        )
        logger.warning("folder:%s: skipped %d of %d files: %s", root, len(skipped), scanned, summary)
    return DatasetSplits(
        **datasets,
        class_names=class_names,
        image_shape=image_shape,
        num_examples=num_examples,
        source=f"image folder {root} ({note})",
        skipped=dict(reasons),
    )
