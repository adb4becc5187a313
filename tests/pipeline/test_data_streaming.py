"""Image folders streamed from disk (pipeline/data): the validated index and its reuse, the one
decoder (EXIF orientation, converted formats), `data.cache` modes, per-worker shards and
resuming without decoding, on real files and real worker processes."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pipeline.config import DataConfig
from pipeline.data import (
    Split, cache, decode_files, decode_image, epoch_pipelines, evaluation_images, load_splits, train_pipeline, training_statistics,
)
from pipeline.data.decode import KnownFiles, Probe, known_files
from pipeline.data.folder import READ_LOG_VARIABLE
from pipeline.data.index import folder_cache_dir, load_index
from tests.cli import TINY_RUN, run_cli

CLASSES = 3
PER_CLASS = 16


def write_folder(root: Path, per_class: int = PER_CLASS, size: tuple[int, int] = (24, 20)) -> Path:
    """`CLASSES` class folders of noisy JPEGs whose mean colour says their class."""
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 40, (size[1], size[0], 3)) + 80 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.jpg", quality=90)
    return root


def folder_config(root: Path, tmp_path: Path, **overrides) -> DataConfig:
    settings = {"dataset": f"folder:{root}", "image_size": 16, "validation_fraction": 0.0, "cache_dir": str(tmp_path / "cache")}
    return DataConfig(**{**settings, **overrides})


def as_arrays(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset.batch(4096).as_numpy_iterator())
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])


def read_paths(log_dir: Path, role: str = "train") -> dict[str, list[str]]:
    """Per process log file: the files of split `role` it read, in order."""
    reads = {}
    for log in sorted(log_dir.glob("reads-*.txt")):
        lines = [line.split(" ", 1) for line in log.read_text().splitlines() if line]
        reads[log.name] = [path for split, path in lines if split == role]
    return reads


# ----------------------------------------------------------------------------- the index


def test_second_load_of_an_unchanged_folder_checks_nothing_and_a_change_checks_only_it(tmp_path, caplog):
    root = write_folder(tmp_path / "photos")
    names = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.jpg"))
    first = load_index(root, names, str(tmp_path / "cache"))
    assert first.checked == len(names) and all(entry.status == "ok" for entry in first.entries.values())
    assert load_index(root, names, str(tmp_path / "cache")).checked == 0

    changed = root / names[0]
    changed.write_bytes(changed.read_bytes()[:100])  # now truncated
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000))
    (root / "class0" / "new.jpg").write_bytes((root / names[1]).read_bytes())
    index = load_index(root, [*names, "class0/new.jpg"], str(tmp_path / "cache"))
    assert index.checked == 2
    assert index.entries[names[0]].status == "truncated" and index.entries["class0/new.jpg"].status == "ok"
    assert load_index(root, names[1:], str(tmp_path / "cache")).checked == 0  # a removed file is just dropped


def test_folder_split_streams_paths_and_decodes_like_the_one_decoder(tmp_path):
    root = write_folder(tmp_path / "photos")
    splits = load_splits(folder_config(root, tmp_path), seed=0)
    train = splits.splits["train"]
    assert train.small_records and train.size == CLASSES * PER_CLASS
    paths, labels, _ = next(iter(train.records.batch(1000)))
    assert all(Path(path.decode()).is_file() for path in paths.numpy())  # records are paths, not pixels
    images, decoded_labels = as_arrays(splits.train)
    expected, kept, skipped = decode_files([Path(path.decode()) for path in paths.numpy()], (16, 16, 3))
    assert not skipped and kept == list(range(len(kept)))
    assert np.array_equal(images, expected) and np.array_equal(decoded_labels, labels.numpy())
    class_means = [images[decoded_labels == label].mean() for label in range(CLASSES)]
    assert class_means == sorted(class_means)  # class k is brighter than class k - 1: labels follow folders


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"  # PNG: lossless, so the comparison is exact
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    decoded, kept, _ = decode_files([path], upright.shape)  # at its own size: no resize
    assert kept == [0] and np.array_equal(decoded[0], upright)


def test_format_tensorflow_cannot_read_is_converted_once_into_the_cache(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=4)
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(root / "class1" / "scan.tiff")
    config = folder_config(root, tmp_path)
    splits = load_splits(config, seed=0)
    assert splits.num_examples["train"] == CLASSES * 4 + 1 and not splits.skipped
    converted = list((folder_cache_dir(root, config.cache_dir) / "converted").glob("*.png"))
    assert len(converted) == 1
    images, _ = as_arrays(splits.train)
    assert any(np.all(image == 200) for image in images)


# ----------------------------------------------------------------------------- what the index knows


def test_known_files_settle_what_every_header_shares():
    shape = (224, 224, 3)
    assert known_files([Probe("JPEG", 256, 256, 1)] * 3, shape) == KnownFiles(jpeg_scale=1, decoded_size=(256, 256))
    # Phone photos of two sizes: both read at 1/8 (3,000 / 8 = 375 >= 224), not the same size.
    assert known_files([Probe("JPEG", 4000, 3000, 1), Probe("MPO", 4032, 3024, 1)], shape) == KnownFiles(jpeg_scale=8)
    # 600x400 turned a quarter (EXIF 6) and 400x600 upright are both 150x100 at 1/4 for 64 px.
    assert known_files([Probe("JPEG", 600, 400, 6), Probe("JPEG", 400, 600, 1)], (64, 64, 3)) == KnownFiles(4, (150, 100))
    assert known_files([Probe("JPEG", 256, 256, 1), Probe("PNG", 256, 256, 1)], shape) == KnownFiles(decoded_size=(256, 256))
    assert known_files([Probe("JPEG", 256, 256, 1), None], shape) == KnownFiles()  # a converted copy: nothing known


@pytest.mark.parametrize("image_shape", [(64, 64, 3), (120, 120, 3), (200, 300, 3), (90, 90, 1)])
def test_decoding_with_what_the_index_knows_gives_the_same_pixels(tmp_path, image_shape):
    """Static choices (scale, resize, antialiasing) replace per-image ones without changing a pixel."""
    rng = np.random.default_rng(0)
    probes, encoded = [], []
    for orientation in (1, 6, 3, 8):  # the same 300x200 stored size; 6 and 8 turn it to 200x300
        path = tmp_path / f"{orientation}.jpg"
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path, quality=90, exif=exif)
        probes.append(Probe("JPEG", 300, 200, orientation))
        encoded.append(path.read_bytes())
    for subset in (probes[::2], probes[1::2]):  # upright-ish (1, 3) and turned (6, 8): one decoded size each
        known = known_files(subset, image_shape)
        assert known.jpeg_scale is not None and known.decoded_size is not None
        for probe in subset:
            data = encoded[probes.index(probe)]
            generic = decode_image(tf.constant(data), image_shape, probe.orientation).numpy()
            settled = decode_image(tf.constant(data), image_shape, probe.orientation, known).numpy()
            assert np.array_equal(generic, settled), (image_shape, probe)


# ----------------------------------------------------------------------------- data.cache


def test_auto_cache_keeps_images_in_memory_only_within_a_quarter_of_ram(tmp_path, caplog):
    root = write_folder(tmp_path / "photos")
    splits = load_splits(folder_config(root, tmp_path, cache="none"), seed=0)
    decoded_bytes = CLASSES * PER_CLASS * 16 * 16 * 3
    mode, reason = cache.choose("auto", splits, memory_bytes=4 * decoded_bytes)
    assert mode == "memory" and "within the memory budget" in reason
    mode, reason = cache.choose("auto", splits, memory_bytes=4 * decoded_bytes - 4)
    assert mode == "none" and "over the memory budget" in reason and "decoding from the source every epoch" in reason
    with caplog.at_level(logging.INFO, logger="pipeline.data"):
        load_splits(folder_config(root, tmp_path), seed=0)
    assert "data cache: memory (auto: decoded images take 0.0 MB, within the memory budget" in caplog.text


def test_disk_cache_gives_the_same_images_and_is_written_once(tmp_path):
    root = write_folder(tmp_path / "photos")
    streamed = load_splits(folder_config(root, tmp_path, cache="none"), seed=0)
    on_disk = load_splits(folder_config(root, tmp_path, cache="disk"), seed=0)
    assert on_disk.cache == "disk"
    assert all(np.array_equal(a, b) for a, b in zip(as_arrays(streamed.train), as_arrays(on_disk.train)))
    files = sorted((tmp_path / "cache" / "decoded").glob("*.u8"))
    assert files and files[0].stat().st_size == CLASSES * PER_CLASS * 16 * 16 * 3
    written = files[0].stat().st_mtime_ns
    load_splits(folder_config(root, tmp_path, cache="disk"), seed=0)
    assert files[0].stat().st_mtime_ns == written


@pytest.mark.parametrize("mode", ["memory", "disk", "none"])
def test_every_cache_mode_gives_the_same_epochs(tmp_path, mode):
    root = write_folder(tmp_path / "photos")
    reference = load_splits(folder_config(root, tmp_path, cache="none", deterministic=True), seed=0)
    splits = load_splits(folder_config(root, tmp_path, cache=mode, deterministic=True), seed=0)
    config = folder_config(root, tmp_path, deterministic=True)

    def epochs(dataset_splits, in_memory):
        make = epoch_pipelines(dataset_splits.splits["train"], config, global_batch_size=8, seed=3, augment=None,
                               num_classes=CLASSES, in_memory=in_memory)  # fmt: skip
        return [np.concatenate([labels for _, labels in make(epoch, 0, None).as_numpy_iterator()]) for epoch in (0, 1)]

    expected, actual = epochs(reference, False), epochs(splits, mode == "memory")
    assert not np.array_equal(expected[0], expected[1])  # each epoch has its own order
    if mode != "memory":  # memory shuffles decoded images in a buffer: another order, the same examples
        assert all(np.array_equal(a, b) for a, b in zip(expected, actual))
    assert all(np.array_equal(np.bincount(a, minlength=CLASSES), np.bincount(b, minlength=CLASSES)) for a, b in zip(expected, actual))


def test_unknown_cache_mode_is_a_config_error(tmp_path):
    result = run_cli("train", "--set", "data.cache=maybe", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.cache must be one of auto, memory, disk, none; got 'maybe'"


# ----------------------------------------------------------------------------- resume and workers


def test_resumed_epoch_skips_files_without_reading_them(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "photos")
    log_dir = tmp_path / "reads"
    log_dir.mkdir()
    monkeypatch.setenv(READ_LOG_VARIABLE, str(log_dir))
    splits = load_splits(folder_config(root, tmp_path, cache="none", deterministic=True), seed=0)
    train = splits.splits["train"]
    config = folder_config(root, tmp_path, deterministic=True)
    whole = list(train_pipeline(train, config, global_batch_size=8, seed=5, num_classes=CLASSES).as_numpy_iterator())
    for log in log_dir.glob("*"):
        log.unlink()
    resumed = list(train_pipeline(train, config, global_batch_size=8, seed=5, num_classes=CLASSES, skip_batches=4).as_numpy_iterator())
    assert len(resumed) == len(whole) - 4
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(resumed, whole[4:]))
    (reads,) = read_paths(log_dir).values()
    assert len(reads) == train.size - 4 * 8  # the 32 skipped files were never opened


def test_each_input_pipeline_reads_only_its_own_files(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "photos")
    log_dir = tmp_path / "reads"
    log_dir.mkdir()
    monkeypatch.setenv(READ_LOG_VARIABLE, str(log_dir))
    train = load_splits(folder_config(root, tmp_path, cache="none"), seed=0).splits["train"]
    config = folder_config(root, tmp_path)
    shares = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2)
        list(train_pipeline(train, config, global_batch_size=8, seed=0, num_classes=CLASSES, input_context=context))
        (reads,) = read_paths(log_dir).values()
        shares.append(set(reads))
        next(log_dir.glob("*")).unlink()
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == train.size


def test_two_worker_processes_each_read_only_their_half_of_the_training_and_validation_files(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=32, size=(40, 40))
    log_dir = tmp_path / "reads"
    log_dir.mkdir()
    cache_dir = tmp_path / "cache"
    # The channel statistics read training files too; computed here first, the workers find
    # them in the cache, as any run after the first on a folder does.
    data_config = DataConfig(dataset=str(root), image_size=32, max_train_examples=640, max_eval_examples=256,
                             cache="none", cache_dir=str(cache_dir))  # fmt: skip
    splits = load_splits(data_config, seed=0)
    training_statistics(splits, str(cache_dir))
    result = run_cli(
        "launch", "--workers=2", *TINY_RUN, "--dataset", str(root), "--image-size", "32", "--arch", "resnet20",
        "--epochs", "1", "--set", "data.cache=none", "--set", f"data.cache_dir={cache_dir}",
        "--output-dir", str(tmp_path / "runs"), "--run-name", "folder", timeout=600,
        env={READ_LOG_VARIABLE: str(log_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    reads = read_paths(log_dir)
    assert len(reads) == 2, reads.keys()  # one log per worker process
    worker_reads = [set(paths) for paths in reads.values()]
    # 78 training files (26 per class after two 10% holdouts), 2 steps of 2 x 16 in the epoch:
    # each worker decodes at least its 32 and at most its half (39; prefetching reads ahead).
    assert all(32 <= len(paths) <= 39 for paths in worker_reads), [len(paths) for paths in worker_reads]
    assert not worker_reads[0] & worker_reads[1]
    # Validation (one epoch, no cache): each worker decodes its every-other file, once.
    validation_reads = list(read_paths(log_dir, "validation").values())
    assert [len(paths) for paths in validation_reads] == [len(set(paths)) for paths in validation_reads]
    shares = [set(paths) for paths in validation_reads]
    assert len(shares) == 2 and not shares[0] & shares[1], [len(share) for share in shares]
    assert len(shares[0] | shares[1]) == splits.num_examples["validation"] == 9  # 3 per class
    assert abs(len(shares[0]) - len(shares[1])) == 1


def test_tfds_records_split_between_workers_before_decoding(tmp_path):
    from tests.pipeline.test_data import ConvnetsTestTinyImages

    ConvnetsTestTinyImages(data_dir=str(tmp_path)).download_and_prepare()
    splits = load_splits(DataConfig(dataset="tfds:convnets_test_tiny_images", data_dir=str(tmp_path), cache="none"), seed=0)
    train = splits.splits["train"]
    assert isinstance(next(iter(train.records))["image"].numpy(), bytes)  # still encoded
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2)
        seen.append({int(image[0, 0, 0]) for image, _ in train.worker_records(context).map(train.decode)})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == train.size


def test_evaluation_shares_decode_every_other_record_once_and_keep_it_in_memory():
    decoded_ids = []

    def read(example_id):
        decoded_ids.append(int(example_id))
        return np.full((2, 2, 1), int(example_id), np.uint8)

    def decode(example_id, label):
        return tf.ensure_shape(tf.py_function(read, [example_id], tf.uint8), (2, 2, 1)), label

    example_ids = np.arange(5, dtype=np.int64)
    validation = evaluation_images(Split(tf.data.Dataset.from_tensor_slices((example_ids, example_ids)), 5, decode=decode), in_memory=True)
    for _ in range(2):  # two epochs' validations
        for pipeline_id, expected in enumerate([[0, 2, 4], [1, 3]]):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2)
            assert [int(label) for _, label in validation.share(context)] == expected
            assert validation.share_size(context) == len(expected)
    assert sorted(decoded_ids) == [0, 1, 2, 3, 4]  # once each: the second pass came from its share's cache


def test_split_of_in_memory_arrays_keeps_records_as_pixels():
    split = Split(tf.data.Dataset.from_tensor_slices((np.zeros((3, 2, 2, 1), np.uint8), np.arange(3))), 3)
    assert not split.small_records and split.images() is split.records


def test_training_on_a_streamed_folder_with_a_step_cap_counts_its_skipped_file(tmp_path):
    root = write_folder(tmp_path / "photos")
    (root / "class1" / "cut.jpg").write_bytes((root / "class1" / "000.jpg").read_bytes()[:200])
    result = run_cli(
        "train", "--dataset", str(root), "--image-size", "16", "--arch", "resnet20", "--epochs", "1",
        "--batch-size", "8", "--set", "train.steps_per_epoch=2", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--output-dir", str(tmp_path / "runs"), "--run-name", "photos",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.steps_per_epoch: 2 of the split's 4 steps per epoch" in result.stderr
    assert "data cache: memory (auto:" in result.stderr
    metrics = json.loads((tmp_path / "runs" / "photos" / "metrics.json").read_text())
    assert metrics["data"]["skipped"] == {"truncated": 1}
