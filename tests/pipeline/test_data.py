"""pipeline/data on real data: a TFDS dataset prepared in tmp_path, IDX files and image
folders written here, and Debian's Fashion-MNIST files when installed."""

import gzip
import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from architectures.errors import UserError
from pipeline.config import DataConfig
from pipeline.data import (
    FASHION_MNIST_CLASSES,
    DatasetSource,
    Split,
    channel_statistics,
    decode_files,
    decode_image_file,
    load_splits,
    model_inputs,
    parse_dataset,
    train_pipeline,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def as_arrays(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (images, labels) of an unbatched split."""
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(4096):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)


def indexed_split(count: int, side: int = 4) -> Split:
    """Example i: a (side, side, 1) image filled with i, label i."""
    images = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, side, side, 1), np.uint8)
    return Split(tf.data.Dataset.from_tensor_slices((images, np.arange(count, dtype=np.int64))), count)


def epoch_indices(dataset: tf.data.Dataset) -> list[int]:
    """The example indices of one epoch, in order, read back from the images."""
    return [int(index) for images, _ in dataset for index in images.numpy()[:, 0, 0, 0]]


# ----------------------------------------------------------------------------- TFDS


class ConvnetsTestTinyImages(tfds.core.GeneratorBasedBuilder):
    """40 train and 10 test 8x8 RGB images (every pixel = the example's index), 2 classes."""

    VERSION = tfds.core.Version("1.0.0")
    # No code folder, so no checksums file to look for. (Looking for one imports
    # `importlib_resources`, which tfds 4.9.10 uses but declares only for Python < 3.9.)
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["even", "odd"]),
            }),
            supervised_keys=("image", "label"),
        )  # fmt: skip

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(40)), "test": self._generate_examples(range(100, 110))}

    def _generate_examples(self, indices):
        for index in indices:
            yield index, {"image": np.full((8, 8, 3), index, np.uint8), "label": index % 2}


class ConvnetsTestTinyImagesTrainVal(ConvnetsTestTinyImages):
    """The same images published as train and validation splits, with no test split."""

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(40)), "validation": self._generate_examples(range(100, 110))}


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    ConvnetsTestTinyImages(data_dir=str(data_dir)).download_and_prepare()
    ConvnetsTestTinyImagesTrainVal(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def test_tfds_dataset_is_read_from_a_local_data_dir_with_validation_carved_from_train(tfds_data_dir):
    config = DataConfig(dataset="tfds:convnets_test_tiny_images", data_dir=str(tfds_data_dir), download=False,
                        validation_fraction=0.25)  # fmt: skip
    splits = load_splits(config, seed=0)
    assert splits.class_names == ("even", "odd")
    assert splits.image_shape == (8, 8, 3)
    assert splits.num_examples == {"train": 30, "validation": 10, "test": 10}
    train_images, train_labels = as_arrays(splits.train)
    validation_images, _ = as_arrays(splits.validation)
    test_images, test_labels = as_arrays(splits.test)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    train_indices, validation_indices = set(train_images[:, 0, 0, 0]), set(validation_images[:, 0, 0, 0])
    assert not train_indices & validation_indices and len(train_indices | validation_indices) == 40
    assert np.array_equal(train_labels, train_images[:, 0, 0, 0] % 2)
    assert sorted(test_images[:, 0, 0, 0]) == list(range(100, 110))
    assert np.array_equal(test_labels, test_images[:, 0, 0, 0] % 2)
    assert "validation is 25% of train" in splits.source
    again = load_splits(config, seed=1)
    assert np.array_equal(as_arrays(again.validation)[0], validation_images)


def test_tfds_validation_split_becomes_the_test_set_when_there_is_no_test_split(tfds_data_dir):
    config = DataConfig(dataset="tfds:convnets_test_tiny_images_train_val", data_dir=str(tfds_data_dir),
                        download=False, validation_fraction=0.1)  # fmt: skip
    splits = load_splits(config, seed=0)
    assert splits.num_examples == {"train": 36, "validation": 4, "test": 10}
    assert sorted(as_arrays(splits.test)[0][:, 0, 0, 0]) == list(range(100, 110))
    assert "test is the validation split" in splits.source


def test_tfds_images_are_resized_converted_and_capped(tfds_data_dir):
    config = DataConfig(dataset="tfds:convnets_test_tiny_images", data_dir=str(tfds_data_dir), download=False,
                        image_size=16, channels=1, max_train_examples=5, max_eval_examples=3)  # fmt: skip
    splits = load_splits(config, seed=0)
    assert splits.image_shape == (16, 16, 1)
    assert splits.num_examples == {"train": 5, "validation": 3, "test": 3}
    images, _ = as_arrays(splits.train)
    assert images.shape == (5, 16, 16, 1)
    assert np.all(images == images[:, :1, :1, :])  # a flat grey RGB image stays flat and keeps its value


def test_tfds_without_download_never_fetches_a_missing_dataset(tmp_path):
    config = DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path), download=False)
    with pytest.raises(UserError, match="not prepared.*download is false"):
        load_splits(config, seed=0)
    assert not any(tmp_path.rglob("*.tfrecord*"))


def test_unknown_tfds_name_suggests_close_names():
    with pytest.raises(UserError, match="did you mean.*cifar10"):
        load_splits(DataConfig(dataset="tfds:cifar_10", download=False), seed=0)


# ----------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dir(directory: Path, *, gzipped: bool, train_count: int = 20, test_count: int = 5) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    contents = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train_count, 6, 6), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(train_count) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test_count, 6, 6), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(test_count) % 3).astype(np.uint8),
    }
    for name, array in contents.items():
        if gzipped:
            (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzipped", "plain"])
def test_idx_directory_gives_last_fraction_as_validation(tmp_path, gzipped):
    write_idx_dir(tmp_path, gzipped=gzipped)
    splits = load_splits(DataConfig(dataset=f"idx:{tmp_path}", validation_fraction=0.25), seed=0)
    assert splits.class_names == ("0", "1", "2")
    assert splits.image_shape == (6, 6, 1)
    assert splits.num_examples == {"train": 15, "validation": 5, "test": 5}
    _, validation_labels = as_arrays(splits.validation)
    assert validation_labels.tolist() == [index % 3 for index in range(15, 20)]


def test_idx_class_names_come_from_classes_txt_and_images_convert_to_rgb(tmp_path):
    write_idx_dir(tmp_path, gzipped=True)
    (tmp_path / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    splits = load_splits(DataConfig(dataset=f"idx:{tmp_path}", image_size=12, channels=3), seed=0)
    assert splits.class_names == ("circle", "square", "triangle")
    images, _ = as_arrays(splits.test)
    assert images.shape == (5, 12, 12, 3)
    assert np.array_equal(images[..., 0], images[..., 2])


def test_malformed_idx_file_is_a_user_error_naming_it(tmp_path):
    write_idx_dir(tmp_path, gzipped=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is not an IDX file"):
        load_splits(DataConfig(dataset=f"idx:{tmp_path}"), seed=0)


def test_idx_file_shorter_than_its_header_says_is_a_user_error(tmp_path):
    write_idx_dir(tmp_path, gzipped=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(UserError, match="train-images-idx3-ubyte holds"):
        load_splits(DataConfig(dataset=f"idx:{tmp_path}"), seed=0)


def test_idx_validation_fraction_leaving_no_training_examples_is_a_user_error(tmp_path):
    write_idx_dir(tmp_path, gzipped=True)
    with pytest.raises(UserError, match="too few to hold out 98%"):
        load_splits(DataConfig(dataset=f"idx:{tmp_path}", validation_fraction=0.98), seed=0)


def test_idx_directory_without_the_files_lists_what_it_expected(tmp_path):
    with pytest.raises(UserError, match="expected train-images-idx3-ubyte"):
        load_splits(DataConfig(dataset=f"idx:{tmp_path}"), seed=0)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason=f"{DEBIAN_FASHION_MNIST} absent (Debian package dataset-fashion-mnist)"
)
def test_fashion_mnist_reads_debian_idx_files_when_tfds_has_no_copy(tmp_path):
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    splits = load_splits(config, seed=0)
    assert "IDX files" in splits.source
    assert splits.class_names == FASHION_MNIST_CLASSES
    assert splits.image_shape == (28, 28, 1)
    assert splits.num_examples == {"train": 54_000, "validation": 6_000, "test": 10_000}
    images, labels = as_arrays(splits.test)
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [1_000] * 10  # Fashion-MNIST's test set is balanced


@pytest.mark.skipif(Path("/usr/share/datasets/mnist").exists(), reason="a local MNIST copy exists")
def test_mnist_without_any_local_copy_and_no_download_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=r"no prepared TFDS copy in .*no IDX files in /usr/share/datasets/mnist"):
        load_splits(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False), seed=0)


# ----------------------------------------------------------------------------- image folders


def solid(size: tuple[int, int], colour, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def write_class_images(folder: Path, values: list[int]) -> None:
    """Lossless 10x10 grey PNGs whose pixel value identifies them."""
    folder.mkdir(parents=True, exist_ok=True)
    for value in values:
        solid((10, 10), value, "L").save(folder / f"{value:03d}.png")


def test_folder_without_splits_is_split_per_class_with_the_seed(tmp_path):
    for class_index, name in enumerate(["cat", "dog", "fox"]):
        write_class_images(tmp_path / name, [class_index * 10 + index for index in range(10)])
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=8, validation_fraction=0.2)
    splits = load_splits(config, seed=0)
    assert splits.class_names == ("cat", "dog", "fox")
    assert splits.image_shape == (8, 8, 3)
    assert splits.num_examples == {"train": 18, "validation": 6, "test": 6}
    assert splits.skipped == {}
    values = {}
    for role in ("train", "validation", "test"):
        images, labels = as_arrays(getattr(splits, role))
        values[role] = set(images[:, 0, 0, 0].tolist())
        assert np.array_equal(labels, images[:, 0, 0, 0] // 10)
        assert np.bincount(labels, minlength=3).tolist() == ([6, 6, 6] if role == "train" else [2, 2, 2])
    assert set().union(*values.values()) == set(range(30))
    same_seed = load_splits(config, seed=0)
    assert set(as_arrays(same_seed.validation)[0][:, 0, 0, 0].tolist()) == values["validation"]
    other_seed = load_splits(config, seed=1)
    assert set(as_arrays(other_seed.validation)[0][:, 0, 0, 0].tolist()) != values["validation"]


def test_folder_split_folders_are_used_and_a_missing_test_is_carved_from_train(tmp_path, caplog):
    write_class_images(tmp_path / "train" / "a", list(range(0, 10)))
    write_class_images(tmp_path / "train" / "b", list(range(10, 20)))
    write_class_images(tmp_path / "val" / "a", [100])
    write_class_images(tmp_path / "val" / "b", [110])
    with caplog.at_level(logging.INFO, logger="pipeline.data"):
        splits = load_splits(DataConfig(dataset=f"folder:{tmp_path}", image_size=8, channels=1), seed=0)
    assert splits.class_names == ("a", "b")
    assert splits.image_shape == (8, 8, 1)
    assert splits.num_examples == {"train": 18, "validation": 2, "test": 2}
    validation_images, validation_labels = as_arrays(splits.validation)
    assert sorted(zip(validation_images[:, 0, 0, 0].tolist(), validation_labels.tolist())) == [(100, 0), (110, 1)]
    assert "test carved from train" in caplog.text


def test_folder_class_only_in_validation_is_a_user_error(tmp_path):
    write_class_images(tmp_path / "train" / "a", [1])
    write_class_images(tmp_path / "train" / "b", [2])
    write_class_images(tmp_path / "val" / "c", [3])
    with pytest.raises(UserError, match="no counterpart"):
        load_splits(DataConfig(dataset=f"folder:{tmp_path}"), seed=0)


def make_messy_folder(root: Path) -> dict[tuple[int, tuple[int, int, int]], str]:
    """Every kind of file a real folder holds; returns (label, expected RGB) -> file for the decodable ones."""
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    solid((40, 30), (200, 30, 30)).save(cat / "photo.jpg", quality=95)
    solid((25, 25), 128, "L").save(cat / "grey.png")
    solid((64, 48), (30, 200, 30)).save(cat / "with space é.JPG", quality=95)
    solid((50, 50), (255, 0, 0, 0), "CMYK").save(cat / "cmyk.jpg", quality=95)  # full cyan ink
    (cat / "empty.jpg").write_bytes(b"")
    solid((33, 21), (30, 30, 200, 100), "RGBA").save(dog / "translucent.png")
    frames = [solid((20, 20), (220, 220, 30)).convert("P"), solid((20, 20), (0, 0, 0)).convert("P")]
    frames[0].save(dog / "animated.gif", save_all=True, append_images=frames[1:])
    solid((17, 29), (200, 30, 200)).save(dog / "bitmap.bmp")
    truncated = dog / "truncated.jpg"
    Image.effect_noise((200, 200), 50).convert("RGB").save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (dog / "notes.jpg").write_text("this is a text file with a .jpg name\n")
    (dog / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not a candidate at all
    return {
        (0, (200, 30, 30)): "photo.jpg",
        (0, (128, 128, 128)): "grey.png",
        (0, (30, 200, 30)): "with space é.JPG",
        (0, (0, 255, 255)): "cmyk.jpg",
        (1, (30, 30, 200)): "translucent.png",
        (1, (220, 220, 30)): "animated.gif (first frame)",
        (1, (200, 30, 200)): "bitmap.bmp",
    }


def test_messy_folder_decodes_every_decodable_file_and_counts_the_rest(tmp_path, caplog):
    expected = make_messy_folder(tmp_path)
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=16, validation_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        splits = load_splits(config, seed=0)
    assert splits.skipped == {"empty": 1, "truncated": 1, "not an image": 1}
    assert "skipped 3 of 10 files" in caplog.text
    assert splits.num_examples == {"train": 7, "validation": 0, "test": 0}
    images, labels = as_arrays(splits.train)
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    found = {(int(label), tuple(image.reshape(-1, 3).mean(axis=0))) for image, label in zip(images, labels)}
    for (label, colour), name in expected.items():
        matches = [item for item in found if item[0] == label and np.allclose(item[1], colour, atol=6)]
        assert matches, f"{name}: no class-{label} image of colour {colour} in {sorted(found)}"


def test_messy_folder_in_grayscale_keeps_the_same_files(tmp_path):
    make_messy_folder(tmp_path)
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=12, channels=1, validation_fraction=0.0)
    splits = load_splits(config, seed=0)
    images, _ = as_arrays(splits.train)
    assert images.shape == (7, 12, 12, 1)


def test_folder_caps_keep_every_class(tmp_path):
    write_class_images(tmp_path / "a", list(range(0, 20)))
    write_class_images(tmp_path / "b", list(range(100, 120)))
    splits = load_splits(DataConfig(dataset=f"folder:{tmp_path}", image_size=8, max_train_examples=6), seed=0)
    _, labels = as_arrays(splits.train)
    assert len(labels) == 6 and set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "image folder not found"),
        ("empty", "at least 2 class subfolders, found 0"),
        ("one_class", "at least 2 class subfolders, found 1: only"),
    ],
)
def test_unusable_folder_is_a_one_line_user_error(tmp_path, layout, message):
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        write_class_images(root / "only", [1, 2])
    with pytest.raises(UserError, match=message) as error:
        load_splits(DataConfig(dataset=f"folder:{root}"), seed=0)
    assert "\n" not in str(error.value)


def test_unknown_dataset_kind_is_a_user_error():
    with pytest.raises(UserError, match="data.dataset must be"):
        load_splits(DataConfig(dataset="csv:labels.csv"), seed=0)


# ----------------------------------------------------------------------------- dataset names


def test_dataset_names_parse_to_their_source(tmp_path):
    assert parse_dataset("fashion_mnist") == DatasetSource("builtin", "fashion_mnist")
    assert parse_dataset("tfds:cifar10") == DatasetSource("tfds", "cifar10")
    assert parse_dataset(f"idx:{tmp_path}") == DatasetSource("idx", str(tmp_path))
    assert parse_dataset(f"folder:{tmp_path}") == DatasetSource("folder", str(tmp_path))
    assert parse_dataset(str(tmp_path)) == DatasetSource("folder", str(tmp_path))


def test_known_names_win_over_a_directory_of_the_same_name(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_dataset("mnist") == DatasetSource("builtin", "mnist")
    assert parse_dataset("folder:mnist") == DatasetSource("folder", "mnist")


@pytest.mark.parametrize("dataset", ["csv:labels.csv", "imagenet", "/no/such/photos", "tfds:", "folder:", ""])
def test_unknown_dataset_is_a_one_line_user_error_naming_it_and_the_forms(dataset):
    with pytest.raises(UserError) as error:
        parse_dataset(dataset)
    message = str(error.value)
    assert f"got {dataset!r}" in message
    assert "tfds:NAME, folder:PATH, idx:DIR or the path of an existing directory" in message
    assert "\n" not in message


def test_a_file_is_not_an_image_folder(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"a file, not a directory")
    with pytest.raises(UserError, match="data.dataset must be"):
        parse_dataset(str(tmp_path / "photo.png"))
    with pytest.raises(UserError, match="image folder not found"):
        parse_dataset(f"folder:{tmp_path / 'photo.png'}")


def test_bare_directory_loads_as_the_same_image_folder_as_its_folder_form(tmp_path):
    write_class_images(tmp_path / "a", [1, 2, 3, 4, 5])
    write_class_images(tmp_path / "b", [6, 7, 8, 9, 10])
    bare = load_splits(DataConfig(dataset=str(tmp_path), image_size=8, validation_fraction=0.2), seed=0)
    prefixed = load_splits(DataConfig(dataset=f"folder:{tmp_path}", image_size=8, validation_fraction=0.2), seed=0)
    assert bare.class_names == prefixed.class_names == ("a", "b")
    assert bare.num_examples == prefixed.num_examples == {"train": 6, "validation": 2, "test": 2}
    for role in ("train", "validation", "test"):
        for bare_array, prefixed_array in zip(as_arrays(getattr(bare, role)), as_arrays(getattr(prefixed, role))):
            assert np.array_equal(bare_array, prefixed_array), role


# ----------------------------------------------------------------------------- damaged image files

# The folder decoder, `decode(path, side, channels) -> uint8 (side, side, channels) | skip reason`.
# The tests below take it from here, so a replacement decoder runs through the same tests.
def streamed_decode(path: Path, side: int, channels: int) -> np.ndarray | str:
    """The folder source's path for one file: Pillow's checks, then the graph's decoder."""
    pixels, _, skipped = decode_files([path], (side, side, channels))
    return skipped[0] if skipped else pixels[0]


FOLDER_DECODERS = {"pillow": decode_image_file, "streamed": streamed_decode}
DAMAGED_REASONS = {"not an image", "truncated", "corrupt"}  # what a cut or scrambled file may be called
DECODE_SIDE = 12  # pixels; the samples are 16x16, so decoding also resizes
HEADER_BYTES = 64  # cuts before this fall in the headers, and no sample's pixels fit in so few bytes

# 16x16 noise in every format the folder source meets (it tries Pillow on any file): noise, so
# every body is long; several JPEG, PNG and GIF flavours, since each takes its own decoder path.
SAMPLE_ENCODERS = {
    "baseline.jpg": lambda image, out: image.save(out, "JPEG", quality=90),
    "progressive.jpg": lambda image, out: image.save(out, "JPEG", quality=90, progressive=True),
    "rgb.png": lambda image, out: image.save(out, "PNG"),
    "grey_alpha.png": lambda image, out: image.convert("LA").save(out, "PNG"),
    "palette_transparent.png": lambda image, out: image.quantize(16).save(out, "PNG", transparency=0),
    "rgb.bmp": lambda image, out: image.save(out, "BMP"),
    "animated.gif": lambda image, out: image.save(out, "GIF", save_all=True, append_images=[image.rotate(90)]),
    "rgb.webp": lambda image, out: image.save(out, "WEBP", quality=90),
    "rgb.tiff": lambda image, out: image.save(out, "TIFF"),
}


# Pillow's TIFF plugin warns about each damaged tag it skips: expected for these files.
ignore_damaged_tiff_warnings = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


@pytest.fixture(params=sorted(FOLDER_DECODERS))
def decode(request):
    return FOLDER_DECODERS[request.param]


def encoded_sample(name: str) -> bytes:
    """The 16x16 noise image encoded as `name` (see SAMPLE_ENCODERS)."""
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    SAMPLE_ENCODERS[name](Image.fromarray(noise), buffer)
    return buffer.getvalue()


def decode_file(decode, path: Path, data: bytes) -> np.ndarray | str:
    """`data` written to `path` and decoded; a raised exception fails the test naming the file."""
    path.write_bytes(data)
    try:
        return decode(path, DECODE_SIDE, 3)
    except Exception as error:  # noqa: BLE001 - the failure message names the file that raised
        pytest.fail(f"decoding {path.name} raised {type(error).__name__}: {error}")


def assert_pixels(result, label: str) -> None:
    assert isinstance(result, np.ndarray), f"{label}: {result!r}"
    assert result.shape == (DECODE_SIDE, DECODE_SIDE, 3) and result.dtype == np.uint8, label


def assert_pixels_or_reason(result, reasons: set[str], label: str) -> None:
    if isinstance(result, str):
        assert result in reasons, f"{label}: skipped as {result!r}, expected one of {sorted(reasons)}"
    else:
        assert_pixels(result, label)


def truncation_offsets(size: int) -> list[int]:
    """Every offset inside the headers, then 16 spread over the body."""
    body = np.linspace(HEADER_BYTES, size - 1, 16).astype(int).tolist()
    return sorted({*range(1, HEADER_BYTES), *body} & set(range(1, size)))


@ignore_damaged_tiff_warnings
@pytest.mark.parametrize("name", sorted(SAMPLE_ENCODERS))
def test_file_cut_at_any_offset_is_skipped_as_damaged_never_raised(decode, name, tmp_path):
    data = encoded_sample(name)
    assert_pixels(decode_file(decode, tmp_path / name, data), f"{name} whole")
    for offset in truncation_offsets(len(data)):
        result = decode_file(decode, tmp_path / f"cut{offset}-{name}", data[:offset])
        label = f"{name} cut at byte {offset} of {len(data)}"
        if offset < HEADER_BYTES:
            assert isinstance(result, str), f"{label}: pixels from a header alone"
        assert_pixels_or_reason(result, DAMAGED_REASONS, label)


@ignore_damaged_tiff_warnings
@pytest.mark.parametrize("name", sorted(SAMPLE_ENCODERS))
def test_fuzzed_files_never_stop_the_decoder(decode, name, tmp_path):
    """Seeded damage: a few bytes overwritten (in the header or anywhere), and a real header's
    start followed by random garbage, all with the format's extension."""
    data = encoded_sample(name)
    rng = np.random.default_rng([7, zlib.crc32(name.encode())])
    for trial in range(200):
        if trial % 3 == 2:
            damaged = data[: rng.integers(0, HEADER_BYTES)] + rng.bytes(int(rng.integers(1, 2 * len(data))))
        else:
            damaged = bytearray(data)
            span = HEADER_BYTES if trial % 3 == 0 else len(data)
            for position in rng.integers(0, span, size=rng.integers(1, 9)):
                damaged[position] = rng.integers(0, 256)
        result = decode_file(decode, tmp_path / f"fuzz{trial}-{name}", bytes(damaged))
        assert_pixels_or_reason(result, DAMAGED_REASONS | {"too large"}, f"{name} fuzz trial {trial}")


def test_image_over_the_decompression_bomb_limit_is_skipped_as_too_large(decode, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16 * 16 // 4)  # Pillow refuses over twice this
    assert decode_file(decode, tmp_path / "huge.png", encoded_sample("rgb.png")) == "too large"


def test_empty_and_unreadable_files_are_skipped_with_their_reason(decode, tmp_path):
    assert decode_file(decode, tmp_path / "empty.png", b"") == "empty"
    (tmp_path / "folder.png").mkdir()
    assert decode(tmp_path / "folder.png", DECODE_SIDE, 3) == "unreadable"


def test_folder_with_files_cut_inside_their_headers_skips_and_counts_them(tmp_path, caplog):
    write_class_images(tmp_path / "a", [1, 2, 3])
    write_class_images(tmp_path / "b", [4, 5, 6])
    for name, offset in (("rgb.png", 20), ("rgb.bmp", 30), ("animated.gif", 40), ("baseline.jpg", 50)):
        (tmp_path / "a" / f"cut {name}").write_bytes(encoded_sample(name)[:offset])
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=8, validation_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        splits = load_splits(config, seed=0)
    assert splits.skipped == {"truncated": 3, "not an image": 1}  # Pillow cannot identify a GIF cut in its palette
    assert splits.num_examples == {"train": 6, "validation": 0, "test": 0}
    assert "skipped 4 of 10 files" in caplog.text


# ----------------------------------------------------------------------------- pipelines


def test_train_pipeline_batches_uint8_images_and_integer_labels_dropping_the_remainder():
    config = DataConfig(shuffle_buffer=100)
    dataset = train_pipeline(indexed_split(42), config, global_batch_size=8, seed=0, num_classes=42)
    batches = list(dataset)
    assert len(batches) == 5  # 42 // 8: the last 2 examples are dropped
    images, labels = batches[0]
    assert images.shape == (8, 4, 4, 1) and images.dtype == tf.uint8
    assert labels.shape == (8,) and labels.dtype.is_integer
    assert np.array_equal(labels.numpy(), images.numpy()[:, 0, 0, 0])
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    # No autotune model thread: it can block an epoch's iterator teardown for up to 60 s (pipeline/data.py).
    assert dataset.options().autotune.enabled is False


def test_train_pipeline_reshuffles_each_epoch_and_repeats_with_the_same_seed():
    config = DataConfig(shuffle_buffer=100, deterministic=True)
    dataset = train_pipeline(indexed_split(40), config, global_batch_size=8, seed=7, num_classes=40)
    first_epoch, second_epoch = epoch_indices(dataset), epoch_indices(dataset)
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(40))
    assert first_epoch != second_epoch
    rebuilt = train_pipeline(indexed_split(40), config, global_batch_size=8, seed=7, num_classes=40)
    assert epoch_indices(rebuilt) == first_epoch and epoch_indices(rebuilt) == second_epoch
    other_seed = train_pipeline(indexed_split(40), config, global_batch_size=8, seed=8, num_classes=40)
    assert epoch_indices(other_seed) != first_epoch


def test_train_pipeline_applies_augment_to_whole_converted_batches():
    def add_one(images, labels):
        assert images.dtype == tf.float32 and labels.dtype == tf.float32 and labels.shape[-1] == 16
        return images + 1.0, labels

    config = DataConfig(shuffle_buffer=100)
    dataset = train_pipeline(indexed_split(16), config, global_batch_size=8, seed=0, num_classes=16, augment=add_one)
    for images, labels in dataset:
        assert np.array_equal(images.numpy()[:, 0, 0, 0], np.argmax(labels, axis=1) + 1)
        assert np.all(labels.numpy().sum(axis=1) == 1.0)


def test_model_inputs_converts_uint8_and_integer_labels_and_passes_converted_batches_through():
    images = tf.constant([[[[0]]], [[[255]]]], tf.uint8)
    float_images, one_hot = model_inputs(images, tf.constant([2, 0], tf.int64), num_classes=3)
    assert float_images.dtype == tf.float32 and float_images.numpy().ravel().tolist() == [0.0, 255.0]
    assert one_hot.numpy().tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    mixed = tf.constant([[0.25, 0.75, 0.0]] * 2)  # soft labels (mixup) stay as they are
    same_images, same_labels = model_inputs(float_images, mixed, num_classes=3)
    assert same_images is float_images and same_labels is mixed


def test_train_pipeline_shards_by_input_context_into_disjoint_halves():
    config = DataConfig(shuffle_buffer=100)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = train_pipeline(
            indexed_split(40), config, global_batch_size=8, seed=0, num_classes=40, input_context=context
        )
        assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        batches = list(dataset)
        assert all(images.shape[0] == 4 for images, _ in batches)  # per-replica batch: 8 / 2
        seen.append(set(epoch_indices(dataset)))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(40))


def test_channel_statistics_of_two_solid_images():
    images = np.stack([np.full((3, 3, 3), (10, 20, 30), np.uint8), np.full((3, 3, 3), (30, 40, 50), np.uint8)])
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(2, np.int64)))
    mean, std = channel_statistics(dataset)
    assert mean == pytest.approx([20.0, 30.0, 40.0])
    assert std == pytest.approx([10.0, 10.0, 10.0])
    first_only_mean, first_only_std = channel_statistics(dataset, max_examples=1)
    assert first_only_mean == pytest.approx([10.0, 20.0, 30.0]) and first_only_std == pytest.approx([0.0, 0.0, 0.0])
