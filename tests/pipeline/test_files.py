"""One atomic writer for every file: a failure mid-write leaves the old file and no temporary."""

import keras
import numpy as np
import pytest

from pipeline.files import write_atomically, write_bytes_atomically, write_text_atomically


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def half_write_then_fail(temporary):
        temporary.write_text('{"top1_accu')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_write_then_fail)
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_an_interrupt_mid_write_of_a_new_file_leaves_nothing(tmp_path):
    target = tmp_path / "deep" / "report.json"

    def interrupted(temporary):
        temporary.write_bytes(b"{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_failed_directory_writer_is_removed_too(tmp_path):
    target = tmp_path / "model.savedmodel"

    def partial_directory(temporary):
        temporary.mkdir()
        (temporary / "variables").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        write_atomically(target, partial_directory)
    assert list(tmp_path.iterdir()) == []


def test_text_bytes_and_keras_savers_replace_the_file_whole(tmp_path):
    write_text_atomically(tmp_path / "labels.txt", "a\nb\n")
    write_text_atomically(tmp_path / "labels.txt", "c\n")
    write_bytes_atomically(tmp_path / "model.bin", b"\x00\x01")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    # Keras refuses a path without its suffix: the temporary name must end with the target's name.
    write_atomically(tmp_path / "best.weights.h5", model.save_weights)
    write_atomically(tmp_path / "model.keras", model.save)
    assert (tmp_path / "labels.txt").read_text() == "c\n"
    assert (tmp_path / "model.bin").read_bytes() == b"\x00\x01"
    restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(restored.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.weights.h5", "labels.txt", "model.bin", "model.keras"]
