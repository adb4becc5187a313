"""Atomic file writes: a reader, a resumed run or a crash never sees half a file.

Every file the pipeline and the benchmarks write goes through `write_atomically`: the content
goes to a hidden temporary file beside the target (same directory, so the rename never crosses
a filesystem), is flushed to disk, and is renamed over the target in one step (POSIX rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary_path)` fills a temporary file beside `path`, which then replaces `path`.

    The temporary name ends with the target's own name, so suffix-checking savers (Keras's
    `.keras` and `.weights.h5`, matplotlib's `.png`) accept it. On any failure, Ctrl-C included,
    the temporary file is removed and `path` keeps its old content (or stays absent).
    Returns `path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
    try:
        write(temporary)
        _flush_to_disk(temporary)
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    return target


def write_text_atomically(path: str | Path, text: str) -> Path:
    """UTF-8 `text` to `path` through `write_atomically`."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: str | Path, content: bytes) -> Path:
    """`content` to `path` through `write_atomically`."""
    return write_atomically(path, lambda temporary: temporary.write_bytes(content))


def _flush_to_disk(path: Path) -> None:
    # Without the fsync a power loss after the rename can leave an empty file under the final name.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing): processes of one job wait their turn."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
