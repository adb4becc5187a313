"""TFDS image classification datasets (`tfds:NAME`): read from their prepared files, decoded late.

Records are the stored encoded images (`SkipDecoding`), so shuffling, per-worker sharding and
resuming work on bytes, and only what a worker trains on is decoded. Under multi-worker
training each worker reads its own files (`tfds.ReadConfig(input_context=...)`) when the split
has at least one file per worker; otherwise every worker reads all and decodes its share.
"""

from __future__ import annotations

import difflib
import logging

import tensorflow as tf
import tensorflow_datasets as tfds

from architectures.errors import UserError
from pipeline.config import DataConfig
from pipeline.data.splits import DatasetSplits, Split, capped, empty_split, holdout_size, image_converter, target_shape

logger = logging.getLogger(__name__)

def tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
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


def load_tfds(name: str, config: DataConfig) -> DatasetSplits:
    """A prepared TFDS dataset; downloaded first only if `data.download` allows it."""
    builder = tfds_builder(name, config.data_dir)
    if not builder.is_prepared():
        if not config.download:
            raise UserError(
                f"tfds:{name} is not prepared in {builder.data_dir_root} and data.download is false; "
                "set data.download: true or data.data_dir to where it is prepared"
            )
        download(builder)
    return splits_from_tfds(builder, config, None, f"TFDS {name} in {builder.data_dir}")


def download(builder: tfds.core.DatasetBuilder) -> None:
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
    holdout = holdout_size(split_sizes["train"], fraction)
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


def splits_from_tfds(
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
    image_shape = target_shape(source_shape, config, name)
    converter = image_converter(source_shape, image_shape)
    ranges, note = _tfds_split_ranges(split_sizes, config.validation_fraction, name)

    image_feature = info.features["image"]

    def decode(example: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        return converter(image_feature.decode_example(example["image"])), tf.cast(example["label"], tf.int64)

    splits = {}
    for role, (split, start, end) in ranges.items():
        end = start + capped(end - start, config.max_train_examples if role == "train" else config.max_eval_examples)
        if end == start:
            splits[role] = empty_split(image_shape)
            continue
        selection = f"{split}[{start}:{end}]"
        splits[role] = Split(
            _encoded_examples(builder, selection, None),
            end - start,
            decode=decode,
            fingerprint=f"tfds {builder.name} {builder.version} {builder.data_dir} {selection} {image_shape}",
            records_for_worker=_worker_files(builder, selection),
        )
    return DatasetSplits(
        splits,
        class_names=class_names or tuple(info.features["label"].names),
        image_shape=image_shape,
        source=source + note,
        skipped={},
    )


def _encoded_examples(
    builder: tfds.core.DatasetBuilder, selection: str, input_context: tf.distribute.InputContext | None
) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(input_context=input_context) if input_context is not None else None
    return builder.as_dataset(
        split=selection, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}, read_config=read_config
    )


def _worker_files(builder: tfds.core.DatasetBuilder, selection: str):
    """`input_context -> this worker's files`, or None when a worker would get no file."""
    files = len(builder.info.splits[selection].file_instructions)

    def records_for_worker(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        if files < input_context.num_input_pipelines:
            return _encoded_examples(builder, selection, None).shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        return _encoded_examples(builder, selection, input_context)

    return records_for_worker
