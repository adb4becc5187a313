"""One function per CLI subcommand: a training run, an evaluation, a prediction.

A run directory (`<output_dir>/<run_name>`) holds, in the order they appear:
    config.yaml          the resolved config (first file written)
    backup/              atomic backups for resume (tf.train.Checkpoint)
    logs/                TensorBoard scalars per epoch
    history.csv          per-epoch metrics
    best.weights.h5      the best epoch by validation accuracy
    model.keras          the final model (best epoch; EMA weights when enabled), raw pixels in
    labels.txt           class names, one per line
    metrics.json         final test evaluation (written last: its presence marks a completed run)
    learning_curves.png, confusion_matrix.png, misclassified.png
Only the chief writes here; other workers write to a temporary directory they delete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from architectures.errors import UserError
from pipeline import augment, data, evaluate, finetune
from pipeline.budget import parse_duration
from pipeline.checkpoints import BEST_WEIGHTS, BackupManager, save_best_weights
from pipeline.config import RunConfig, from_yaml_file, to_dict, to_yaml
from pipeline.files import write_atomically, write_text_atomically
from pipeline.image_files import image_files
from pipeline.saved_runs import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    PREDICTION_BATCH,
    load_run_model,
    predict_probabilities,
)
from pipeline.strategy import describe as describe_strategy
from pipeline.strategy import is_chief, make_strategy, refuse_a_different_config, strategy_name
from pipeline.train import (
    EpochRecord,
    LoopState,
    Trainer,
    TrainingBudget,
    averaged_variables,
    build_training_model,
    make_optimizer,
    progress_wanted,
    resolve_precision,
)

logger = logging.getLogger(__name__)

METRICS_FILE, HISTORY_FILE = "metrics.json", "history.csv"


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    test_accuracy: float
    test_top5_accuracy: float
    epochs: int
    train_seconds: float
    total_seconds: float
    images_per_second: float
    already_completed: bool = False
    is_chief: bool = True

    def lines(self) -> list[str]:
        if not self.is_chief:
            return [f"worker done after {self.epochs} epochs; the chief writes {self.run_dir}"]
        status = "already completed (use --overwrite to retrain, --resume to continue)" if self.already_completed else "done"
        return [
            f"run {status}: {self.run_dir}",
            f"test accuracy {self.test_accuracy:.2%} (top-5 {self.test_top5_accuracy:.2%}) after {self.epochs} epochs",
            f"training {self.train_seconds:.0f} s at {self.images_per_second:,.0f} images/s; "
            f"wall time {self.total_seconds:.0f} s",
        ]


# ----------------------------------------------------------------------------- train


def train_run(config: RunConfig, *, resume: bool = False, overwrite: bool = False, exporting: bool = False) -> RunSummary:
    """Train, evaluate and save one run; resumes an interrupted run in the same directory.

    `exporting`: an export follows in the same job, so a time budget keeps time for it.
    """
    started = time.perf_counter()
    strategy = make_strategy(
        config.distribute.strategy, config.distribute.cpu_replicas, config.distribute.connect_timeout_seconds
    )
    refuse_a_different_config(strategy, to_yaml(config))
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        raise UserError(
            f"train.batch_size {config.train.batch_size} is not divisible by the {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
    run_dir = config.run_dir
    completed = _prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite, chief=chief)
    if completed is not None:
        return completed
    work_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="convnets-worker-"))
    fresh = not (run_dir / CONFIG_FILE).exists()
    try:
        return _train_in(config, strategy, run_dir, work_dir, chief, started, exporting)
    except UserError:
        if fresh and chief:  # e.g. a time budget too small: no half-made run directory is left
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if not chief:
            shutil.rmtree(work_dir, ignore_errors=True)


def _prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool, chief: bool) -> RunSummary | None:
    """Decide fresh / resume / already done. Returns a summary if the run is already done.

    Nothing is written here: config.yaml comes once the data and model are ready, so a bad
    dataset or option leaves no half-made run directory behind.
    """
    saved_config = run_dir / CONFIG_FILE
    if overwrite and run_dir.exists() and chief:
        logger.info("--overwrite: removing %s", run_dir)
        shutil.rmtree(run_dir)
    if (run_dir / METRICS_FILE).exists() and not resume:
        return _completed_summary(run_dir)
    if saved_config.exists():
        previous = from_yaml_file(saved_config)
        differences = _config_differences(previous, config, ignore=("train.epochs",) if resume else ())
        if differences:
            raise UserError(
                f"{run_dir} holds a run with a different config ({differences[0]}); "
                "use --overwrite to replace it or --run-name for a new run"
            )
        if resume and (run_dir / METRICS_FILE).exists() and chief:
            (run_dir / METRICS_FILE).unlink()  # continuing: the run is no longer complete
    return None


def _config_differences(old: RunConfig, new: RunConfig, ignore: tuple[str, ...]) -> list[str]:
    def flatten(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and key != "options":
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    old_values, new_values = dict(flatten(to_dict(old))), dict(flatten(to_dict(new)))
    return [
        f"{key}: {old_values.get(key)!r} then, {new_values.get(key)!r} now"
        for key in new_values
        if key not in ignore and old_values.get(key) != new_values.get(key)
    ]


def _completed_summary(run_dir: Path) -> RunSummary:
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    run = metrics.get("run", {})
    return RunSummary(
        run_dir=run_dir,
        test_accuracy=metrics["top1_accuracy"],
        test_top5_accuracy=metrics["top5_accuracy"],
        epochs=run.get("epochs", 0),
        train_seconds=run.get("train_seconds", 0.0),
        total_seconds=0.0,
        images_per_second=run.get("images_per_second", 0.0),
        already_completed=True,
    )


@dataclass
class _Training:
    """What `_prepare` sets up for one training run, for `_fit` and `_finish`."""

    config: RunConfig
    strategy: tf.distribute.Strategy
    run_dir: Path
    work_dir: Path  # run_dir on the chief, a temporary directory elsewhere
    chief: bool
    precision: str
    splits: data.DatasetSplits
    augmenter: augment.Augmenter | None
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    backups: BackupManager
    trainer: Trainer
    state: LoopState


def _train_in(
    config: RunConfig, strategy, run_dir: Path, work_dir: Path, chief: bool, started: float, exporting: bool
) -> RunSummary:
    training = _prepare(config, strategy, run_dir, work_dir, chief, exporting)
    train_seconds = _fit(training)
    return _finish(training, train_seconds, started)


def _prepare(config: RunConfig, strategy, run_dir: Path, work_dir: Path, chief: bool, exporting: bool) -> _Training:
    """Seeds and precision, the data, the model and optimizer, the backup to resume from."""
    keras.utils.set_random_seed(config.seed)
    if config.data.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(config.train.precision)
    keras.mixed_precision.set_global_policy(precision)
    logger.info("precision: %s%s", precision, " (auto)" if config.train.precision == "auto" else "")

    splits = data.load_splits(config.data, config.seed)
    channel_mean, channel_std = data.training_statistics(splits, config.data.cache_dir)
    global_batch = config.train.batch_size
    steps_per_epoch = splits.num_examples["train"] // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"train.batch_size {global_batch} is larger than the {splits.num_examples['train']} training images"
        )
    if splits.num_examples["test"] == 0:
        raise UserError(f"{config.data.dataset} leaves no test images: add a test/ folder or raise data.validation_fraction")
    if config.train.steps_per_epoch is not None and config.train.steps_per_epoch < steps_per_epoch:
        logger.info("train.steps_per_epoch: %d of the split's %d steps per epoch", config.train.steps_per_epoch, steps_per_epoch)
        steps_per_epoch = config.train.steps_per_epoch
    num_classes = len(splits.class_names)
    logger.info(
        "strategy: %s; peak learning rate %g applies to the global batch as set (no automatic scaling)",
        describe_strategy(strategy, global_batch), config.train.learning_rate,
    )
    augmenter = augment.build_augmenter(
        config.augment, image_shape=splits.image_shape, num_classes=num_classes, seed=config.seed
    )
    logger.info("augmentation: %s", augment.describe(config.augment))
    with strategy.scope():
        model = build_training_model(
            config.model,
            image_shape=splits.image_shape,
            num_classes=num_classes,
            channel_mean=channel_mean,
            channel_std=channel_std,
            batch_norm_momentum=config.train.batch_norm_momentum,
            synchronized_batch_norm=config.distribute.sync_batch_norm and strategy.num_replicas_in_sync > 1,
        )
        optimizer = make_optimizer(config.train, steps_per_epoch)
        if config.train.freeze_backbone_epochs:
            finetune.use_two_phase_schedule(optimizer, config.train, steps_per_epoch)
        optimizer.build(model.trainable_variables)  # every variable, before any is frozen
    # Outside the scope: the loop position and history are plain host variables (a string
    # cannot be a collective-broadcast variable under MultiWorkerMirroredStrategy).
    backups = BackupManager(run_dir, model, optimizer, chief=chief)
    budget = _training_budget(config, splits, chief, exporting)
    logger.info(
        "model: %s, %s trainable parameters, %d steps/epoch x %s",
        config.model.arch, f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,}", steps_per_epoch,
        f"the epochs a time budget of {budget.seconds:.0f} s allows" if budget else f"{config.train.epochs} epochs",
    )
    if chief:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(work_dir / CONFIG_FILE, to_yaml(config))
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        strategy=strategy,
        config=config.train,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        global_batch_size=global_batch,
        show_progress=chief and progress_wanted(),
        budget=budget,
        phases=_fine_tuning_phases(config, model, splits.image_shape),
    )
    return _Training(
        config, strategy, run_dir, work_dir, chief, precision, splits, augmenter, model, optimizer, backups, trainer,
        state=backups.restore() or LoopState(),
    )  # fmt: skip


def _training_budget(config: RunConfig, splits, chief: bool, exporting: bool) -> TrainingBudget | None:
    if config.train.time_budget is None:
        return None
    validation_images = splits.num_examples["validation"]
    probe_images = min(validation_images, 4 * config.train.batch_size)  # a few batches: about a second
    return TrainingBudget(
        seconds=parse_duration(config.train.time_budget),
        validation_probe=data.evaluation_images(splits.splits["validation"].head(probe_images), in_memory=False),
        validation_probe_images=probe_images,
        validation_images=validation_images,
        test_images=splits.num_examples["test"],
        exporting=exporting,
        chief=chief,
    )


def _fine_tuning_phases(config: RunConfig, model: keras.Model, image_shape) -> finetune.FineTuningPhases | None:
    if not config.train.freeze_backbone_epochs:
        return None
    backbone = finetune.backbone_layers(model, config.model, image_shape)
    return finetune.FineTuningPhases(backbone, config.train.freeze_backbone_epochs)


def _fit(training: _Training) -> float:
    """Train to the configured epochs from `training.state`; the wall seconds it took.

    Each epoch logs a line and TensorBoard scalars; the best epoch's (EMA) weights are kept;
    backups go where the trainer says one is due, with history.csv beside them.
    """
    config, trainer, work_dir = training.config, training.trainer, training.work_dir
    splits = training.splits
    in_memory = splits.cache == "memory"
    train_dataset_fn = data.epoch_pipelines(
        splits.splits["train"], config.data, global_batch_size=trainer.global_batch_size, seed=config.seed,
        augment=training.augmenter, num_classes=trainer.num_classes, in_memory=in_memory,
    )  # fmt: skip
    validation = data.evaluation_images(splits.splits["validation"], in_memory)  # one object: its cache fills once
    summary_writer = tf.summary.create_file_writer(str(work_dir / "logs"))

    def on_epoch_end(record: EpochRecord, is_best: bool) -> None:
        logger.info(
            "epoch %d/%d: loss %.4f acc %.4f | val_loss %.4f val_acc %.4f | lr %.4g | %.0f s, %.0f img/s%s",
            record.epoch, trainer.epochs, record.loss, record.accuracy, record.val_loss,
            record.val_accuracy, record.learning_rate, record.seconds, record.images_per_second,
            " (best)" if is_best else "",
        )  # fmt: skip
        with summary_writer.as_default(step=record.epoch):
            for name in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second"):
                tf.summary.scalar(name, getattr(record, name))
        if is_best:
            with trainer.ema_weights():
                if training.chief:
                    save_best_weights(training.model, work_dir)

    def on_backup(current: LoopState) -> None:
        training.backups.save(current)
        if training.chief:
            _write_history_csv(work_dir / HISTORY_FILE, current.history)

    train_started = time.perf_counter()
    training.state = trainer.fit(
        state=training.state, train_dataset_fn=train_dataset_fn, validation=validation,
        on_backup=on_backup, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    summary_writer.close()
    return time.perf_counter() - train_started


def _finish(training: _Training, train_seconds: float, started: float) -> RunSummary:
    """The best weights back in the model; on the chief, the test evaluation, model, plots and metrics."""
    config, model, optimizer, history = training.config, training.model, training.optimizer, training.state.history
    run_dir, splits, chief = training.run_dir, training.splits, training.chief
    if chief and (training.work_dir / BEST_WEIGHTS).exists():
        model.load_weights(training.work_dir / BEST_WEIGHTS)
    elif config.train.ema_decay:
        getattr(optimizer, "inner_optimizer", optimizer).finalize_variable_values(averaged_variables(optimizer))

    logger.info("final weights fingerprint %s (worker %s)", weights_fingerprint(model), "chief" if chief else "non-chief")
    images_per_second = float(np.median([r.images_per_second for r in history])) if history else 0.0
    if not chief:
        return RunSummary(run_dir, float("nan"), float("nan"), len(history), train_seconds,
                          time.perf_counter() - started, images_per_second, is_chief=False)  # fmt: skip
    strategy, global_batch = training.strategy, config.train.batch_size
    run_facts = {
        "arch": config.model.arch,
        "dataset": config.data.dataset,
        "epochs": len(history),
        "train_seconds": round(sum(r.seconds for r in history), 1),
        "images_per_second": round(images_per_second, 1),
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": global_batch,
        "per_replica_batch": global_batch // strategy.num_replicas_in_sync,
        "peak_learning_rate": config.train.learning_rate,
        "precision": training.precision,
        "strategy": strategy_name(strategy),
        "best_val_accuracy": max((r.val_accuracy for r in history), default=None),
    }
    if training.state.plan is not None:
        run_facts["time_budget_plan"] = asdict(training.state.plan)
    report, flip_report, test_images, probabilities, test_labels = _evaluate_model(
        model, splits, config.augment.test_time_flip
    )
    if flip_report is not None:
        run_facts["test_time_flip"] = {"top1_accuracy": flip_report.top1_accuracy, "loss": flip_report.loss}
    _save_model(model, run_dir)
    write_text_atomically(run_dir / LABELS_FILE, "\n".join(splits.class_names) + "\n")
    evaluate.plot_learning_curves(run_dir / HISTORY_FILE, run_dir / "learning_curves.png")
    evaluate.plot_confusion_matrix(report, run_dir / "confusion_matrix.png")
    evaluate.plot_misclassified(test_images, test_labels, probabilities, splits.class_names, run_dir / "misclassified.png")
    run_facts["total_seconds"] = round(time.perf_counter() - started, 1)
    evaluate.write_metrics_json(
        run_dir / METRICS_FILE, report, extra={"run": run_facts, "data": {"source": splits.source, "skipped": splits.skipped}}
    )
    print(evaluate.format_summary(report), flush=True)
    if flip_report is not None:
        print(f"test-time flip (mean of the image and its mirror): top-1 {flip_report.top1_accuracy:.2%}", flush=True)
    return RunSummary(
        run_dir=run_dir,
        test_accuracy=report.top1_accuracy,
        test_top5_accuracy=report.top5_accuracy,
        epochs=len(history),
        train_seconds=run_facts["train_seconds"],
        total_seconds=time.perf_counter() - started,
        images_per_second=images_per_second,
    )


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 of every weight's bytes in model order: equal only for bit-identical models."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def _evaluate_model(model: keras.Model, splits, test_time_flip: bool = False) -> tuple:
    """The report on the test split, the flip-averaged report (None unless `test_time_flip`), and
    the images, probabilities and labels of the worst mistakes.

    Streamed in batches: a large test split is never held in memory; the misclassified images
    are fetched by a second pass. The headline accuracy stays single-pass, as exported models are.
    """
    labels, probabilities, flip_averaged = _test_predictions(model, splits.test, PREDICTION_BATCH, test_time_flip)
    report = evaluate.classification_report(labels, probabilities, splits.class_names)
    flip_report = None if flip_averaged is None else evaluate.classification_report(labels, flip_averaged, splits.class_names)
    shown = evaluate.most_confident_mistakes(labels, probabilities)[: evaluate.MISCLASSIFIED_SHOWN]
    wanted = tf.constant(np.isin(np.arange(len(labels)), shown))
    # One lambda per line: autograph cannot tell two same-signature lambdas on a line apart (it warns).
    picked = splits.test.enumerate().filter(lambda position, example: wanted[position])
    kept = picked.map(lambda position, example: example[0])
    images = np.stack(list(kept.as_numpy_iterator())) if len(shown) else np.zeros((0, *splits.image_shape), np.uint8)
    in_order = np.sort(shown)
    return report, flip_report, images, probabilities[in_order], labels[in_order]


def _test_predictions(
    model: keras.Model, examples: tf.data.Dataset, batch_size: int, test_time_flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """int64 labels (N,), probabilities (N, K) and, with `test_time_flip`, their mean with the
    mirrored images' (else None), `batch_size` images at a time: no image outlives its batch."""
    forward = tf.function(lambda batch: model(batch, training=False))
    probabilities, flip_averaged, labels = [], [], []
    for image_batch, label_batch in examples.batch(batch_size):
        images = tf.cast(image_batch, tf.float32)
        probabilities.append(forward(images).numpy())
        if test_time_flip:
            flip_averaged.append((probabilities[-1] + forward(tf.image.flip_left_right(images)).numpy()) / 2)
        labels.append(label_batch.numpy())
    flip_averaged = np.concatenate(flip_averaged) if test_time_flip else None
    return np.concatenate(labels).astype(np.int64), np.concatenate(probabilities), flip_averaged


def _save_model(model: keras.Model, run_dir: Path) -> None:
    write_atomically(run_dir / MODEL_FILE, model.save)


def _write_history_csv(path: Path, history: list[EpochRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(EpochRecord)])
    writer.writeheader()
    for record in history:  # Keras CSVLogger's convention: 0-based "epoch"
        writer.writerow({**asdict(record), "epoch": record.epoch - 1})
    write_text_atomically(path, buffer.getvalue())


# ----------------------------------------------------------------------------- evaluate, predict


def evaluate_run(
    path: str | Path, *, dataset: str | None = None, batch_size: int | None = None, test_time_flip: bool = False
) -> str:
    """Evaluate a run's model on its test split (or on `dataset`'s), `batch_size` images per forward
    pass (None: PREDICTION_BATCH); writes evaluation.json beside it. With `test_time_flip`, the
    accuracy of probabilities averaged with each mirrored image's is reported beside it."""
    import dataclasses

    batch_size = PREDICTION_BATCH if batch_size is None else batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    model, class_names, run_dir = load_run_model(path)
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        data_config = from_yaml_file(run_dir / CONFIG_FILE).data
    elif dataset is None:
        raise UserError(f"{path} is a bare model: say which data to evaluate on with --dataset")
    else:
        from pipeline.config import DataConfig

        data_config = DataConfig()
    height, width, channels = model.input_shape[1:]
    data_config = dataclasses.replace(
        data_config, dataset=dataset or data_config.dataset, image_size=height, channels=channels
    )
    splits = data.load_splits(data_config, seed=0)
    if len(splits.class_names) != len(class_names):
        raise UserError(f"{data_config.dataset} has {len(splits.class_names)} classes; the model predicts {len(class_names)}")
    labels, probabilities, flip_averaged = _test_predictions(model, splits.test, batch_size, test_time_flip)
    report = evaluate.classification_report(labels, probabilities, class_names)
    evaluated = {"dataset": data_config.dataset, "source": splits.source}
    summary = evaluate.format_summary(report)
    if test_time_flip:
        flip_report = evaluate.classification_report(labels, flip_averaged, class_names)
        evaluated["test_time_flip"] = {"top1_accuracy": flip_report.top1_accuracy, "loss": flip_report.loss}
        summary += f"\ntest-time flip (mean of the image and its mirror): top-1 {flip_report.top1_accuracy:.2%}"
    destination = (run_dir or Path(path).parent) / "evaluation.json"
    evaluate.write_metrics_json(destination, report, extra={"evaluated": evaluated})
    return summary + f"\nwritten to {destination}"


def predict_images(path: str | Path, inputs: list[str], *, top_k: int = 3) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k (class name, probability) for each readable image among files and folders.

    Files are checked and decoded as training reads image folders (`data.decode_files`: EXIF
    rotation, one colour mode, the model's square side), and one that cannot be used is skipped.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    model, class_names, _ = load_run_model(path)
    height, width, channels = model.input_shape[1:]
    if height != width:
        raise UserError(f"predict needs a model with a square input; this one takes {height}x{width}")
    files = image_files(inputs)
    pixels, kept, skipped = data.decode_files([Path(file) for file in files], (height, width, channels))
    for position, reason in skipped.items():
        logger.warning("skipped %s: %s", files[position], reason)
    readable = [str(files[position]) for position in kept]
    if not kept:
        raise UserError(f"none of {len(files)} file(s) could be read as an image")
    probabilities = predict_probabilities(model, pixels.astype(np.float32))
    k = min(top_k, len(class_names))
    results = []
    for file, row in zip(readable, probabilities):
        best = np.argsort(-row, kind="stable")[:k]
        results.append((file, [(class_names[index], float(row[index])) for index in best]))
    return results
