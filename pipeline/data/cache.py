"""Where decoded images live between epochs: `data.cache: auto | memory | disk | none`.

- memory: decoded once, kept in RAM (each worker keeps its own shard). Fastest; RAM grows
  with the dataset.
- disk: decoded once into one raw uint8 file per split in the cache directory, read back by
  index, so every epoch still reshuffles the whole split and RAM stays flat. For sources whose
  decoding costs more than reading (large JPEGs trained at a small size).
- none: decoded from the source every epoch. RAM stays flat.
- auto: memory when the decoded splits fit a quarter of physical RAM, else none; the log says
  which and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.data.index import cache_root
from pipeline.data.splits import DatasetSplits, Split
from pipeline.files import exclusive_lock, write_atomically

logger = logging.getLogger(__name__)

MEMORY_BUDGET_FRACTION = 0.25  # of physical RAM: room for the model, activations and the OS
PROGRESS_SECONDS = 10.0


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose(mode: str, splits: DatasetSplits, memory_bytes: int | None = None) -> tuple[str, str]:
    """The cache mode for `splits`, and why (one phrase for the log)."""
    decoded = sum(splits.num_examples.values()) * int(np.prod(splits.image_shape))
    if mode != "auto":
        return mode, f"data.cache: {mode}; decoded images take {_gigabytes(decoded)}"
    budget = int((memory_bytes or physical_memory_bytes()) * MEMORY_BUDGET_FRACTION)
    if decoded <= budget:
        return "memory", f"auto: decoded images take {_gigabytes(decoded)}, within the memory budget of {_gigabytes(budget)} (a quarter of RAM)"
    return "none", f"auto: decoded images would take {_gigabytes(decoded)}, over the memory budget of {_gigabytes(budget)} (a quarter of RAM); decoding from the source every epoch"


def apply(splits: DatasetSplits, mode: str, reason: str, cache_dir: str | None) -> DatasetSplits:
    """`splits` with the chosen mode recorded; for "disk", each split reads from its decoded file."""
    if mode == "disk":
        directory = cache_root(cache_dir) / "decoded"
        splits = dataclasses.replace(
            splits, splits={role: disk_split(split, splits.image_shape, directory) for role, split in splits.splits.items()}
        )
    return dataclasses.replace(splits, cache=mode, cache_reason=reason)


def disk_split(split: Split, image_shape: tuple[int, int, int], directory: Path) -> Split:
    """`split` read back from one raw uint8 file of its decoded images (written on first use)."""
    if split.size == 0 or split.fingerprint is None:
        return split
    key = hashlib.sha256(split.fingerprint.encode()).hexdigest()[:24]
    pixels_path, labels_path = directory / f"{key}.u8", directory / f"{key}.labels.npy"
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory / f"{key}.lock"):
        if not (pixels_path.is_file() and labels_path.is_file()):
            labels = _write_decoded(split, pixels_path)
            write_atomically(labels_path, lambda temporary: np.save(temporary.open("wb"), labels))
    labels = np.load(labels_path)
    record_bytes = int(np.prod(image_shape))

    def read(position: np.ndarray) -> np.ndarray:
        return np.frombuffer(os.pread(_descriptor(str(pixels_path)), record_bytes, int(position) * record_bytes), np.uint8)

    def decode(position: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(read, [position], tf.uint8, stateful=False)
        return tf.reshape(image, image_shape), label

    records = tf.data.Dataset.from_tensor_slices((np.arange(split.size, dtype=np.int64), labels))
    return Split(records, split.size, decode=decode, small_records=True, fingerprint=split.fingerprint)


def _write_decoded(split: Split, path: Path) -> np.ndarray:
    """Decode `split` in order into `path` (streamed: one batch in memory at a time); its labels."""
    labels = []
    started = last_report = time.perf_counter()
    logger.info("data.cache disk: decoding %d images into %s", split.size, path)

    def write(temporary: Path) -> None:
        nonlocal last_report
        with temporary.open("wb") as file:
            for images, batch_labels in split.images().batch(256).prefetch(2).as_numpy_iterator():
                file.write(images.tobytes())
                labels.extend(batch_labels.tolist())
                if time.perf_counter() - last_report > PROGRESS_SECONDS:
                    last_report = time.perf_counter()
                    logger.info("  %d of %d images (%.0f/s)", len(labels), split.size, len(labels) / (last_report - started))

    write_atomically(path, write)
    return np.array(labels, np.int64)


_DESCRIPTORS: dict[str, int] = {}


def _descriptor(path: str) -> int:
    """One read-only descriptor per cache file and process, shared by the parallel reads (pread)."""
    if path not in _DESCRIPTORS:
        _DESCRIPTORS[path] = os.open(path, os.O_RDONLY)
    return _DESCRIPTORS[path]



def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"
