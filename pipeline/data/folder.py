"""Image folders (`folder:PATH` or a bare directory): one subfolder per class, optionally under
`train/ val/ test/`; splits the folder lacks are carved from train, per class and seeded.

Files stream from disk: `index.py` checks each once (and again only when it changes), and a
split's records are the usable files' paths with their labels and EXIF orientation, decoded
by `decode.decode_image` inside `tf.data`. Memory does not grow with the folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline.config import DataConfig
from pipeline.data.decode import decode_image, known_files
from pipeline.data.index import CONVERTED, USABLE, FolderIndex, load_index
from pipeline.data.splits import DEFAULT_SIDE, SPLITS, DatasetSplits, Split, capped, holdout_size

logger = logging.getLogger(__name__)

DEFAULT_CHANNELS = 3
FOLDER_SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
# When set, every worker appends the path of each file it reads to `<dir>/reads-<pid>.txt`:
# how the multi-worker test counts what each process read.
READ_LOG_VARIABLE = "CONVNETS_READ_LOG"


def load_folder(root: Path, config: DataConfig, seed: int) -> DatasetSplits:
    """The folder's splits, streamed from its usable files; what cannot be used is skipped and counted."""
    class_names, candidates, note = _folder_layout(root, config, seed)
    if not candidates["train"]:
        raise UserError(f"image folder {root} has no files in its class folders")
    image_shape = (config.image_size or DEFAULT_SIDE, config.image_size or DEFAULT_SIDE,
                   config.channels or DEFAULT_CHANNELS)  # fmt: skip
    capped_candidates = {
        role: candidates[role][: capped(len(candidates[role]), config.max_train_examples if role == "train" else config.max_eval_examples)]
        for role in SPLITS
    }  # fmt: skip
    prefix = len(str(root)) + 1  # candidates are f"{root}/..." strings (os.walk from root)
    relative = {role: [path[prefix:] for path, _ in files] for role, files in capped_candidates.items()}
    index = load_index(root, [name for role in SPLITS for name in relative[role]], config.cache_dir)

    splits, skipped = {}, []
    for role in SPLITS:
        usable = [(name, label) for name, (_, label) in zip(relative[role], capped_candidates[role])
                  if index.entries[name].status in (USABLE, CONVERTED)]  # fmt: skip
        skipped += [(index.entries[name].status, name) for name in relative[role] if index.entries[name].status not in (USABLE, CONVERTED)]
        splits[role] = _file_split(index, usable, image_shape, role)
        if role == "train":
            labels = np.array([label for _, label in usable], np.int64)
            if not len(labels):
                raise UserError(f"image folder {root}: none of its training files could be decoded")
            empty_classes = [name for label, name in enumerate(class_names) if not np.any(labels == label)]
            if empty_classes:
                logger.warning("folder:%s: no training images for class %s", root, ", ".join(empty_classes))
    reasons = Counter(reason for reason, _ in skipped)
    if reasons:
        scanned = sum(split.size for split in splits.values()) + len(skipped)
        first = {reason: name for reason, name in reversed(skipped)}  # reversed: the first file of each reason wins
        summary = ", ".join(f"{count} {reason} (e.g. {first[reason]})" for reason, count in reasons.most_common())
        logger.warning("folder:%s: skipped %d of %d files: %s", root, len(skipped), scanned, summary)
    return DatasetSplits(
        splits,
        class_names=class_names,
        image_shape=image_shape,
        source=f"image folder {root} ({note})",
        skipped=dict(reasons),
    )


def _file_split(index: FolderIndex, files: list[tuple[str, int]], image_shape: tuple[int, int, int], role: str) -> Split:
    """Records `(path, label, orientation)` of usable files, decoded by `decode_image`."""
    paths = [index.readable_path(name) for name, _ in files]  # strings: no Path per file
    labels = np.array([label for _, label in files], np.int64)
    orientations = np.array([index.entries[name].orientation for name, _ in files], np.int32)
    records = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), labels, orientations))
    read_log = os.environ.get(READ_LOG_VARIABLE)
    all_upright = bool(np.all(orientations == 1))  # then the graph has no rotation step at all
    known = known_files([index.entries[name].probe for name, _ in files], image_shape)

    def decode(path: tf.Tensor, label: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        encoded = tf.io.read_file(path)
        if read_log:
            tf.print(role, path, output_stream=f"file://{read_log}/reads-{os.getpid()}.txt")
        return decode_image(encoded, image_shape, 1 if all_upright else orientation, known), label

    contents = "\n".join(f"{name} {index.entries[name].size} {index.entries[name].mtime_ns} {label}" for name, label in files)
    fingerprint = f"folder {hashlib.sha256(contents.encode()).hexdigest()[:16]} {role} {image_shape}"
    return Split(records, len(files), decode=decode, small_records=True, fingerprint=fingerprint)


# ----------------------------------------------------------------------------- layout

def _visible_children(directory: Path) -> list[Path]:
    """Sorted entries, without hidden ones (.DS_Store, .ipynb_checkpoints, AppleDouble ._x)."""
    return sorted(child for child in directory.iterdir() if not child.name.startswith("."))


def _class_folders(directory: Path) -> list[Path]:
    return [child for child in _visible_children(directory) if child.is_dir()]


def _files_under(directory: Path) -> list[str]:
    """Every visible file below a class folder, at any depth, in sorted order (paths as strings).

    `os.walk` reads each directory once (scandir: no stat per file), and strings sort and slice
    far faster than `Path`s: this is most of a second run's start-up on a folder of 100,000.
    """
    found = []
    for parent, subfolders, names in os.walk(directory):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [f"{parent}/{name}" for name in names if not name.startswith(".")]
    return sorted(found)


def _folder_candidates(split_dir: Path, class_index: dict[str, int], root: Path) -> list[tuple[str, int]]:
    candidates = []
    for class_dir in _class_folders(split_dir):
        if class_dir.name not in class_index:
            raise UserError(f"class folder {class_dir.relative_to(root)} has no counterpart in {root / 'train'}")
        label = class_index[class_dir.name]
        candidates += [(path, label) for path in _files_under(class_dir)]
    return candidates


def _stratified_holdouts(
    candidates: list[tuple[str, int]], fraction: float, count: int, seed: int
) -> list[list[tuple[str, int]]]:
    """[rest, holdout_1, ..., holdout_count]: per class, a seeded `fraction` for each holdout.

    Each class keeps at least one example in `rest`; a class's draw depends only on the seed
    and its label, so adding a class does not reshuffle the others.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for candidate in candidates:
        by_class.setdefault(candidate[1], []).append(candidate)
    parts: list[list[tuple[str, int]]] = [[] for _ in range(count + 1)]
    for label, members in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(members))
        size = min(holdout_size(len(members), fraction), (len(members) - 1) // count)
        for holdout in range(count):
            parts[holdout + 1] += [members[index] for index in order[holdout * size : (holdout + 1) * size]]
        parts[0] += [members[index] for index in order[count * size :]]
    return parts


def _folder_layout(
    root: Path, config: DataConfig, seed: int
) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]], str]:
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


