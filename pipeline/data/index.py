"""The validated index of an image folder, kept in a cache directory between runs.

A folder of photos is only usable once every file is known to decode: one bad file must be
skipped and reported before training, not crash an epoch an hour in. Decoding everything up
front and keeping the pixels (as the first version did) costs RAM in proportion to the folder,
so instead one scan checks each file with the decoder training will use and writes an index:
path, size, mtime, status (usable, converted, or the reason it is skipped), EXIF orientation,
and the header's format and pixel size (which let the decoder settle per-image choices once).
Training then streams the usable files from disk. A second run on an unchanged folder only
compares sizes and mtimes, and re-checks new or changed files. This is the index approach of
issue 11 rather than TFDS's prepared shards: the user's folder stays the source of truth, and
nothing the size of the dataset is copied.

Files TensorFlow cannot read (TIFF and rarer formats) but Pillow can are converted once to PNG
inside the cache directory. A lock file lets one process scan while the others (workers of one
job) wait and then read its index.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.data.decode import TENSORFLOW_FORMATS, Probe, decode_image, probe_image_file, upright_png
from pipeline.files import exclusive_lock, write_bytes_atomically, write_text_atomically

logger = logging.getLogger(__name__)

INDEX_VERSION = 2  # bump when the checks or the fields change, so old indexes are rebuilt (2: format and size)
USABLE, CONVERTED = "ok", "converted"
CHECK_SHAPE = (8, 8, 3)  # the check decodes fully (truncation shows) but resizes to almost nothing
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class IndexEntry:
    size: int
    mtime_ns: int
    status: str  # USABLE, CONVERTED, or the reason the file is skipped ("truncated", ...)
    orientation: int  # EXIF 1..8, applied by `decode_image`; 1 for converted copies (already upright)
    format: str = ""  # Pillow's name, for USABLE files
    width: int = 0  # pixels as stored (before orientation), for USABLE files
    height: int = 0

    @property
    def probe(self) -> Probe | None:
        """The header as the decoder reads it; None for a converted copy or a skipped file."""
        return Probe(self.format, self.width, self.height, self.orientation) if self.status == USABLE else None


@dataclass(frozen=True)
class FolderIndex:
    root: Path
    directory: Path  # this folder's cache directory
    entries: dict[str, IndexEntry]  # path relative to root -> entry
    checked: int  # files checked by this scan (the rest were unchanged)

    def readable_path(self, relative: str) -> str:
        """Where the decoder reads `relative` from: the file itself or its converted copy."""
        if self.entries[relative].status == CONVERTED:
            return str(self.directory / "converted" / converted_name(relative))
        return f"{self.root}/{relative}"


def cache_root(cache_dir: str | None) -> Path:
    """`data.cache_dir`, or $XDG_CACHE_HOME/convnets (default ~/.cache/convnets) when it is unset."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convnets"


def folder_cache_dir(root: Path, cache_dir: str | None) -> Path:
    """One directory per image folder (by its absolute path) under the cache directory."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "folders" / f"{root.name}-{key}"


def converted_name(relative: str) -> str:
    return hashlib.sha256(relative.encode()).hexdigest()[:24] + ".png"


def load_index(root: Path, relative_paths: list[str], cache_dir: str | None) -> FolderIndex:
    """The index of `relative_paths` under `root`: read from the cache, re-checking what changed."""
    directory = folder_cache_dir(root, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory / "index.lock"):
        old = _read_index(directory / "index.json")
        stats = _stat_all(root, relative_paths)
        entries, to_check = {}, []
        for relative, stat in zip(relative_paths, stats):
            previous = old.get(relative)
            if stat is None:
                entries[relative] = IndexEntry(0, 0, "unreadable", 1)
            elif previous is not None and (previous.size, previous.mtime_ns) == stat:
                entries[relative] = previous
            else:
                to_check.append((relative, stat))
        if to_check:
            entries.update(_check_files(root, directory, to_check))
        if to_check or set(old) != set(entries):
            payload = {"version": INDEX_VERSION, "root": str(root.resolve()), "entries": {
                relative: [entry.size, entry.mtime_ns, entry.status, entry.orientation, entry.format, entry.width, entry.height]
                for relative, entry in entries.items()
            }}  # fmt: skip
            write_text_atomically(directory / "index.json", json.dumps(payload, separators=(",", ":")))
    return FolderIndex(root, directory, entries, checked=len(to_check))



def _read_index(path: Path) -> dict[str, IndexEntry]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(payload, dict) or payload.get("version") != INDEX_VERSION:
        return {}
    return {relative: IndexEntry(*fields) for relative, fields in payload["entries"].items()}


def _stat_all(root: Path, relative_paths: list[str]) -> list[tuple[int, int] | None]:
    prefix = f"{root}/"

    def stat_chunk(chunk: list[str]) -> list[tuple[int, int] | None]:
        stats = []
        for relative in chunk:
            try:
                result = os.stat(prefix + relative)
            except OSError:
                stats.append(None)
                continue
            stats.append((result.st_size, result.st_mtime_ns))
        return stats

    # Threads over chunks: on a network file system each stat is a round trip, and one future
    # per file cost more than the stats themselves (4 s of futures for 100,000 local files).
    chunks = [relative_paths[start : start + 2048] for start in range(0, len(relative_paths), 2048)]
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        return [stat for chunk in executor.map(stat_chunk, chunks) for stat in chunk]


def _check_files(root: Path, directory: Path, files: list[tuple[str, tuple[int, int]]]) -> dict[str, IndexEntry]:
    """Probe each header, decode each file with the training decoder, convert what only Pillow reads."""
    started = time.perf_counter()
    logger.info("folder:%s: checking %d new or changed files (the index is in %s)", root, len(files), directory)
    with concurrent.futures.ThreadPoolExecutor() as executor:  # Pillow releases the GIL on file I/O
        probes = list(executor.map(lambda item: probe_image_file(root / item[0]), files, chunksize=64))
    decodable = [index for index, probe in enumerate(probes) if isinstance(probe, Probe) and probe.format in TENSORFLOW_FORMATS]
    failed = _failing_tensorflow_decodes([str(root / files[index][0]) for index in decodable], started, len(files))
    rejected = {decodable[position] for position in failed}
    needs_pillow = [
        index for index, probe in enumerate(probes)
        if isinstance(probe, Probe) and (probe.format not in TENSORFLOW_FORMATS or index in rejected)
    ]  # fmt: skip
    statuses: dict[int, str] = {index: probe for index, probe in enumerate(probes) if isinstance(probe, str)}
    for index in needs_pillow:
        statuses[index] = _convert(root / files[index][0], directory / "converted" / converted_name(files[index][0]))
    entries = {}
    for index, (relative, (size, mtime_ns)) in enumerate(files):
        status = statuses.get(index, USABLE)
        if status == USABLE:
            probe = probes[index]
            entries[relative] = IndexEntry(size, mtime_ns, status, probe.orientation, probe.format, probe.width, probe.height)
        else:
            entries[relative] = IndexEntry(size, mtime_ns, status, 1)
    seconds = time.perf_counter() - started
    logger.info("folder:%s: checked %d files in %.1f s (%.0f files/s)", root, len(files), seconds, len(files) / max(seconds, 1e-9))
    return entries


def _failing_tensorflow_decodes(paths: list[str], started: float, total: int) -> list[int]:
    """Positions in `paths` that `decode_image` rejects, found with every core in parallel."""
    positions = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), tf.constant(paths, tf.string)))
    decoded = positions.map(
        # The pixels themselves: the decoded shape is static, so asking for it would let the
        # graph optimiser skip the decode.
        lambda position, path: (position, tf.reduce_max(decode_image(tf.io.read_file(path), CHECK_SHAPE))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()  # an error drops the element, so the missing positions are the failures
    passed = np.zeros(len(paths), bool)
    last_report = time.perf_counter()
    for count, (position, _) in enumerate(decoded.as_numpy_iterator(), start=1):
        passed[position] = True
        if time.perf_counter() - last_report > PROGRESS_SECONDS:
            last_report = time.perf_counter()
            logger.info("  decoded %d of %d files (%.0f files/s)", count, total, count / (last_report - started))
    return np.flatnonzero(~passed).tolist()


def _convert(path: Path, destination: Path) -> str:
    """CONVERTED after writing Pillow's upright pixels as a PNG the decoder reads, else the reason."""
    encoded = upright_png(path)
    if isinstance(encoded, str):
        return encoded
    try:
        decode_image(encoded, CHECK_SHAPE)
    except tf.errors.InvalidArgumentError:  # e.g. a damaged TIFF header declaring 16 x 1,048,576
        return "corrupt"
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(destination, encoded)
    return CONVERTED
