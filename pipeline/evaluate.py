"""Evaluation: predictions -> metrics, `metrics.json`, figures and a terminal summary.

Nothing here trains or loads a model: `run.py` runs the model and hands over integer labels
and class probabilities. Metrics follow scikit-learn's `classification_report` with
`zero_division=0` (a ratio with an empty denominator is 0.0, not an error); the loss is the
one Keras's sparse categorical cross-entropy gives for the same probabilities. Figures are
drawn on `matplotlib.figure.Figure` objects and rendered by Agg, with no pyplot: no
display, no global figure registry to leak from a long training process.

Every file goes through `pipeline.files.write_atomically`, so a reader (or a pre-empted run)
never sees half a file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.files import write_atomically, write_text_atomically

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Keras's backend.epsilon(): the clip its cross-entropy applies to probabilities, so a
# confident mistake costs -log(1e-7) = 16.1 instead of infinity.
PROBABILITY_EPSILON = 1e-7
TOP_K = 5
MAX_ANNOTATED_CLASSES = 20  # beyond this, numbers in the confusion-matrix cells overlap
MAX_NAMED_CLASSES = 60  # beyond this, tick labels merge into a bar even on the largest figure
FIGURE_DPI = 120
MACRO_AVERAGE_NAME = "macro avg"

MISCLASSIFIED_SHOWN = 36  # images in misclassified.png, most confident mistakes first


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one evaluation over `num_examples` examples and K = len(class_names) classes.

    Per-class tuples have K entries, in class-index order. A ratio with an empty denominator
    is 0.0 (scikit-learn's `zero_division=0`): precision of a class never predicted, recall of
    a class absent from the labels, F1 where precision and recall are both 0.
    """

    num_examples: int
    top1_accuracy: float  # fraction in [0, 1]
    top5_accuracy: float  # label among the k = min(5, K) most probable classes
    loss: float  # mean cross-entropy, nats
    class_names: tuple[str, ...]
    precision: tuple[float, ...]  # correct / predicted as the class
    recall: tuple[float, ...]  # correct / labelled as the class
    f1: tuple[float, ...]  # harmonic mean of precision and recall
    support: tuple[int, ...]  # examples labelled as the class
    confusion_matrix: tuple[tuple[int, ...], ...]  # [true class][predicted class] -> count

    @property
    def top_k(self) -> int:
        """The k of `top5_accuracy`: 5, or K when there are fewer classes."""
        return min(TOP_K, len(self.class_names))

    @property
    def macro_average(self) -> dict[str, float]:
        """Unweighted mean over all K classes of precision, recall and F1."""
        return {
            "precision": float(np.mean(self.precision)),
            "recall": float(np.mean(self.recall)),
            "f1": float(np.mean(self.f1)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only, so `json.dumps` takes it and `json.loads` gives it back equal."""
        return {
            "num_examples": self.num_examples,
            "top1_accuracy": self.top1_accuracy,
            "top5_accuracy": self.top5_accuracy,
            "top5_k": self.top_k,
            "loss": self.loss,
            "macro_average": self.macro_average,
            "per_class": {
                name: {
                    "precision": self.precision[index],
                    "recall": self.recall[index],
                    "f1": self.f1[index],
                    "support": self.support[index],
                }
                for index, name in enumerate(self.class_names)
            },
            "class_names": list(self.class_names),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
        }


def classification_report(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> ClassificationReport:
    """Accuracy, loss, per-class metrics and the confusion matrix of a set of predictions.

    labels: integer [N], values in [0, K). probabilities: float [N, K], non-negative; rows
    need not sum to exactly 1 (dequantized int8 TFLite outputs don't). The predicted class
    is `np.argmax` (a tie goes to the lower class index), and top-k ranks ties the same way.
    Raises ValueError for inconsistent shapes, labels out of range, negative or non-finite
    probabilities, or repeated class names.
    """
    names = tuple(str(name) for name in class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {list(names)}")
    labels, probabilities = _checked_predictions(labels, probabilities, len(names))
    num_classes = len(names)

    predicted = np.argmax(probabilities, axis=1)
    confusion = np.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    precision = _ratio_or_zero(correct, confusion.sum(axis=0))
    recall = _ratio_or_zero(correct, support)
    f1 = _ratio_or_zero(2 * precision * recall, precision + recall)

    # A stable sort of the negated scores ranks tied classes by index, as np.argmax does,
    # so the first column is exactly `predicted`.
    top_k_classes = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(TOP_K, num_classes)]
    top_k_hits = (top_k_classes == labels[:, None]).any(axis=1)

    return ClassificationReport(
        num_examples=len(labels),
        top1_accuracy=float(np.mean(predicted == labels)),
        top5_accuracy=float(np.mean(top_k_hits)),
        loss=_cross_entropy(labels, probabilities),
        class_names=names,
        precision=tuple(float(value) for value in precision),
        recall=tuple(float(value) for value in recall),
        f1=tuple(float(value) for value in f1),
        support=tuple(int(count) for count in support),
        confusion_matrix=tuple(tuple(int(count) for count in row) for row in confusion),
    )


def write_metrics_json(path: PathLike, report: ClassificationReport, extra: dict[str, Any] | None = None) -> None:
    """`report.to_dict()` plus the `extra` keys (run facts: arch, epochs, ...) as one JSON object.

    `extra` must be JSON-serializable and must not reuse a report key (ValueError); the text
    is built before any file is opened, so a bad value leaves an existing file untouched.
    """
    payload = report.to_dict()
    clashing_keys = sorted(set(payload) & set(extra or {}))
    if clashing_keys:
        raise ValueError(f"extra keys {clashing_keys} would overwrite report entries")
    payload.update(extra or {})
    text = json.dumps(payload, indent=2) + "\n"
    write_text_atomically(path, text)
    logger.info("wrote %s", path)


def plot_learning_curves(history_csv: PathLike, png_path: PathLike) -> None:
    """Loss and accuracy per epoch, train vs validation, from the trainer's CSV log.

    The CSV is Keras CSVLogger's format: 0-based "epoch" plus one column per logged value,
    "NA" where a value was not logged. Plotted columns: loss, val_loss, accuracy,
    val_accuracy, and learning_rate on a second axis of the loss panel; any may be missing.
    """
    epochs, columns = _read_history(history_csv)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    panels = (
        (loss_axes, "loss", (("loss", "train"), ("val_loss", "validation"))),
        (accuracy_axes, "accuracy", (("accuracy", "train"), ("val_accuracy", "validation"))),
    )
    for axes, quantity, series in panels:
        for column, label in series:
            if column in columns:
                axes.plot(epochs, columns[column], marker=".", label=label)
        axes.set(title=quantity, xlabel="epoch", ylabel=quantity)
        if axes.lines:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
            axes.legend(loc="best")
        else:
            axes.set(xticks=[], yticks=[])
            axes.text(0.5, 0.5, f"no {quantity} logged", ha="center", va="center", transform=axes.transAxes)
    if "learning_rate" in columns:
        rate_axes = loss_axes.twinx()
        rate_axes.plot(epochs, columns["learning_rate"], color="gray", linestyle=":", label="learning rate")
        rate_axes.set_ylabel("learning rate", color="gray")
    figure.suptitle(f"Learning curves ({len(epochs)} epochs)")
    _save_figure(figure, png_path)


def plot_confusion_matrix(report: ClassificationReport, png_path: PathLike, normalize: bool = True) -> None:
    """Heat map, true class by row and predicted class by column; each row normalized to sum
    to 1 (recall on the diagonal) when `normalize`, else raw counts. Cells carry their value
    when K <= 20, tick labels the class names when K <= 60."""
    counts = np.array(report.confusion_matrix, dtype=np.int64)
    num_classes = len(report.class_names)
    if normalize:
        values = _ratio_or_zero(counts, counts.sum(axis=1, keepdims=True))
        color_max, cell_format = 1.0, "{:.2f}"
    else:
        values = counts
        color_max, cell_format = max(int(counts.max()), 1), "{:d}"

    side_inches = float(np.clip(2.5 + 0.45 * num_classes, 5.0, 24.0))
    figure = Figure(figsize=(side_inches + 1.2, side_inches), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=color_max, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    if num_classes <= MAX_NAMED_CLASSES:
        positions = range(num_classes)
        axes.set_xticks(positions, labels=report.class_names, rotation=45, ha="right", rotation_mode="anchor")
        axes.set_yticks(positions, labels=report.class_names)
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for true_index, predicted_index in np.ndindex(values.shape):
            value = values[true_index, predicted_index]
            axes.text(
                predicted_index, true_index, cell_format.format(value), ha="center", va="center", fontsize=8,
                color="white" if value > color_max / 2 else "black",  # readable on dark cells
            )
    axes.set(xlabel="predicted class", ylabel="true class")
    kind = "row-normalized" if normalize else "counts"
    axes.set_title(f"Confusion matrix ({kind}), {report.num_examples} examples, top-1 {report.top1_accuracy:.2%}")
    _save_figure(figure, png_path)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    png_path: PathLike,
    max_images: int = MISCLASSIFIED_SHOWN,
) -> int:
    """A grid of the most confident mistakes first, each titled "true -> predicted (p=0.87)".

    images: uint8 [N, H, W, C], C = 1 (drawn gray) or 3; labels and probabilities as in
    `classification_report`; p is the predicted class's probability after normalizing the
    row to sum 1. Returns how many images were drawn (at most `max_images`); with no
    mistakes the PNG says so and 0 is returned.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    labels, probabilities = _checked_predictions(labels, probabilities, len(class_names))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(labels) or images.shape[3] not in (1, 3):
        raise ValueError(
            f"images must be uint8 [N={len(labels)}, H, W, 1 or 3], got {images.dtype} {list(images.shape)}"
        )
    shown = most_confident_mistakes(labels, probabilities)[:max_images]
    if len(shown) == 0:
        figure = Figure(figsize=(5, 1.5))
        figure.text(0.5, 0.5, f"No misclassified images among {len(labels)}", ha="center", va="center", fontsize=12)
        _save_figure(figure, png_path)
        return 0

    row_probabilities = _normalized_rows(probabilities)
    grid_columns = math.ceil(math.sqrt(len(shown)))
    grid_rows = math.ceil(len(shown) / grid_columns)
    figure = Figure(figsize=(1.9 * grid_columns, 2.0 * grid_rows + 0.4), layout="constrained")
    grid_axes = figure.subplots(grid_rows, grid_columns, squeeze=False).ravel()
    for axes in grid_axes:
        axes.set_axis_off()
    for axes, index in zip(grid_axes, shown):
        image = images[index]
        if image.shape[-1] == 1:
            axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            axes.imshow(image)
        predicted = int(np.argmax(probabilities[index]))
        axes.set_title(
            f"{class_names[labels[index]]} -> {class_names[predicted]} (p={row_probabilities[index, predicted]:.2f})",
            fontsize=7,
        )
    figure.suptitle(f"Misclassified: {len(shown)} most confident shown")
    _save_figure(figure, png_path)
    return len(shown)


def format_summary(report: ClassificationReport) -> str:
    """Top-1, top-k and loss on one line, then precision/recall/F1/support per class and the
    macro average, as a fixed-width table for the terminal."""
    name_width = max(len(MACRO_AVERAGE_NAME), *(len(name) for name in report.class_names))
    row_format = "{:<{width}}  {:>9}  {:>6}  {:>6}  {:>7}"
    lines = [
        f"examples {report.num_examples}   top-1 {report.top1_accuracy:.2%}   "
        f"top-{report.top_k} {report.top5_accuracy:.2%}   loss {report.loss:.4f}",
        "",
        row_format.format("class", "precision", "recall", "f1", "support", width=name_width),
    ]
    per_class = zip(report.class_names, report.precision, report.recall, report.f1, report.support)
    for name, precision, recall, f1, support in per_class:
        lines.append(
            row_format.format(name, f"{precision:.3f}", f"{recall:.3f}", f"{f1:.3f}", support, width=name_width)
        )
    macro = report.macro_average
    lines.append(
        row_format.format(
            MACRO_AVERAGE_NAME, f"{macro['precision']:.3f}", f"{macro['recall']:.3f}", f"{macro['f1']:.3f}",
            report.num_examples, width=name_width,
        )
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def _checked_predictions(
    labels: np.ndarray, probabilities: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """labels as int64 [N] and probabilities as float64 [N, K], or ValueError saying what is wrong."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if num_classes < 1:
        raise ValueError("class_names must not be empty")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty integer array [N], got {labels.dtype} {list(labels.shape)}")
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"probabilities must have shape [N={len(labels)}, K={num_classes}], got {list(probabilities.shape)}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    probabilities = probabilities.astype(np.float64)
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinity")
    if probabilities.min() < 0:
        raise ValueError(f"probabilities must be >= 0 (logits given?), got a minimum of {probabilities.min()}")
    return labels.astype(np.int64), probabilities


def _ratio_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise (broadcast), 0.0 where the denominator is 0."""
    numerator, denominator = np.broadcast_arrays(numerator, denominator)
    result = np.zeros(numerator.shape, dtype=np.float64)
    return np.divide(numerator, denominator, out=result, where=denominator != 0)


def _normalized_rows(probabilities: np.ndarray) -> np.ndarray:
    """[N, K] rows scaled to sum 1; an all-zero row stays zero."""
    return _ratio_or_zero(probabilities, probabilities.sum(axis=1, keepdims=True))


def _cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean of -log p[label], computed as Keras's sparse categorical cross-entropy does
    (keras/src/backend/tensorflow/nn.py): clip to [1e-7, 1 - 1e-7], then renormalize each
    row. An all-zero row (an int8 model's near-uniform output can dequantize to zeros)
    thereby scores as uniform, log K."""
    clipped = np.clip(probabilities, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    label_probabilities = clipped[np.arange(len(labels)), labels] / clipped.sum(axis=1)
    return float(np.mean(np.log(1.0 / label_probabilities)))


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices [M] of the misclassified examples, highest normalized predicted probability first
    (ties by index)."""
    predicted = np.argmax(probabilities, axis=1)
    mistakes = np.flatnonzero(predicted != labels)
    confidence = _normalized_rows(probabilities)[mistakes, predicted[mistakes]]
    return mistakes[np.argsort(-confidence, kind="stable")]


def _read_history(history_csv: PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """1-based epochs [E] and, for each plotted column present in the CSV, its values [E]
    (NaN where "NA" or empty, which matplotlib leaves as a gap)."""
    with open(history_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames or []
    # A resumed run appends to the same CSV and can log an epoch twice; the later row wins.
    rows_by_epoch = {int(float(row["epoch"])) if "epoch" in header else index: row for index, row in enumerate(rows)}
    epochs = sorted(rows_by_epoch)
    plotted = ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
    columns = {
        column: np.array([_logged_value(rows_by_epoch[epoch][column]) for epoch in epochs], dtype=np.float64)
        for column in plotted
        if column in header
    }
    return np.array(epochs, dtype=np.int64) + 1, columns


def _logged_value(text: str | None) -> float:
    """CSVLogger writes "NA" for a value missing in an epoch; a short row gives None."""
    if text is None or text.strip() in ("", "NA"):
        return math.nan
    return float(text)


def _save_figure(figure: Figure, png_path: PathLike) -> None:
    write_atomically(png_path, lambda temporary: figure.savefig(temporary, format="png", dpi=FIGURE_DPI))
    logger.info("wrote %s", png_path)
