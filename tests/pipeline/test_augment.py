"""pipeline/augment.py: every augmentation alone and all together, run where training runs them (inside
`tf.data.Dataset.map`, graph mode), on 28x28x1 and 32x32x3 batches."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from architectures.errors import UserError
from pipeline.augment import build_augmenter, describe
from pipeline.config import AugmentConfig

SHAPES = [(28, 28, 1), (32, 32, 3)]
NUM_CLASSES = 10
BATCH_SIZE = 16
# The default recipe turns pad-crop and flip on; each test names exactly what it turns on.
NOTHING = AugmentConfig(random_crop_padding=0, horizontal_flip=False)


def only(**changes) -> AugmentConfig:
    return dataclasses.replace(NOTHING, **changes)


EVERYTHING = AugmentConfig(
    random_crop_padding=2,
    horizontal_flip=True,
    random_resized_crop=True,
    rand_augment=True,
    random_erasing=0.5,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
)
EACH_AND_ALL = {
    "random_resized_crop": only(random_resized_crop=True),
    "pad_crop": only(random_crop_padding=2),
    "horizontal_flip": only(horizontal_flip=True),
    "rand_augment": only(rand_augment=True),
    "random_erasing": only(random_erasing=0.5),
    "mixup": only(mixup_alpha=0.2),
    "cutmix": only(cutmix_alpha=1.0),
    "all": EVERYTHING,
}


def random_batch(shape, seed=0, low=0, high=256):
    """(BATCH_SIZE, *shape) float32 whole pixel values and one-hot float32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(low, high, (BATCH_SIZE, *shape)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, BATCH_SIZE)]
    return images, labels


def augment_in_dataset(config, images, labels, seed=0):
    """One batch through `Dataset.map` (graph mode), as numpy."""
    augment = build_augmenter(config, image_shape=images.shape[1:], num_classes=labels.shape[1], seed=seed)
    dataset = tf.data.Dataset.from_tensors((images, labels)).map(augment)
    augmented_images, augmented_labels = next(iter(dataset))
    return augmented_images.numpy(), augmented_labels.numpy()


def black_and_white_batch(shape):
    """Alternating black (class 0) and white (class 1) images: the white fraction of pixels is class 1's weight."""
    is_white = np.arange(BATCH_SIZE) % 2
    images = np.broadcast_to(255.0 * is_white[:, None, None, None], (BATCH_SIZE, *shape)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[is_white]
    return images, labels


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("name", EACH_AND_ALL)
def test_augmentation_keeps_shapes_dtypes_pixel_range_and_one_hot_sums(name, shape):
    images, labels = random_batch(shape)
    augmented_images, augmented_labels = augment_in_dataset(EACH_AND_ALL[name], images, labels)
    assert augmented_images.shape == images.shape and augmented_images.dtype == np.float32
    assert augmented_labels.shape == labels.shape and augmented_labels.dtype == np.float32
    assert augmented_images.min() >= 0.0 and augmented_images.max() <= 255.0
    assert np.allclose(augmented_labels.sum(axis=1), 1.0, atol=1e-5)
    assert augmented_labels.min() >= 0.0
    assert not np.array_equal(augmented_images, images)


def test_all_augmentations_off_gives_no_augmenter():
    assert build_augmenter(only(), image_shape=(28, 28, 1), num_classes=10, seed=0) is None
    assert build_augmenter(only(random_erasing=0.0), image_shape=(28, 28, 1), num_classes=10, seed=0) is None


@pytest.mark.parametrize("shape", SHAPES)
def test_flip_mirrors_some_images_and_leaves_the_others(shape):
    images, labels = random_batch(shape)
    augmented_images, augmented_labels = augment_in_dataset(only(horizontal_flip=True), images, labels)
    mirrored = [np.array_equal(augmented, original[:, ::-1]) for augmented, original in zip(augmented_images, images)]
    unchanged = [np.array_equal(augmented, original) for augmented, original in zip(augmented_images, images)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert any(mirrored) and any(unchanged)
    assert np.array_equal(augmented_labels, labels)


def shifted_with_zero_fill(image, rows, columns):
    """`image` moved down by `rows` and right by `columns` pixels, zeros where it left."""
    height, width, _ = image.shape
    padded = np.pad(image, ((abs(rows), abs(rows)), (abs(columns), abs(columns)), (0, 0)))
    return padded[abs(rows) - rows : abs(rows) - rows + height, abs(columns) - columns : abs(columns) - columns + width]


@pytest.mark.parametrize("shape", SHAPES)
def test_pad_crop_shifts_each_image_by_at_most_the_padding_with_zero_fill(shape):
    padding = 3
    images, labels = random_batch(shape, low=1)  # no zero pixels: the fill is recognisable
    augmented_images, _ = augment_in_dataset(only(random_crop_padding=padding), images, labels)
    shifts = []
    for augmented, original in zip(augmented_images, images):
        matches = [
            (rows, columns)
            for rows in range(-padding, padding + 1)
            for columns in range(-padding, padding + 1)
            if np.array_equal(augmented, shifted_with_zero_fill(original, rows, columns))
        ]
        assert len(matches) == 1, "not a whole-pixel shift within the padding"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1, "every image got the same shift: crops are not per image"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "config",
    [only(mixup_alpha=1.0), only(cutmix_alpha=1.0), only(mixup_alpha=1.0, cutmix_alpha=1.0)],
    ids=["mixup", "cutmix", "mixup_or_cutmix"],
)
def test_mixed_label_weights_equal_the_pixel_mix(config, shape):
    """White fraction of an image's pixels == its label weight for the white class (CutMix: pasted area)."""
    images, labels = black_and_white_batch(shape)
    mixed_any = False
    for seed in range(4):
        augmented_images, augmented_labels = augment_in_dataset(config, images, labels, seed=seed)
        white_fraction = augmented_images.reshape(BATCH_SIZE, -1).mean(axis=1) / 255.0
        np.testing.assert_allclose(augmented_labels[:, 1], white_fraction, atol=1e-5)
        np.testing.assert_allclose(augmented_labels[:, 0] + augmented_labels[:, 1], 1.0, atol=1e-5)
        mixed_any |= bool(np.any((white_fraction > 0.01) & (white_fraction < 0.99)))
    assert mixed_any


@pytest.mark.parametrize("shape", SHAPES)
def test_cutmix_pastes_pixels_without_blending(shape):
    images, labels = black_and_white_batch(shape)
    augmented_images, _ = augment_in_dataset(only(cutmix_alpha=1.0), images, labels)
    assert set(np.unique(augmented_images)) <= {0.0, 255.0}


@pytest.mark.parametrize("shape", SHAPES)
def test_random_erasing_with_probability_one_changes_every_image(shape):
    images = np.full((BATCH_SIZE, *shape), 128.0, dtype="float32")
    _, labels = random_batch(shape)
    augmented_images, augmented_labels = augment_in_dataset(only(random_erasing=1.0), images, labels)
    changed = (augmented_images != images).reshape(BATCH_SIZE, -1).any(axis=1)
    assert changed.all()
    assert np.array_equal(augmented_labels, labels)


def test_random_erasing_with_probability_zero_changes_nothing():
    images, labels = random_batch((32, 32, 3))
    flipped, _ = augment_in_dataset(only(horizontal_flip=True), images, labels)
    flipped_no_erasing, _ = augment_in_dataset(only(horizontal_flip=True, random_erasing=0.0), images, labels)
    assert np.array_equal(flipped, flipped_no_erasing)


def test_rand_augment_changes_single_channel_images():
    images, labels = random_batch((28, 28, 1), low=40, high=200)  # not full range: auto-contrast acts too
    augmented_images, _ = augment_in_dataset(only(rand_augment=True, rand_augment_magnitude=0.5), images, labels)
    changed = (np.abs(augmented_images - images) > 1.0).reshape(BATCH_SIZE, -1).any(axis=1)
    assert changed.mean() >= 0.5


def test_rand_augment_ops_match_keras_rand_augment():
    """Our per-image RandAugment uses the op layers keras.layers.RandAugment builds, with the same arguments."""
    from pipeline.augment import _rand_augment_ops

    keras_rand_augment = keras.layers.RandAugment(factor=0.3)
    keras_ops = [getattr(keras_rand_augment, name) for name in keras_rand_augment._AUGMENT_LAYERS]
    ignored = ("name", "seed", "dtype", "trainable")

    def arguments(layer):
        return type(layer).__name__, {key: value for key, value in layer.get_config().items() if key not in ignored}

    assert [arguments(layer) for layer in _rand_augment_ops(0.3)] == [arguments(layer) for layer in keras_ops]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_resized_crop_zooms_into_an_axis_aligned_box(shape):
    height, width, channels = shape
    ramp = np.broadcast_to(np.linspace(0.0, 255.0, width)[None, :, None], shape)  # brightness grows to the right
    images = np.broadcast_to(ramp, (BATCH_SIZE, *shape)).astype("float32")
    _, labels = random_batch(shape)
    augmented_images, _ = augment_in_dataset(only(random_resized_crop=True), images, labels)
    assert np.allclose(augmented_images, augmented_images[:, :1], atol=1e-3), "rows differ: not an axis-aligned crop"
    assert (np.diff(augmented_images[:, 0, :, 0], axis=1) >= -1e-3).all(), "not increasing: flipped or rotated"
    spans = augmented_images.max(axis=(1, 2, 3)) - augmented_images.min(axis=(1, 2, 3))
    assert (spans < 200.0).any(), "no image was zoomed in"


def test_graph_has_no_stateful_ops_and_no_python_calls():
    """No seed variables (parallel map calls would race on them) and no py_function fallback."""
    augment = build_augmenter(EVERYTHING, image_shape=(32, 32, 3), num_classes=NUM_CLASSES, seed=0)
    concrete = tf.function(augment).get_concrete_function(
        tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((None, NUM_CLASSES), tf.float32)
    )
    graph_def = concrete.graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for function in graph_def.library.function for node in function.node_def}
    stateful_or_python = {
        op for op in op_types if "Variable" in op or "PyFunc" in op or op.startswith(("Random", "Rng", "Stateful"))
    }
    assert stateful_or_python == set()
    assert {"CropAndResize", "ImageProjectiveTransformV3", "StatelessIf"} <= op_types


def augmented_epoch(config, seed):
    images, labels = random_batch((32, 32, 3), seed=1)
    images = np.concatenate([images] * 4)
    labels = np.concatenate([labels] * 4)
    augment = build_augmenter(config, image_shape=(32, 32, 3), num_classes=NUM_CLASSES, seed=seed)
    options = tf.data.Options()
    options.deterministic = True
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=3)
        .batch(8)
        .map(augment, num_parallel_calls=4)
        .with_options(options)
    )
    return [(batch_images.numpy(), batch_labels.numpy()) for batch_images, batch_labels in dataset]


def test_same_seed_gives_identical_batches_with_parallel_map():
    first, second = augmented_epoch(EVERYTHING, seed=7), augmented_epoch(EVERYTHING, seed=7)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        assert np.array_equal(images_a, images_b) and np.array_equal(labels_a, labels_b)
    other_seed = augmented_epoch(EVERYTHING, seed=8)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other_seed))


def test_mixed_precision_policy_keeps_float32_images():
    images, labels = random_batch((28, 28, 1))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        augmented_images, augmented_labels = augment_in_dataset(EVERYTHING, images, labels)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert augmented_images.dtype == np.float32 and augmented_labels.dtype == np.float32


@pytest.mark.parametrize(
    "config, text",
    [
        (only(), "no augmentation"),
        (
            only(random_crop_padding=2, horizontal_flip=True, mixup_alpha=0.2),
            "pad-crop 2px, flip, mixup 0.2 (keras core)",
        ),
        (only(random_resized_crop=True), "resized-crop 0.08-1 (tf.image)"),
        (
            EVERYTHING,
            "resized-crop 0.08-1, pad-crop 2px, flip, randaugment 0.5, erasing p=0.5, mixup 0.8 or cutmix 1 per batch"
            " (keras core + tf.image)",
        ),
    ],
)
def test_describe_names_each_augmentation_and_its_library(config, text):
    assert describe(config) == text


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cutmix_alpha": 2.0}, "augment.cutmix_alpha must be in [0, 1]"),
        ({"random_crop_padding": 28}, "augment.random_crop_padding must be smaller than the image side 28"),
    ],
)
def test_values_the_layers_cannot_take_are_user_errors(changes, message):
    config = dataclasses.replace(NOTHING, **changes)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_augmenter(config, image_shape=(28, 28, 1), num_classes=NUM_CLASSES, seed=0)
