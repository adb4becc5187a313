"""The image files among paths given on the command line (files as given, folders searched).

Free of TensorFlow: `predict` reads them locally and `predict --server` sends them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from architectures.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what data.decode_files reads


def image_files(image_paths: Sequence[str | Path]) -> list[Path]:
    """Image files among `image_paths`: files as given, folders searched recursively by suffix."""
    files: list[Path] = []
    for item in map(Path, image_paths):
        if item.is_dir():
            files += sorted(path for path in item.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"no such image file or folder: {item}")
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, image_paths))}")
    return files
