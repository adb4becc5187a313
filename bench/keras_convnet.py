"""The keras.io "Simple MNIST convnet" recipe, run on Fashion-MNIST as table 4's baseline.

keras-team/keras-io `examples/vision/mnist_convnet.py` (fchollet): Conv2D 32 3x3 relu, MaxPool 2,
Conv2D 64 3x3 relu, MaxPool 2, Flatten, Dropout 0.5, Dense 10 softmax; Adam (Keras defaults),
categorical cross-entropy, batch 128, 15 epochs, inputs scaled to 0..1, `model.fit`. The
example's `validation_split=0.1` holds out the last 10% of the training images; here they come
from `data.load_splits`, which holds out the same last 10%, so all three recipes of table 4 see
the same training, validation and test images.

    python -m bench.keras_convnet --output RESULT.json [--seed S] [--epochs N] [--max-train-examples N] [--max-eval-examples N]

Writes {test_accuracy, train_seconds, epochs, parameters, curve: [{epoch, seconds, val_accuracy}]}
where `seconds` is the training clock at the end of each epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.files import write_text_atomically

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger(__name__)

EPOCHS = 15
BATCH_SIZE = 128


def build_model(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10):
    """(batch, 28, 28, 1) float32 0..1 -> (batch, num_classes) probabilities; 34,826 parameters at 28x28x1."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="keras_io_mnist_convnet",
    )


def _arrays(dataset, num_classes: int):
    """An unbatched (uint8 image, label) dataset -> (float32 0..1 images, float32 one-hot labels)."""
    import numpy as np

    images, labels = [], []
    for image_batch, label_batch in dataset.batch(4096):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return (np.concatenate(images).astype("float32") / 255.0, np.eye(num_classes, dtype="float32")[np.concatenate(labels)])


def train(epochs: int, max_train_examples: int | None, max_eval_examples: int | None, seed: int = 0) -> dict:
    import keras

    keras.utils.set_random_seed(seed)  # initial weights, dropout and fit's shuffling

    from pipeline import data
    from pipeline.config import DataConfig

    splits = data.load_splits(
        DataConfig(max_train_examples=max_train_examples, max_eval_examples=max_eval_examples), seed=0
    )
    num_classes = len(splits.class_names)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        _arrays(split, num_classes) for split in (splits.train, splits.validation, splits.test)
    )
    model = build_model(splits.image_shape, num_classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    curve: list[dict] = []
    started = time.perf_counter()
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: curve.append(
            {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 2), "val_accuracy": float(logs["val_accuracy"])}
        )
    )
    model.fit(
        x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, validation_data=(x_val, y_val),
        callbacks=[record], verbose=2,
    )  # fmt: skip
    train_seconds = time.perf_counter() - started
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
    return {
        "test_accuracy": float(test_accuracy),
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "seed": seed,
        "parameters": int(model.count_params()),
        "train_images": int(len(x_train)),
        "test_images": int(len(x_test)),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keras_convnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="where to write the result JSON")
    parser.add_argument("--seed", type=int, default=0, help="random seed (weights, dropout, shuffling)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-eval-examples", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = train(args.epochs, args.max_train_examples, args.max_eval_examples, args.seed)
    write_text_atomically(args.output, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
