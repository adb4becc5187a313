"""Convolution, edge handling, the convolution layer and pooling, from first principles.

Pure NumPy, written to read like the lecture "Convolutional Networks"
(shared/seed/convolutional_networks_lecture.txt: Convolution, Dealing with edges, Convolutions as
matrix-vector multiplication, Convolution layer, Pooling layers, Dilated convolution). The tests
use it as an oracle and show that `keras.layers.Conv1D`, `Conv2D`, `MaxPooling2D` and
`AveragePooling2D` compute exactly these sums; `np.convolve` and `np.pad` are the other references.

Conventions shared by every function here:
- `edge` is how samples beyond the border are made up. "valid" makes none: the output only holds
  the positions where the whole kernel fits (the lecture's worked example). The lecture's four ways
  of dealing with edges pad the input so that the stride-1 output is as long as the input:
  "clip" (zeros), "replicate" (repeat the border sample), "symmetric" (mirror about the border,
  border sample included) and "circular" (wrap around).
- A kernel of size K dilated by d spans d * (K - 1) + 1 samples (atrous convolution: d - 1 holes
  between taps). Padding adds d * (K - 1) samples, the odd one on the right as Keras does.
- A stride s keeps every s-th output of the stride-1 result, starting with the first.
"""

from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Edge = Literal["valid", "clip", "replicate", "symmetric", "circular"]
EDGES: tuple[str, ...] = ("valid", "clip", "replicate", "symmetric", "circular")

# The lecture's edge modes as `np.pad` modes. Its "symmetric padding" mirrors the signal with the
# border sample repeated (f1 f0 | f0 f1 f2 ...), as MATLAB's padarray(..., "symmetric") and
# tf.pad(mode="SYMMETRIC"); numpy's "reflect" (tf.pad "REFLECT") would skip it (f2 f1 | f0 f1 ...).
_NUMPY_PAD_MODES = {"clip": "constant", "replicate": "edge", "symmetric": "symmetric", "circular": "wrap"}


def convolve1d(
    signal: ArrayLike, kernel: ArrayLike, *, edge: Edge = "valid", stride: int = 1, dilation: int = 1
) -> np.ndarray:
    """True convolution (f * h)_i = sum_{k=-w..w} f(i - k) h(k), as in the lecture.

    The signal is read at i - k while the kernel is read at k, so the kernel slides along the
    signal back to front: it is flipped. Storing h(-w..w) as the array h[0..2w], this is the
    correlation of f with h[::-1], which is how it is computed (the lecture's loop uses
    `np.dot(h[::-1], f[centre - w:centre + w + 1])`). The flip makes convolution commutative and
    associative, and makes a unit impulse come out as h itself rather than its mirror image.

    (n,) signal, (K,) kernel -> (n_out,): n_out = (n - span) // stride + 1 for "valid",
    ceil(n / stride) for the padded edge modes, with span = dilation * (K - 1) + 1.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    return correlate1d(signal, kernel[::-1], edge=edge, stride=stride, dilation=dilation)


def correlate1d(
    signal: ArrayLike, kernel: ArrayLike, *, edge: Edge = "valid", stride: int = 1, dilation: int = 1
) -> np.ndarray:
    """Cross-correlation z_i = sum_k f(i * stride + k * dilation) h(k) over the padded signal.

    No flip: this is what deep-learning "convolution" layers compute. The kernel is learned, so
    flipping it would only change how the weights are stored. Shapes as `convolve1d`.
    """
    signal, kernel = _as_arrays(signal, kernel, ndim=1, edge=edge, stride=stride, dilation=dilation)
    return _correlate(_pad(signal, kernel.shape, edge, dilation), kernel, stride, dilation)


def convolution_matrix(
    kernel: ArrayLike, signal_length: int, *, edge: Edge = "valid", stride: int = 1, dilation: int = 1
) -> np.ndarray:
    """The 1-D convolution as a matrix M with M @ f == convolve1d(f, kernel, ...) (lecture exercise).

    Row i holds the flipped kernel, placed where output i reads the padded signal. Padding is a
    linear map too: each padded position copies one signal sample (replicate, symmetric,
    circular) or is zero (clip), so a tap landing in the padding adds its weight to the column of
    the sample it copies. "valid" and "clip" give a banded Toeplitz matrix, "circular" a circulant
    one; a stride keeps every stride-th row.

    (K,) kernel -> (n_out, signal_length), n_out as `convolve1d`.
    """
    positions = np.arange(signal_length)
    kernel = _as_arrays(positions, kernel, ndim=1, edge=edge, stride=stride, dilation=dilation)[1]
    if edge == "clip":
        # -1 marks a zero sample: it copies nothing.
        source = np.pad(positions, _same_padding(kernel.size, dilation), constant_values=-1)
    else:
        source = _pad(positions, kernel.shape, edge, dilation)
    output_length = _output_length(source.size, kernel.size, stride, dilation)
    matrix = np.zeros((output_length, signal_length))
    for row in range(output_length):
        for tap, weight in enumerate(kernel[::-1]):
            column = source[row * stride + tap * dilation]
            if column >= 0:
                # "+=": with replicate or symmetric padding several taps can read the same sample.
                matrix[row, column] += weight
    return matrix


def convolve2d(
    image: ArrayLike, kernel: ArrayLike, *, edge: Edge = "valid", stride: int = 1, dilation: int = 1
) -> np.ndarray:
    """True 2-D convolution of a single-channel image: the kernel flipped along both axes.

    (H, W) image, (Kh, Kw) kernel -> (H_out, W_out), each axis sized as `convolve1d`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    return correlate2d(image, kernel[::-1, ::-1], edge=edge, stride=stride, dilation=dilation)


def correlate2d(
    image: ArrayLike, kernel: ArrayLike, *, edge: Edge = "valid", stride: int = 1, dilation: int = 1
) -> np.ndarray:
    """2-D cross-correlation z[i, j] = sum_{a,b} x[i*s + a*d, j*s + b*d] h[a, b] (padded x).

    What `Conv2D` computes for one input and one output channel, without bias.
    (H, W) image, (Kh, Kw) kernel -> (H_out, W_out), each axis sized as `convolve1d`.
    """
    image, kernel = _as_arrays(image, kernel, ndim=2, edge=edge, stride=stride, dilation=dilation)
    return _correlate(_pad(image, kernel.shape, edge, dilation), kernel, stride, dilation)


def conv_layer(
    x: ArrayLike,
    theta: ArrayLike,
    bias: ArrayLike,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: Literal["valid", "same"] = "valid",
) -> np.ndarray:
    """The lecture's convolution layer, one output position at a time:

        z[i', j', f'] = b[f'] + sum_{i=1..Hf} sum_{j=1..Wf} sum_{f=1..F} x[i'+i-1, j'+j-1, f] theta[i, j, f, f']

    with 0-based indices, a stride s (output i' starts reading at row s * i') and a dilation d
    (tap i reads row s * i' + d * i). "same" zero-pads as `edge="clip"`; at stride 1 this is
    Keras's padding="same". At stride > 1 Keras instead pads just enough for ceil(H / s) outputs,
    which can put less padding on the top/left (see blocks.pad_then_conv).

    (H, W, F) x, (Hf, Wf, F, F') theta, (F',) bias -> (H_out, W_out, F').
    """
    x, theta, bias = (np.asarray(array, dtype=np.float64) for array in (x, theta, bias))
    if x.ndim != 3 or theta.ndim != 4 or theta.shape[2] != x.shape[2] or bias.shape != theta.shape[3:]:
        raise ValueError(
            f"expected (H, W, F), (Hf, Wf, F, F'), (F',) shapes, got {x.shape}, {theta.shape}, {bias.shape}"
        )
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    _check_step(stride, dilation)
    if padding == "same":
        x = np.pad(x, [_same_padding(theta.shape[0], dilation), _same_padding(theta.shape[1], dilation), (0, 0)])
    kernel_height, kernel_width = theta.shape[:2]
    _check_fits(x.shape[:2], theta.shape[:2], dilation)
    height = _output_length(x.shape[0], kernel_height, stride, dilation)
    width = _output_length(x.shape[1], kernel_width, stride, dilation)
    z = np.empty((height, width, theta.shape[3]))
    for i_out in range(height):
        for j_out in range(width):
            rows = slice(i_out * stride, i_out * stride + dilation * (kernel_height - 1) + 1, dilation)
            columns = slice(j_out * stride, j_out * stride + dilation * (kernel_width - 1) + 1, dilation)
            z[i_out, j_out] = bias + np.einsum("ijf,ijfg->g", x[rows, columns], theta)
    return z


def max_pool2d(x: ArrayLike, window: int = 2, stride: int | None = None) -> np.ndarray:
    """h_k(x, y, c) = max over (i, j) in N(x, y) of h_{k-1}(i, j, c), per channel.

    N(x, y) is the window x window neighbourhood starting at (x * stride, y * stride); stride
    defaults to window (non-overlapping, as Keras); no padding ("valid").
    (H, W, C) -> ((H - window) // stride + 1, (W - window) // stride + 1, C).
    """
    return _pool(x, window, stride, np.max)


def average_pool2d(x: ArrayLike, window: int = 2, stride: int | None = None) -> np.ndarray:
    """h_k(x, y, c) = 1 / |N(x, y)| * sum over (i, j) in N(x, y) of h_{k-1}(i, j, c).

    Neighbourhoods, stride and shapes as `max_pool2d`; without padding |N| = window ** 2 everywhere.
    """
    return _pool(x, window, stride, np.mean)


def _pool(x: ArrayLike, window: int, stride: int | None, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    stride = window if stride is None else stride
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W, C) array, got shape {x.shape}")
    _check_step(stride, window)
    _check_fits(x.shape[:2], (window, window), 1)
    height, width = ((size - window) // stride + 1 for size in x.shape[:2])
    pooled = np.empty((height, width, x.shape[2]))
    for i in range(height):
        for j in range(width):
            neighbourhood = x[i * stride : i * stride + window, j * stride : j * stride + window]
            pooled[i, j] = reduce(neighbourhood, axis=(0, 1))
    return pooled


def _correlate(padded: np.ndarray, kernel: np.ndarray, stride: int, dilation: int) -> np.ndarray:
    """Valid correlation in any number of dimensions, one kernel tap at a time.

    Each tap multiplies the whole input, shifted by tap * dilation and sampled every stride
    samples, by its weight; the output is the sum over taps.
    """
    output_shape = [_output_length(n, k, stride, dilation) for n, k in zip(padded.shape, kernel.shape)]
    output = np.zeros(output_shape)
    for tap in np.ndindex(kernel.shape):
        shifted = tuple(
            slice(t * dilation, t * dilation + (length - 1) * stride + 1, stride)
            for t, length in zip(tap, output_shape)
        )
        output += kernel[tap] * padded[shifted]
    return output


def _pad(array: np.ndarray, kernel_shape: tuple[int, ...], edge: Edge, dilation: int) -> np.ndarray:
    """Pads every axis so the stride-1 output is as long as the input ("valid": no padding)."""
    if edge == "valid":
        return array
    widths = [_same_padding(size, dilation) for size in kernel_shape]
    return np.pad(array, widths, mode=_NUMPY_PAD_MODES[edge])


def _same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    """(before, after) widths adding span - 1 samples; an odd one goes after, as in Keras."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def _output_length(length: int, kernel_size: int, stride: int, dilation: int) -> int:
    return (length - dilation * (kernel_size - 1) - 1) // stride + 1


def _as_arrays(
    array: ArrayLike, kernel: ArrayLike, *, ndim: int, edge: str, stride: int, dilation: int
) -> tuple[np.ndarray, np.ndarray]:
    array, kernel = np.asarray(array, dtype=np.float64), np.asarray(kernel, dtype=np.float64)
    if array.ndim != ndim or kernel.ndim != ndim or kernel.size == 0:
        raise ValueError(
            f"expected a {ndim}-D input and a non-empty {ndim}-D kernel, got shapes {array.shape} and {kernel.shape}"
        )
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    _check_step(stride, dilation)
    if edge == "valid":
        _check_fits(array.shape, kernel.shape, dilation)
    return array, kernel


def _check_step(stride: int, dilation_or_window: int) -> None:
    if stride < 1 or dilation_or_window < 1:
        raise ValueError(f"stride and dilation/window must be >= 1, got {stride} and {dilation_or_window}")


def _check_fits(shape: tuple[int, ...], kernel_shape: tuple[int, ...], dilation: int) -> None:
    spans = tuple(dilation * (size - 1) + 1 for size in kernel_shape)
    if any(length < span for length, span in zip(shape, spans)):
        raise ValueError(f"input of shape {shape} is smaller than the (dilated) kernel's span {spans}")
