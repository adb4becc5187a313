"""Image files to pixels: the one decoder, inside the TensorFlow graph, and Pillow's checks.

`decode_image` turns encoded bytes into uint8 pixels at the model's shape. Training, evaluation,
export calibration, `predict` and the SavedModel's serving signature all call it, so a photo
is prepared the same way wherever it meets the model. It runs inside `tf.data` (parallel, no
GIL) and reads JPEG, PNG, GIF, BMP and WebP; a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
when that still covers the target side, as Pillow's `draft` does.

Pillow does what the graph cannot: it reads EXIF orientation (phone photos store their rotation
there, and `decode_image` applies it), tells why a file is unusable (`probe_image_file`,
`decode_image_file`), and converts the formats TensorFlow lacks (TIFF and others).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Pillow's names of the formats TensorFlow's DecodeImage reads (TF 2.21 also reads JPEG XL,
# which Pillow does not open).
TENSORFLOW_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})  # MPO: a phone's multi-picture JPEG
EXIF_ORIENTATION_TAG = 0x0112
JPEG_SCALES = (1, 2, 4, 8)  # libjpeg's scaled IDCT denominators
JPEG_FORMATS = frozenset({"JPEG", "MPO"})


@dataclass(frozen=True)
class Probe:
    """What a file's header says: enough to decide how to decode it."""

    format: str  # Pillow's format name, e.g. "JPEG"
    width: int
    height: int
    orientation: int  # EXIF orientation 1..8; 1 is upright


@dataclass(frozen=True)
class KnownFiles:
    """What holds for every file a split decodes, from their headers: `decode_image` then leaves
    out the per-image choices it settles. In `tf.data` each `tf.cond` is a function call per
    image, and the format, scale and size choices cost about a tenth of the streamed rate
    (256 -> 224 px JPEGs, 2 cores)."""

    jpeg_scale: int | None = None  # every file is a JPEG read at 1/jpeg_scale; None: chosen per image
    decoded_size: tuple[int, int] | None = None  # (height, width) of every file decoded and upright; None: per image


def known_files(probes: Sequence[Probe | None], image_shape: tuple[int, int, int]) -> KnownFiles:
    """The facts `probes` share (None: a file whose header is not known, e.g. a converted copy)."""
    if not probes or any(probe is None for probe in probes):
        return KnownFiles()
    side = max(image_shape[:2])
    scales, sizes = set(), set()
    for probe in probes:
        scale = JPEG_SCALES[_covering_scale_index(min(probe.width, probe.height), side)] if probe.format in JPEG_FORMATS else 1
        size = (-(-probe.height // scale), -(-probe.width // scale))  # libjpeg rounds a scaled side up
        scales.add(scale if probe.format in JPEG_FORMATS else None)
        sizes.add(size[::-1] if probe.orientation in (5, 6, 7, 8) else size)  # these turn the image a quarter
    return KnownFiles(
        jpeg_scale=scales.pop() if len(scales) == 1 and None not in scales else None,
        decoded_size=sizes.pop() if len(sizes) == 1 else None,
    )


# ----------------------------------------------------------------------------- in the graph


def decode_image(
    encoded: tf.Tensor, image_shape: tuple[int, int, int], orientation: tf.Tensor | int = 1, known: KnownFiles = KnownFiles()
) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 `image_shape` (H, W, C).

    The first frame of an animation; alpha dropped; RGB -> gray with ITU-R 601 luma (as Pillow
    and `tf.image.rgb_to_grayscale`); `orientation` (EXIF 1..8) applied before a bilinear
    resize (see `_resized`), which is skipped at the target size. `known` settles some of these
    choices for every image at once; the pixels are the same.
    """
    height, width, channels = image_shape
    # RGB comes straight from the decoders (they drop alpha and expand gray); gray is converted
    # here, as `decode_image` refuses channels=1 for BMP and GIF.
    decoded_channels = 3 if channels == 3 else 0
    if known.jpeg_scale is not None:
        image = tf.io.decode_jpeg(encoded, channels=decoded_channels, ratio=known.jpeg_scale)
    else:
        image = tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: _decode_jpeg_covering(encoded, max(height, width), decoded_channels),
            lambda: tf.io.decode_image(encoded, channels=decoded_channels, expand_animations=False),
        )
    if channels == 1:
        image = _to_gray(image)
    if not (isinstance(orientation, int) and orientation == 1):
        image = _upright(image, orientation)
    if known.decoded_size is None:
        at_size = tf.reduce_all(tf.shape(image)[:2] == [height, width])
        image = tf.cond(at_size, lambda: image, lambda: _resized(image, height, width))
    elif known.decoded_size != (height, width):
        image = _resized(image, height, width, shrink=max(known.decoded_size[0] / height, known.decoded_size[1] / width))
    return tf.ensure_shape(image, image_shape)


def _covering_scale_index(shorter, side: int):
    """Index into JPEG_SCALES of the largest scale whose shorter side still covers `side` pixels:
    libjpeg's scaled size is ceil(size / n). On Python ints, or on tensors inside the graph."""
    fits = [(shorter + scale - 1) // scale >= side for scale in JPEG_SCALES]
    if isinstance(shorter, int):
        return max((index for index, fit in enumerate(fits) if fit), default=0)
    return tf.reduce_max(tf.where(tf.stack(fits), tf.range(len(JPEG_SCALES)), 0))


def _decode_jpeg_covering(encoded: tf.Tensor, side: int, channels: int) -> tf.Tensor:
    """A JPEG decoded at the smallest 1/n scale whose shorter side still covers `side` pixels."""
    scale_index = _covering_scale_index(tf.reduce_min(tf.image.extract_jpeg_shape(encoded)[:2]), side)
    branches = [lambda scale=scale: tf.io.decode_jpeg(encoded, channels=channels, ratio=scale) for scale in JPEG_SCALES]
    return tf.switch_case(scale_index, branches)


def _to_gray(image: tf.Tensor) -> tf.Tensor:
    """uint8 with 1-4 channels -> 1 channel (ITU-R 601 luma of RGB; alpha dropped)."""
    has_color = tf.shape(image)[-1] >= 3
    gray = lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32))), tf.uint8)  # noqa: E731
    return tf.cond(has_color, gray, lambda: image[..., :1])


def _upright(image: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """Apply EXIF orientation 1..8 as Pillow's `ImageOps.exif_transpose` does (anything else: as is)."""
    transpose = lambda pixels: tf.transpose(pixels, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,  # 1: upright
        lambda: image[:, ::-1],  # 2: mirrored left-right
        lambda: image[::-1, ::-1],  # 3: rotated 180
        lambda: image[::-1, :],  # 4: mirrored top-bottom
        lambda: transpose(image),  # 5: transposed
        lambda: transpose(image)[:, ::-1],  # 6: rotated 90 clockwise to be upright
        lambda: transpose(image)[::-1, ::-1],  # 7: transversed
        lambda: transpose(image)[::-1, :],  # 8: rotated 90 counter-clockwise to be upright
    ]
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index >= 0) & (index < len(branches)), index, 0)
    return tf.switch_case(index, branches)


def _resized(image: tf.Tensor, height: int, width: int, shrink: float | None = None) -> tf.Tensor:
    """Bilinear; antialiased only when shrinking more than 2x, where plain bilinear would alias.
    `shrink`: the factor when it is known for every image (else measured on this one).

    Antialiasing quarters the pipeline's rate (256 -> 224 px JPEGs: 391 against 1,578 images/s
    on 2 cores), and below 2x bilinear's four taps still see every source pixel. A large JPEG is
    already decoded within 2x of the target (`_decode_jpeg_covering`).
    """
    pixels = tf.cast(image, tf.float32)
    antialiased = lambda: tf.image.resize(pixels, (height, width), method="bilinear", antialias=True)  # noqa: E731
    plain = lambda: tf.image.resize(pixels, (height, width), method="bilinear")  # noqa: E731
    if shrink is not None:
        pixels = antialiased() if shrink > 2.0 else plain()
    else:
        measured_shrink = tf.reduce_max(tf.cast(tf.shape(image)[:2], tf.float32) / [height, width])
        pixels = tf.cond(measured_shrink > 2.0, antialiased, plain)
    # Bilinear weights (antialiased too) are convex, so the result stays within 0..255 and a plain
    # cast of x + 0.5 rounds it: saturate_cast's clipping cost a tenth of the streamed rate.
    return tf.cast(pixels + 0.5, tf.uint8)


def decode_files(paths: list[Path], image_shape: tuple[int, int, int]) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """uint8 (n, H, W, C) of the usable files among `paths`, their positions, and why the rest were skipped.

    The folder source's path for a few files at a time (`predict`): the same checks, the same
    decoder, and the same conversion for formats TensorFlow lacks.
    """
    decode = tf.function(lambda encoded, orientation: decode_image(encoded, image_shape, orientation))
    pixels, kept, skipped = [], [], {}
    for position, path in enumerate(paths):
        probe = probe_image_file(path)
        if isinstance(probe, str):
            skipped[position] = probe
            continue
        encoded, orientation = path.read_bytes(), probe.orientation
        if probe.format in TENSORFLOW_FORMATS:
            try:
                pixels.append(decode(encoded, orientation).numpy())
                kept.append(position)
                continue
            except tf.errors.InvalidArgumentError:
                pass  # Pillow says why, or converts it
        converted = upright_png(path)
        if isinstance(converted, str):
            skipped[position] = converted
            continue
        try:
            pixels.append(decode(converted, 1).numpy())
        except tf.errors.InvalidArgumentError:  # e.g. a damaged TIFF header declaring 16 x 1,048,576
            skipped[position] = "corrupt"
            continue
        kept.append(position)
    return (np.stack(pixels) if pixels else np.zeros((0, *image_shape), np.uint8)), kept, skipped


# ----------------------------------------------------------------------------- Pillow


def probe_image_file(path: Path) -> Probe | str:
    """The header's format, size and EXIF orientation, or why the file cannot be used.

    Reads the header only: cheap enough for every file of a large folder. Whether the body
    decodes is for the decoder to find out.
    """
    try:
        with path.open("rb") as file:
            if not file.read(1):
                return "empty"
    except OSError:
        return "unreadable"
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1) if image.format in ("JPEG", "MPO", "PNG", "WEBP", "TIFF") else 1
            probe = Probe(image.format or "", image.width, image.height, orientation if orientation in range(1, 9) else 1)
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too large"
    except Exception as error:  # noqa: BLE001 - Pillow signals a damaged header with almost any exception
        return _damage(path, error)
    return probe


def decode_image_file(path: Path, side: int | None, channels: int) -> np.ndarray | str:
    """uint8 (side, side, channels) pixels (None: the file's own size), or why the file cannot be used.

    Pillow's full decode: it tells "truncated" from "corrupt", and converts the files TensorFlow
    cannot read.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return "unreadable"
    if not data:
        return "empty"
    mode = "RGB" if channels == 3 else "L"
    # A skipped file must never stop the scan, and Pillow signals a damaged file with almost any
    # exception, from `open` as much as from decoding: a PNG, BMP or JPEG cut inside its header
    # raises OSError("Truncated File Read") from `open`; plugins also raise SyntaxError, ValueError,
    # EOFError, struct.error, IndexError or TypeError. So this `try` holds Pillow's calls on the
    # file's content and nothing else: a bug in our own code still stops the run with a traceback.
    try:
        image = Image.open(io.BytesIO(data))
        if side is not None:
            image.draft(mode, (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
        image.load()  # decodes everything, so truncation shows here
        image = ImageOps.exif_transpose(image)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # Pillow's advice for palette transparency, and no warning
        image = image.convert(mode)  # CMYK, palette, RGBA, 16-bit: one mode; alpha is dropped
        if side is not None and image.size != (side, side):
            image = image.resize((side, side), Image.Resampling.BILINEAR)  # antialiased when shrinking
    except UnidentifiedImageError:  # no format could read its header
        return "not an image"
    except Image.DecompressionBombError:  # over twice Image.MAX_IMAGE_PIXELS, or a header that says so
        return "too large"
    except Exception as error:  # noqa: BLE001 - see above
        return _damage(path, error)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def upright_png(path: Path) -> bytes | str:
    """The file as Pillow reads it (upright, RGB) re-encoded as PNG for `decode_image`, or why it cannot be used."""
    pixels = decode_image_file(path, None, 3)
    if isinstance(pixels, str):
        return pixels
    if pixels.size == 0:  # a damaged header can declare a zero-sized image, which Pillow "decodes"
        return "corrupt"
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "PNG", compress_level=1)  # a cache copy: fast over small
    return encoded.getvalue()


def _damage(path: Path, error: Exception) -> str:
    logger.debug("cannot decode %s: %s", path, error)
    return "truncated" if "truncated" in str(error).lower() else "corrupt"
