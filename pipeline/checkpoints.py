"""Backups for resume, and the best checkpoint.

A backup is a `tf.train.Checkpoint` of the model, the optimizer (its step counter drives the
learning-rate schedule; its slots hold momentum and the EMA), the loop position, the epoch
history and a time budget's plan (JSON string variables, so they are saved in the same atomic
step). `tf.train.CheckpointManager` writes the data files first and the `checkpoint` index last, atomically, so a kill during a backup leaves the index on the previous complete
backup: that is the one a restart loads.

Only the chief's backups are kept. In multi-worker runs every worker must take part in saving
(variables are read collectively), so the others save into a temporary directory and delete
it at once (TF Model Garden's and the tf.distribute guide's pattern).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import keras
import tensorflow as tf

from pipeline.budget import Plan
from pipeline.files import write_atomically
from pipeline.train import EpochRecord, LoopState

logger = logging.getLogger(__name__)

BACKUP_DIR = "backup"
BEST_WEIGHTS = "best.weights.h5"


class BackupManager:
    def __init__(self, run_dir: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, *, chief: bool):
        """`run_dir` is the run's real directory on every worker: the chief writes backups there
        and every worker restores from there (a shared filesystem, as for TF's BackupAndRestore)."""
        self.run_dir, self.chief = Path(run_dir), chief
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="backup_epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="backup_step_in_epoch")
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False, name="backup_history")
        self.plan_json = tf.Variable("", dtype=tf.string, trainable=False, name="backup_time_budget_plan")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            history_json=self.history_json,
            plan_json=self.plan_json,
        )
        self.directory = self.run_dir / BACKUP_DIR
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=2)

    def save(self, state: LoopState) -> None:
        self.epoch.assign(state.epoch)
        self.step_in_epoch.assign(state.step_in_epoch)
        self.history_json.assign(json.dumps([asdict(record) for record in state.history]))
        self.plan_json.assign(state.plan.to_json() if state.plan else "")
        if self.chief:
            path = self.manager.save()
            logger.debug("backup %s (epoch %d, step %d)", path, state.epoch + 1, state.step_in_epoch)
            return
        scratch = tempfile.mkdtemp(prefix="convnets-worker-backup-")
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1).save()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def restore(self) -> LoopState | None:
        """The latest complete backup, or None. Every worker reads the chief's backup."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return None
        self.checkpoint.restore(latest).expect_partial()
        history = [EpochRecord(**row) for row in json.loads(self.history_json.numpy().decode())]
        state = LoopState(
            epoch=int(self.epoch.numpy()),
            step_in_epoch=int(self.step_in_epoch.numpy()),
            history=history,
            plan=Plan.from_json(self.plan_json.numpy().decode()),
        )
        logger.info(
            "resumed from backup %s: epoch %d, step %d (%d epochs done)",
            latest, state.epoch + 1, state.step_in_epoch, len(history),
        )
        return state


def save_best_weights(model: keras.Model, run_dir: Path) -> Path:
    """Atomically replace `best.weights.h5`."""
    return write_atomically(Path(run_dir) / BEST_WEIGHTS, model.save_weights)
