"""Evaluation metrics on a confusion matrix written out by hand, and the files and figures
built from them (real files in tmp_path, opened with Pillow); the `evaluate` subcommand on a
saved model and IDX files written here."""

import json
import math

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline import evaluate
from pipeline.run import evaluate_run
from tests.pipeline.test_data import write_idx_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = ("cat", "dog", "bird")

# Ten examples, three classes. Each row: (true class, probabilities); the predicted class is
# the row's argmax, and the probability of the true class is noted for the loss.
#
#                predicted cat  dog  bird   support
#   true cat               3    1    0        4
#   true dog               1    2    0        3
#   true bird              1    1    1        3
#   predicted as           5    4    1       10
HAND_EXAMPLES = [
    (0, [0.7, 0.2, 0.1]),  # cat  -> cat,  p(true) 0.7
    (0, [0.5, 0.3, 0.2]),  # cat  -> cat,  0.5
    (0, [0.8, 0.1, 0.1]),  # cat  -> cat,  0.8
    (0, [0.4, 0.5, 0.1]),  # cat  -> dog,  0.4
    (1, [0.1, 0.8, 0.1]),  # dog  -> dog,  0.8
    (1, [0.2, 0.7, 0.1]),  # dog  -> dog,  0.7
    (1, [0.6, 0.3, 0.1]),  # dog  -> cat,  0.3
    (2, [0.1, 0.1, 0.8]),  # bird -> bird, 0.8
    (2, [0.5, 0.25, 0.25]),  # bird -> cat, 0.25
    (2, [0.2, 0.5, 0.3]),  # bird -> dog,  0.3
]
HAND_CONFUSION = ((3, 1, 0), (1, 2, 0), (1, 1, 1))
# Product of the ten true-class probabilities: 0.7*0.5*0.8*0.4*0.8*0.7*0.3*0.8*0.25*0.3
#   = (0.7*0.7) * (0.8**3) * (0.5*0.4) * (0.3*0.3) * 0.25 = 0.49 * 0.512 * 0.2 * 0.09 * 0.25
HAND_LOSS = -math.log(0.49 * 0.512 * 0.2 * 0.09 * 0.25) / 10  # = 0.6786...


def hand_labels() -> np.ndarray:
    return np.array([label for label, _ in HAND_EXAMPLES], dtype=np.int64)


def hand_probabilities() -> np.ndarray:
    return np.array([row for _, row in HAND_EXAMPLES], dtype=np.float32)


@pytest.fixture
def hand_report() -> evaluate.ClassificationReport:
    return evaluate.classification_report(hand_labels(), hand_probabilities(), CLASS_NAMES)


def assert_valid_png(path, min_side: int = 100) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert min_side <= width <= 5000 and min_side <= height <= 5000, (width, height)
    return width, height


def assert_no_temp_files(directory, expected_names: set[str]) -> None:
    assert {path.name for path in directory.iterdir()} == expected_names


# ----------------------------------------------------------------------------- metrics


def test_report_matches_the_hand_confusion_matrix(hand_report):
    assert hand_report.num_examples == 10
    assert hand_report.confusion_matrix == HAND_CONFUSION
    assert hand_report.support == (4, 3, 3)
    assert hand_report.top1_accuracy == pytest.approx(0.6)  # diagonal 3 + 2 + 1 of 10
    # precision = diagonal / column total: cat 3/5, dog 2/4, bird 1/1
    assert hand_report.precision == pytest.approx((0.6, 0.5, 1.0))
    # recall = diagonal / row total: cat 3/4, dog 2/3, bird 1/3
    assert hand_report.recall == pytest.approx((0.75, 2 / 3, 1 / 3))
    # F1 = 2PR / (P + R): cat 0.9/1.35 = 2/3; dog (2/3)/(7/6) = 4/7; bird (2/3)/(4/3) = 1/2
    assert hand_report.f1 == pytest.approx((2 / 3, 4 / 7, 0.5))
    # macro = unweighted class means: (0.6+0.5+1)/3, (0.75+2/3+1/3)/3, (2/3+4/7+1/2)/3
    assert hand_report.macro_average == pytest.approx(
        {"precision": 0.7, "recall": 1.75 / 3, "f1": (2 / 3 + 4 / 7 + 0.5) / 3}
    )


def test_loss_is_mean_negative_log_probability_of_the_true_class(hand_report):
    assert hand_report.loss == pytest.approx(HAND_LOSS, rel=1e-6)


def test_unnormalized_rows_give_the_same_report_as_normalized_ones(hand_report):
    """Dequantized int8 outputs sum to roughly, not exactly, 1: rows are renormalized."""
    scaled = hand_probabilities() * np.linspace(0.5, 0.99, 10, dtype=np.float32)[:, None]
    report = evaluate.classification_report(hand_labels(), scaled, CLASS_NAMES)
    assert report.confusion_matrix == hand_report.confusion_matrix
    assert report.loss == pytest.approx(HAND_LOSS, rel=1e-6)


def test_all_zero_row_scores_as_uniform_like_keras():
    """Keras clips to 1e-7 before renormalizing, so an all-zero row costs log K, not infinity."""
    report = evaluate.classification_report(np.array([1]), np.zeros((1, 4)), ["a", "b", "c", "d"])
    assert report.loss == pytest.approx(math.log(4))


def test_confident_mistake_costs_clipped_loss_not_infinity():
    report = evaluate.classification_report(np.array([0]), np.array([[0.0, 1.0]]), ["a", "b"])
    # p(true) clips to 1e-7 and p(other) to 1 - 1e-7: the row still sums to 1.
    assert report.loss == pytest.approx(-math.log(1e-7))


def test_top5_counts_a_label_ranked_fifth_but_not_sixth():
    class_names = [f"class{index}" for index in range(7)]
    #  example 0: label 4 is ranked 5th (0.30 > 0.20 > 0.15 > 0.12 > 0.10) -> top-1 miss, top-5 hit
    #  example 1: label 5 is ranked 6th (0.08, after the five above)         -> top-1 miss, top-5 miss
    #  example 2: label 0 is ranked 1st -> hit, hit
    probabilities = np.array(
        [
            [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],
            [0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],
            [0.40, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10],
        ]
    )
    report = evaluate.classification_report(np.array([4, 5, 0]), probabilities, class_names)
    assert report.top1_accuracy == pytest.approx(1 / 3)
    assert report.top5_accuracy == pytest.approx(2 / 3)
    assert report.top_k == 5


def test_top5_ranks_ties_by_class_index_like_argmax():
    # Six classes tied: argmax picks class 0, and the top 5 are classes 0-4, so label 5 misses.
    report = evaluate.classification_report(np.array([0, 5]), np.full((2, 6), 1 / 6), list("abcdef"))
    assert report.top1_accuracy == pytest.approx(0.5)
    assert report.top5_accuracy == pytest.approx(0.5)
    assert report.confusion_matrix[5][0] == 1


def test_top5_uses_all_classes_when_there_are_fewer_than_five(hand_report):
    assert hand_report.top_k == 3
    assert hand_report.top5_accuracy == 1.0


def test_class_never_predicted_has_precision_zero_not_an_error():
    # bird is never predicted: precision 0/0 -> 0.0 and F1 0.0; its recall is 0/2.
    # fish never occurs in the labels: recall 0/0 -> 0.0.
    labels = np.array([0, 0, 1, 2, 2])
    probabilities = np.array(
        [[0.9, 0.1, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0], [0.6, 0.3, 0.1, 0.0], [0.3, 0.6, 0.1, 0.0]]
    )
    report = evaluate.classification_report(labels, probabilities, ["cat", "dog", "bird", "fish"])
    assert report.precision[2] == 0.0 and report.f1[2] == 0.0 and report.recall[2] == 0.0
    assert report.support[3] == 0 and report.recall[3] == 0.0 and report.precision[3] == 0.0
    # cat: predicted 2 times, right once; recall 1/2.  dog: predicted 3 times, right once; recall 1/1.
    assert report.precision[:2] == pytest.approx((0.5, 1 / 3))
    assert report.recall[:2] == pytest.approx((0.5, 1.0))


def test_to_dict_survives_a_json_round_trip(hand_report):
    as_dict = hand_report.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["per_class"]["dog"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert as_dict["macro_average"]["precision"] == pytest.approx(0.7)
    assert as_dict["confusion_matrix"] == [list(row) for row in HAND_CONFUSION]
    assert as_dict["class_names"] == list(CLASS_NAMES)
    assert as_dict["top5_k"] == 3


@pytest.mark.parametrize(
    "labels, probabilities, class_names, message",
    [
        (np.array([0, 1]), np.full((3, 2), 0.5), ["a", "b"], "shape"),
        (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], r"\[0, 2\)"),
        (np.array([0.0, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "integer"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), ["a", "b"], "logits"),
        (np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]), ["a", "b"], "NaN"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"], "unique"),
    ],
)
def test_inconsistent_inputs_raise_value_error(labels, probabilities, class_names, message):
    with pytest.raises(ValueError, match=message):
        evaluate.classification_report(labels, probabilities, class_names)


# ----------------------------------------------------------------------------- files


def test_metrics_json_holds_report_and_extra_with_no_temp_file_left(tmp_path, hand_report):
    path = tmp_path / "run" / "metrics.json"  # the parent does not exist yet
    evaluate.write_metrics_json(path, hand_report, extra={"arch": "resnet20", "epochs": 3})
    written = json.loads(path.read_text())
    assert written == {**hand_report.to_dict(), "arch": "resnet20", "epochs": 3}
    assert_no_temp_files(path.parent, {"metrics.json"})


def test_failed_metrics_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, hand_report):
    path = tmp_path / "metrics.json"
    evaluate.write_metrics_json(path, hand_report)
    before = path.read_text()
    with pytest.raises(TypeError):
        evaluate.write_metrics_json(path, hand_report, extra={"not_json": object()})
    with pytest.raises(ValueError, match="top1_accuracy"):
        evaluate.write_metrics_json(path, hand_report, extra={"top1_accuracy": 1.0})
    assert path.read_text() == before
    assert_no_temp_files(tmp_path, {"metrics.json"})


def test_summary_lists_accuracy_and_every_class(hand_report):
    summary = evaluate.format_summary(hand_report)
    lines = summary.splitlines()
    assert lines[0].split() == ["examples", "10", "top-1", "60.00%", "top-3", "100.00%", "loss", f"{HAND_LOSS:.4f}"]
    assert lines[2].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[3].split() == ["cat", "0.600", "0.750", "0.667", "4"]
    assert lines[5].split() == ["bird", "1.000", "0.333", "0.500", "3"]
    assert lines[6].split() == ["macro", "avg", "0.700", "0.583", "0.579", "10"]
    assert len({len(line) for line in lines[2:]}) == 1  # columns line up


# ----------------------------------------------------------------------------- figures


HISTORY_HEADER = "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n"


def test_learning_curves_write_a_png(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY_HEADER + "0,0.5,0.1,1.2,0.55,1.1\n1,0.7,0.05,0.8,0.68,0.9\n2,0.8,0.0,0.5,0.74,0.7\n")
    png_path = tmp_path / "figures" / "learning_curves.png"
    evaluate.plot_learning_curves(history, png_path)
    width, height = assert_valid_png(png_path)
    assert width > height  # two panels side by side
    assert_no_temp_files(png_path.parent, {"learning_curves.png"})


def test_learning_curves_plot_what_exists_when_columns_are_missing(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.5\n1,NA\n2,0.9\n")  # no validation, no accuracy
    evaluate.plot_learning_curves(history, tmp_path / "curves.png")
    assert_valid_png(tmp_path / "curves.png")


def test_learning_curves_of_a_run_with_no_finished_epoch(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY_HEADER)
    evaluate.plot_learning_curves(history, tmp_path / "curves.png")
    assert_valid_png(tmp_path / "curves.png")


def test_history_keeps_the_last_row_of_an_epoch_logged_twice_and_counts_from_one(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,1.5,NA\n1,1.0,1.1\n1,0.9,1.0\n2,0.8,\n")
    epochs, columns = evaluate._read_history(history)
    assert epochs.tolist() == [1, 2, 3]
    assert columns["loss"].tolist() == [1.5, 0.9, 0.8]
    assert np.isnan(columns["val_loss"][[0, 2]]).all() and columns["val_loss"][1] == 1.0
    assert set(columns) == {"loss", "val_loss"}


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_writes_a_png(tmp_path, hand_report, normalize):
    png_path = tmp_path / "confusion.png"
    evaluate.plot_confusion_matrix(hand_report, png_path, normalize=normalize)
    assert_valid_png(png_path, min_side=400)
    assert_no_temp_files(tmp_path, {"confusion.png"})


def test_confusion_matrix_of_many_classes_grows_and_skips_cell_numbers(tmp_path, hand_report):
    rng = np.random.default_rng(0)
    num_classes = 30
    report = evaluate.classification_report(
        rng.integers(0, num_classes, 200), rng.random((200, num_classes)), [f"class_{i}" for i in range(num_classes)]
    )
    evaluate.plot_confusion_matrix(report, tmp_path / "large.png")
    evaluate.plot_confusion_matrix(hand_report, tmp_path / "small.png")
    large_width, _ = assert_valid_png(tmp_path / "large.png")
    small_width, _ = assert_valid_png(tmp_path / "small.png")
    assert large_width > small_width


def hand_images(channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(10, 12, 12, channels), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_misclassified_grid_shows_every_mistake(tmp_path, channels):
    png_path = tmp_path / "misclassified.png"
    shown = evaluate.plot_misclassified(
        hand_images(channels), hand_labels(), hand_probabilities(), CLASS_NAMES, png_path
    )
    assert shown == 4  # the off-diagonal entries of HAND_CONFUSION: 1 + 1 + 1 + 1
    assert_valid_png(png_path)
    assert_no_temp_files(tmp_path, {"misclassified.png"})


def test_misclassified_grid_stops_at_max_images(tmp_path):
    shown = evaluate.plot_misclassified(
        hand_images(1), hand_labels(), hand_probabilities(), CLASS_NAMES, tmp_path / "m.png", max_images=2
    )
    assert shown == 2
    assert_valid_png(tmp_path / "m.png")


def test_mistakes_are_ordered_most_confident_first():
    labels = np.array([0, 1, 2, 0, 1])
    probabilities = np.array(
        [
            [0.2, 0.6, 0.2],  # 0 -> 1 with p 0.6
            [0.1, 0.9, 0.0],  # right
            [0.9, 0.0, 0.1],  # 2 -> 0 with p 0.9
            [0.3, 0.0, 0.7],  # 0 -> 2 with p 0.7
            [0.8, 0.2, 0.0],  # 1 -> 0 with p 0.8
        ]
    )
    assert evaluate.most_confident_mistakes(labels, probabilities).tolist() == [2, 4, 3, 0]


def test_misclassified_grid_with_no_mistakes_says_so(tmp_path):
    labels = hand_labels()
    perfect = np.eye(3, dtype=np.float32)[labels]
    png_path = tmp_path / "misclassified.png"
    shown = evaluate.plot_misclassified(hand_images(3), labels, perfect, CLASS_NAMES, png_path)
    assert shown == 0
    assert_valid_png(png_path)


def test_misclassified_rejects_images_that_do_not_match_the_labels(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        evaluate.plot_misclassified(
            hand_images(3)[:5], hand_labels(), hand_probabilities(), CLASS_NAMES, tmp_path / "m.png"
        )
    assert not (tmp_path / "m.png").exists()


# ----------------------------------------------------------------------------- the `evaluate` subcommand


@keras.saving.register_keras_serializable(package="convnets_tests")
class BatchSizeRecorder(keras.layers.Layer):
    """The identity; notes the batch size of every concrete batch it is traced with."""

    batch_sizes: list[int] = []

    def call(self, inputs):
        if inputs.shape[0] is not None:  # None: building the model symbolically
            BatchSizeRecorder.batch_sizes.append(inputs.shape[0])
        return inputs


def test_evaluate_feeds_the_model_batches_of_the_requested_size(tmp_path):
    write_idx_dir(tmp_path / "idx", gzipped=True, test_count=10)  # 6x6 gray images of 3 classes
    layers = [keras.Input((6, 6, 1)), BatchSizeRecorder(), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    keras.Sequential(layers).save(tmp_path / "model.keras")
    BatchSizeRecorder.batch_sizes.clear()
    evaluate_run(tmp_path / "model.keras", dataset=f"idx:{tmp_path / 'idx'}", batch_size=4)
    assert sorted(set(BatchSizeRecorder.batch_sizes)) == [2, 4]  # 10 test images: 4 + 4 + 2
    assert json.loads((tmp_path / "evaluation.json").read_text())["num_examples"] == 10
