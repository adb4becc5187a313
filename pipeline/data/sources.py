"""Which source `data.dataset` names, and the built-in datasets (Fashion-MNIST, MNIST).

    fashion_mnist, mnist  TFDS's prepared copy, else Debian's IDX files
                          (/usr/share/datasets/fashion-mnist), else a TFDS download
    idx:DIR               MNIST-format IDX files, gzipped or not
    tfds:NAME             any TFDS image classification dataset ("image" and "label" features)
    folder:PATH or DIR    one subfolder per class, optionally under train/ val/ test/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from architectures.errors import UserError
from pipeline.config import DataConfig
from pipeline.data.idx import find_idx_files, load_idx
from pipeline.data.splits import DatasetSplits
from pipeline.data.tfds_source import download, splits_from_tfds, tfds_builder

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


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




def load_builtin(name: str, config: DataConfig) -> DatasetSplits:
    """TFDS's prepared copy, else Debian's IDX files, else (if allowed) a TFDS download."""
    builtin = BUILTIN_DATASETS[name]
    title, class_names = builtin.title, builtin.class_names
    builder = tfds_builder(name, config.data_dir)
    if builder.is_prepared():  # looks at files only; never downloads
        return splits_from_tfds(builder, config, class_names, f"{title} from TFDS in {builder.data_dir}")
    if find_idx_files(builtin.debian_dir) is not None:
        return load_idx(builtin.debian_dir, config, class_names, f"{title} IDX files in {builtin.debian_dir}")
    if not config.download:
        raise UserError(
            f"{name}: no prepared TFDS copy in {builder.data_dir_root}, no IDX files in {builtin.debian_dir}, "
            "and data.download is false; set data.download: true or data.data_dir"
        )
    download(builder)
    return splits_from_tfds(builder, config, class_names, f"{title} downloaded by TFDS to {builder.data_dir}")

