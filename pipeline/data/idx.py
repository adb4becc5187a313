"""MNIST-format IDX files (LeCun et al. 1998), gzipped or not: `idx:DIR`, and Debian's Fashion-MNIST.

The four files hold the whole dataset as raw bytes (Fashion-MNIST: 55 MB), so they are read
into memory at once; validation is the last `validation_fraction` of train.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from architectures.errors import UserError
from pipeline.config import DataConfig
from pipeline.data.splits import DatasetSplits, array_split, capped, holdout_size, image_converter, target_shape

# Names as published with MNIST and Fashion-MNIST, each optionally with ".gz".
IDX_FILE_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these datasets use


def find_idx_files(directory: Path) -> dict[str, Path] | None:
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


def load_idx(
    directory: Path, config: DataConfig, class_names: tuple[str, ...] | None, source: str
) -> DatasetSplits:
    """Train, test and a validation set made of the last `validation_fraction` of train."""
    if not directory.is_dir():
        raise UserError(f"IDX directory not found: {directory}")
    paths = find_idx_files(directory)
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
    train_size = len(train_images) - holdout_size(len(train_images), config.validation_fraction)
    if train_size < 1:
        raise UserError(f"{paths['train_images']} has {len(train_images)} images: too few to hold out "
                        f"{config.validation_fraction:.0%} for validation; lower data.validation_fraction")  # fmt: skip
    parts = {
        "train": (train_images[:train_size], arrays["train_labels"][:train_size]),
        "validation": (train_images[train_size:], arrays["train_labels"][train_size:]),
        "test": (test_images, arrays["test_labels"]),
    }
    source_shape = tuple(train_images.shape[1:])
    image_shape = target_shape(source_shape, config, source)
    converter = image_converter(source_shape, image_shape)
    files = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in paths.values()]
    fingerprint = hashlib.sha256(repr(files).encode()).hexdigest()[:16]
    splits = {}
    for role, (images, labels) in parts.items():
        count = capped(len(images), config.max_train_examples if role == "train" else config.max_eval_examples)
        splits[role] = array_split(images[:count], labels[:count], converter, f"idx {fingerprint} {role} {count} {image_shape}")
    return DatasetSplits(splits, class_names=class_names, image_shape=image_shape, source=source, skipped={})
