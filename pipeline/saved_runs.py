"""A completed run directory as `evaluate`, `predict` and the exports read it: its model and
class names, and the model's probabilities on images in memory."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from architectures.errors import UserError

CONFIG_FILE, MODEL_FILE, LABELS_FILE = "config.yaml", "model.keras", "labels.txt"
PREDICTION_BATCH = 256  # images per forward pass when collecting test-set probabilities


def load_run_model(path: str | Path) -> tuple[keras.Model, tuple[str, ...], Path | None]:
    """A run directory's (or a bare .keras file's) model, class names and run directory."""
    import architectures  # noqa: F401  (registers the zoo's custom layers for deserialisation)

    path = Path(path)
    run_dir = path if path.is_dir() else None
    model_path = path / MODEL_FILE if run_dir else path
    if not model_path.is_file() or model_path.suffix != ".keras":
        raise UserError(f"no trained model at {path} (expected a run directory with {MODEL_FILE}, or a .keras file)")
    model = keras.models.load_model(model_path)
    labels_path = model_path.with_name(LABELS_FILE)
    num_classes = int(model.output_shape[-1])
    if labels_path.is_file():
        class_names = tuple(line for line in labels_path.read_text().splitlines() if line)
    else:
        class_names = tuple(str(index) for index in range(num_classes))
    if len(class_names) != num_classes:
        raise UserError(f"{labels_path} lists {len(class_names)} classes but the model predicts {num_classes}")
    return model, class_names, run_dir


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = PREDICTION_BATCH) -> np.ndarray:
    """Pixels [N, H, W, C] -> probabilities [N, K], `batch_size` images per forward pass."""
    forward = tf.function(lambda batch: model(batch, training=False))
    outputs = [
        forward(tf.convert_to_tensor(images[start : start + batch_size], tf.float32)).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)
