"""Data sources to `tf.data`: Fashion-MNIST/MNIST, TFDS datasets, IDX files and image folders.

Every source becomes three `Split`s (`splits.py`): records in a fixed order and the function
that decodes one into `(uint8 image (H, W, C), int64 label)` at one common size. `pipelines.py`
turns the training split into shuffled, sharded, batched epochs; `cache.py` decides whether
decoded images stay in memory, go to a disk cache, or are decoded every epoch.

    sources.py      which source a `data.dataset` string names; Fashion-MNIST and MNIST
    idx.py          IDX files, read whole into memory
    tfds_source.py  TFDS datasets, decoded late, sharded by file per worker
    folder.py       image folders, streamed from disk through a validated index (index.py)
    decode.py       the one image decoder (in the graph) and Pillow's checks
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pipeline.config import CACHE_MODES, DataConfig
from pipeline.data import cache
from pipeline.data.decode import decode_files, decode_image, decode_image_file, probe_image_file
from pipeline.data.folder import load_folder
from pipeline.data.idx import load_idx
from pipeline.data.index import cache_root
from pipeline.data.pipelines import EvaluationImages, channel_statistics, epoch_pipelines, evaluation_images, model_inputs, train_pipeline
from pipeline.data.sources import BUILTIN_DATASETS, FASHION_MNIST_CLASSES, DatasetSource, load_builtin, parse_dataset
from pipeline.data.splits import SPLITS, DatasetSplits, Split, array_split
from pipeline.data.tfds_source import load_tfds
from pipeline.files import exclusive_lock, write_text_atomically

__all__ = [
    "BUILTIN_DATASETS", "CACHE_MODES", "FASHION_MNIST_CLASSES", "SPLITS", "DatasetSource", "DatasetSplits", "EvaluationImages", "Split",
    "array_split", "channel_statistics", "decode_files", "decode_image", "decode_image_file", "epoch_pipelines", "evaluation_images",
    "load_splits", "model_inputs", "parse_dataset", "probe_image_file", "train_pipeline", "training_statistics",
]  # fmt: skip

logger = logging.getLogger(__name__)


def load_splits(config: DataConfig, seed: int) -> DatasetSplits:
    """The train/validation/test splits of `config.dataset`; `seed` fixes folder splits."""
    source = parse_dataset(config.dataset)
    if source.kind == "builtin":
        splits = load_builtin(source.argument, config)
    elif source.kind == "tfds":
        splits = load_tfds(source.argument, config)
    elif source.kind == "idx":
        splits = load_idx(Path(source.argument), config, None, f"IDX files in {source.argument}")
    else:
        splits = load_folder(Path(source.argument), config, seed)
    mode, reason = cache.choose(config.cache, splits)
    splits = cache.apply(splits, mode, reason, config.cache_dir)
    logger.info(
        "data: %s; images %s; %d classes; %d train, %d validation, %d test examples",
        splits.source, "x".join(map(str, splits.image_shape)), len(splits.class_names),
        splits.num_examples["train"], splits.num_examples["validation"], splits.num_examples["test"],
    )  # fmt: skip
    logger.info("data cache: %s (%s)", mode, reason)
    return splits


def training_statistics(splits: DatasetSplits, cache_dir: str | None, max_examples: int = 10_000) -> tuple[list[float], list[float]]:
    """`channel_statistics` of the training split; for streamed sources, kept in the cache directory.

    Streamed from files, 10,000 images take seconds to decode, and every worker needs the same
    numbers: one process computes them (under a lock) and the rest, and later runs, read them.
    """
    train = splits.splits["train"]
    if not train.small_records or train.fingerprint is None:  # in memory already: computing is cheap
        return channel_statistics(splits.train, max_examples)
    directory = cache_root(cache_dir) / "statistics"
    directory.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{train.fingerprint} {max_examples}".encode()).hexdigest()[:24]
    path = directory / f"{key}.json"
    with exclusive_lock(directory / f"{key}.lock"):
        if not path.is_file():
            mean, std = channel_statistics(splits.train, max_examples)
            write_text_atomically(path, json.dumps({"mean": mean, "std": std}))
    saved = json.loads(path.read_text())
    return saved["mean"], saved["std"]
