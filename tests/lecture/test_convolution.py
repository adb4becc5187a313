"""The lecture's convolution, edges, matrix form, layer and pooling; Keras/TF compute the same sums."""

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from lecture.convolution import (
    EDGES,
    average_pool2d,
    conv_layer,
    convolution_matrix,
    convolve1d,
    convolve2d,
    correlate1d,
    correlate2d,
    max_pool2d,
)

# The lecture's worked example.
F = np.array([1, 3, 4, 1, 10, 3, 0, 1])
H = np.array([1, 0, -1])

# The lecture's edge modes written independently of the module, as np.pad modes. The lecture's
# "symmetric padding" (MATLAB's padarray "symmetric") mirrors about the border *with* the border
# sample repeated: np.pad "symmetric" ([1, 2, 3] -> 2 1 | 1 2 3 | 3 2). np.pad "reflect" mirrors
# about the border sample itself and so never repeats it (3 2 | 1 2 3 | 2 1): that is
# tf.pad(mode="REFLECT"), a different padding.
NUMPY_PAD_MODES = {"clip": "constant", "replicate": "edge", "symmetric": "symmetric", "circular": "wrap"}
PADDED_EDGES = tuple(NUMPY_PAD_MODES)

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}  # float32 Keras against float64 NumPy


def _keras_output(layer: keras.layers.Layer, x: np.ndarray, weights: list[np.ndarray] | None = None) -> np.ndarray:
    """Runs one unbatched example (..., C) through a Keras layer, setting its weights first."""
    batch = x[None].astype(np.float32)
    if weights is not None:
        layer.build(batch.shape)
        layer.set_weights([w.astype(np.float32) for w in weights])
    return keras.ops.convert_to_numpy(layer(batch))[0]


def test_convolve1d_reproduces_the_lectures_worked_example() -> None:
    width = 1
    lecture_result = np.ones(len(F) - 2 * width)
    for i in range(len(lecture_result)):
        centre = i + width
        lecture_result[i] = np.dot(H[::-1], F[centre - width : centre + width + 1])

    expected = [3, -2, 6, 2, -10, -2]
    np.testing.assert_array_equal(lecture_result, expected)
    np.testing.assert_array_equal(convolve1d(F, H), expected)
    np.testing.assert_array_equal(np.convolve(F, H, mode="valid"), expected)


def test_correlate1d_is_convolve1d_without_the_flip() -> None:
    np.testing.assert_array_equal(correlate1d(F, H), [-3, 2, -6, -2, 10, 2])
    np.testing.assert_array_equal(correlate1d(F, H[::-1]), convolve1d(F, H))


def test_convolving_an_impulse_returns_the_kernel_itself() -> None:
    impulse = [0, 0, 1, 0, 0]
    np.testing.assert_array_equal(convolve1d(impulse, [1, 2, 3], edge="clip"), [0, 1, 2, 3, 0])
    np.testing.assert_array_equal(correlate1d(impulse, [1, 2, 3], edge="clip"), [0, 3, 2, 1, 0])


@pytest.mark.parametrize("edge", PADDED_EDGES)
def test_edge_modes_equal_np_pad_then_valid_convolution(edge: str) -> None:
    rng = np.random.default_rng(0)
    signal, kernel = rng.normal(size=9), rng.normal(size=5)
    padded = np.pad(signal, 2, mode=NUMPY_PAD_MODES[edge])
    np.testing.assert_allclose(convolve1d(signal, kernel, edge=edge), np.convolve(padded, kernel, mode="valid"))
    np.testing.assert_array_equal(convolve1d(F, H, edge=edge)[1:-1], convolve1d(F, H))


# A 5-tap kernel with a single 1 shifts the signal by two samples and so shows the padding:
# [1, 0, 0, 0, 0] is h(-2) = 1, so (f * h)_i = f(i + 2) reads the right padding; [0, 0, 0, 0, 1]
# is h(2) = 1 and reads the left padding (the flip at work).
@pytest.mark.parametrize(
    ("edge", "reads_right_padding", "reads_left_padding"),
    [
        ("clip", [3, 4, 0, 0], [0, 0, 1, 2]),
        ("replicate", [3, 4, 4, 4], [1, 1, 1, 2]),
        ("symmetric", [3, 4, 4, 3], [2, 1, 1, 2]),
        ("circular", [3, 4, 1, 2], [3, 4, 1, 2]),
    ],
)
def test_edge_modes_match_hand_computed_shifts(
    edge: str, reads_right_padding: list[int], reads_left_padding: list[int]
) -> None:
    signal = [1, 2, 3, 4]
    np.testing.assert_array_equal(convolve1d(signal, [1, 0, 0, 0, 0], edge=edge), reads_right_padding)
    np.testing.assert_array_equal(convolve1d(signal, [0, 0, 0, 0, 1], edge=edge), reads_left_padding)


def test_stride_keeps_every_stride_th_output_and_dilation_inserts_holes() -> None:
    np.testing.assert_array_equal(convolve1d(F, H, edge="clip", stride=3), convolve1d(F, H, edge="clip")[::3])
    np.testing.assert_array_equal(convolve1d(F, H, dilation=2), convolve1d(F, [1, 0, 0, 0, -1]))
    # Dilated by 2, output i (centre i + 2) is f(i + 4) - f(i).
    np.testing.assert_array_equal(convolve1d(F, H, dilation=2), [9, 0, -4, 0])


@pytest.mark.parametrize("edge", EDGES)
def test_convolution_matrix_times_signal_equals_direct_convolution(edge: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(25):
        kernel_size, stride, dilation = rng.integers(1, 6), rng.integers(1, 4), rng.integers(1, 3)
        length = rng.integers(dilation * (kernel_size - 1) + 1, 13)
        signal, kernel = rng.normal(size=length), rng.normal(size=kernel_size)
        options = {"edge": edge, "stride": stride, "dilation": dilation}
        np.testing.assert_allclose(
            convolution_matrix(kernel, length, **options) @ signal, convolve1d(signal, kernel, **options)
        )


def test_convolution_matrix_of_the_lecture_kernel_is_banded_or_circulant() -> None:
    # (f * h)_i = f(i + 1) - f(i - 1): +1 right of the diagonal, -1 left of it.
    np.testing.assert_array_equal(
        convolution_matrix(H, 5, edge="valid"),
        [[-1, 0, 1, 0, 0], [0, -1, 0, 1, 0], [0, 0, -1, 0, 1]],
    )
    np.testing.assert_array_equal(
        convolution_matrix(H, 5, edge="clip"),
        [[0, 1, 0, 0, 0], [-1, 0, 1, 0, 0], [0, -1, 0, 1, 0], [0, 0, -1, 0, 1], [0, 0, 0, -1, 0]],
    )
    np.testing.assert_array_equal(
        convolution_matrix(H, 5, edge="circular"),
        [[0, 1, 0, 0, -1], [-1, 0, 1, 0, 0], [0, -1, 0, 1, 0], [0, 0, -1, 0, 1], [1, 0, 0, -1, 0]],
    )
    # Replicate: the padded sample copies f(0), so row 0 reads f(1) - f(0).
    np.testing.assert_array_equal(convolution_matrix(H, 5, edge="replicate")[0], [-1, 1, 0, 0, 0])


@pytest.mark.parametrize("edge", EDGES)
def test_convolve2d_with_a_separable_kernel_is_rows_then_columns(edge: str) -> None:
    rng = np.random.default_rng(2)
    image, column_kernel, row_kernel = rng.normal(size=(7, 6)), rng.normal(size=3), rng.normal(size=3)
    along_rows = np.stack([convolve1d(row, row_kernel, edge=edge) for row in image])
    expected = np.stack([convolve1d(column, column_kernel, edge=edge) for column in along_rows.T], axis=1)
    np.testing.assert_allclose(convolve2d(image, np.outer(column_kernel, row_kernel), edge=edge), expected)


def test_convolve2d_flips_both_axes_and_dilation_inserts_holes() -> None:
    rng = np.random.default_rng(3)
    image, kernel = rng.normal(size=(8, 9)), rng.normal(size=(3, 2))
    flipped = kernel[::-1, ::-1]
    np.testing.assert_allclose(convolve2d(image, kernel, edge="clip"), correlate2d(image, flipped, edge="clip"))
    with_holes = np.zeros((5, 3))
    with_holes[::2, ::2] = kernel
    np.testing.assert_allclose(correlate2d(image, kernel, dilation=2), correlate2d(image, with_holes))


@pytest.mark.parametrize(
    "options",
    [
        {"padding": "valid"},
        {"padding": "same"},
        {"padding": "valid", "stride": 2},
        {"padding": "valid", "dilation": 2},
        {"padding": "same", "dilation": 2},
    ],
    ids=str,
)
def test_keras_conv1d_sums_correlate1d_over_input_channels(options: dict) -> None:
    rng = np.random.default_rng(4)
    x, kernel, bias = rng.normal(size=(11, 3)), rng.normal(size=(3, 3, 2)), rng.normal(size=2)
    stride, dilation = options.get("stride", 1), options.get("dilation", 1)
    layer = keras.layers.Conv1D(2, 3, strides=stride, dilation_rate=dilation, padding=options["padding"])
    steps = {"edge": "clip" if options["padding"] == "same" else "valid", "stride": stride, "dilation": dilation}
    # z[:, f'] = b[f'] + sum over input channels f of (x[:, f] correlated with theta[:, f, f'])
    expected = np.stack(
        [bias[out] + sum(correlate1d(x[:, f], kernel[:, f, out], **steps) for f in range(3)) for out in range(2)],
        axis=-1,
    )
    np.testing.assert_allclose(_keras_output(layer, x, [kernel, bias]), expected, **TOLERANCE)


@pytest.mark.parametrize(
    ("kernel_size", "options"),
    [
        ((3, 3), {"padding": "valid"}),
        ((3, 2), {"padding": "same"}),  # rectangular and even: padding split 0 before, 1 after
        ((3, 3), {"padding": "valid", "stride": 2}),
        ((3, 3), {"padding": "same", "dilation": 2}),
        ((2, 3), {"padding": "valid", "dilation": 2}),
    ],
    ids=str,
)
def test_keras_conv2d_computes_the_lectures_conv_layer(kernel_size: tuple[int, int], options: dict) -> None:
    rng = np.random.default_rng(5)
    x, theta, bias = rng.normal(size=(9, 8, 3)), rng.normal(size=(*kernel_size, 3, 4)), rng.normal(size=4)
    stride, dilation = options.get("stride", 1), options.get("dilation", 1)
    layer = keras.layers.Conv2D(4, kernel_size, strides=stride, dilation_rate=dilation, padding=options["padding"])
    np.testing.assert_allclose(
        _keras_output(layer, x, [theta, bias]),
        conv_layer(x, theta, bias, stride=stride, dilation=dilation, padding=options["padding"]),
        **TOLERANCE,
    )


@pytest.mark.parametrize("dilation", [1, 2])
def test_keras_conv2d_same_padding_is_the_clip_edge_mode(dilation: int) -> None:
    rng = np.random.default_rng(6)
    image, kernel = rng.normal(size=(8, 7)), rng.normal(size=(3, 3))
    layer = keras.layers.Conv2D(1, 3, padding="same", dilation_rate=dilation, use_bias=False)
    np.testing.assert_allclose(
        _keras_output(layer, image[..., None], [kernel[..., None, None]])[..., 0],
        correlate2d(image, kernel, edge="clip", dilation=dilation),
        **TOLERANCE,
    )


def test_tf_symmetric_pad_then_valid_conv_is_the_symmetric_edge_mode_and_reflect_is_not() -> None:
    rng = np.random.default_rng(7)
    image, kernel = rng.normal(size=(6, 7)), rng.normal(size=(5, 5))
    layer = keras.layers.Conv2D(1, 5, padding="valid", use_bias=False)
    layer.build((1, 10, 11, 1))
    layer.set_weights([kernel[..., None, None].astype(np.float32)])

    def tf_pad_then_conv(mode: str) -> np.ndarray:
        padded = tf.pad(image[None, ..., None].astype(np.float32), [[0, 0], [2, 2], [2, 2], [0, 0]], mode=mode)
        return keras.ops.convert_to_numpy(layer(padded))[0, ..., 0]

    symmetric = correlate2d(image, kernel, edge="symmetric")
    np.testing.assert_allclose(tf_pad_then_conv("SYMMETRIC"), symmetric, **TOLERANCE)
    reflected = correlate2d(np.pad(image, 2, mode="reflect"), kernel)
    np.testing.assert_allclose(tf_pad_then_conv("REFLECT"), reflected, **TOLERANCE)
    assert not np.allclose(reflected, symmetric)


def test_keras_same_padding_at_stride_two_pads_less_before_than_the_lectures_layer() -> None:
    # Keras pads just enough for ceil(8 / 2) = 4 outputs: 1 row/column, all of it after. The
    # lecture's "same" (and blocks.pad_then_conv) pads 1 on both sides and keeps every 2nd output.
    rng = np.random.default_rng(8)
    x, theta, bias = rng.normal(size=(8, 8, 2)), rng.normal(size=(3, 3, 2, 3)), rng.normal(size=3)
    lecture_same = conv_layer(x, theta, bias, stride=2, padding="same")
    keras_same = _keras_output(keras.layers.Conv2D(3, 3, strides=2, padding="same"), x, [theta, bias])
    padded_after = np.pad(x, [(0, 1), (0, 1), (0, 0)])
    np.testing.assert_allclose(keras_same, conv_layer(padded_after, theta, bias, stride=2), **TOLERANCE)
    assert not np.allclose(keras_same, lecture_same, **TOLERANCE)
    zero_padded = keras.Sequential([keras.layers.ZeroPadding2D(1), keras.layers.Conv2D(3, 3, strides=2)])
    zero_padded.build((1, 8, 8, 2))
    zero_padded.layers[-1].set_weights([theta.astype(np.float32), bias.astype(np.float32)])
    np.testing.assert_allclose(_keras_output(zero_padded, x), lecture_same, **TOLERANCE)


@pytest.mark.parametrize(("window", "stride"), [(2, None), (3, 2), (2, 1)])
def test_keras_pooling_layers_equal_the_lectures_pooling(window: int, stride: int | None) -> None:
    x = np.random.default_rng(9).normal(size=(7, 6, 3))
    keras_max = _keras_output(keras.layers.MaxPooling2D(window, strides=stride), x)
    keras_average = _keras_output(keras.layers.AveragePooling2D(window, strides=stride), x)
    np.testing.assert_allclose(keras_max, max_pool2d(x, window, stride), **TOLERANCE)
    np.testing.assert_allclose(keras_average, average_pool2d(x, window, stride), **TOLERANCE)


def test_pooling_formulas_on_a_hand_computed_example() -> None:
    x = np.arange(16.0).reshape(4, 4, 1)
    np.testing.assert_array_equal(max_pool2d(x)[..., 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(average_pool2d(x)[..., 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: convolve1d(F, H, edge="reflect"), "edge must be one of"),
        (lambda: convolve1d(F, H, stride=0), "must be >= 1"),
        (lambda: convolve1d(F, H, dilation=4), "smaller than the"),
        (lambda: correlate2d(F, H), "2-D"),
        (lambda: conv_layer(np.ones((4, 4, 2)), np.ones((3, 3, 3, 1)), np.ones(1)), "shapes"),
        (lambda: conv_layer(np.ones((4, 4, 1)), np.ones((3, 3, 1, 1)), np.ones(1), padding="full"), "'full'"),
        (lambda: max_pool2d(np.ones((1, 4, 1))), "smaller than the"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_value(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
