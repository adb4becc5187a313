"""Preemption inside one process: a stop agreed during validation keeps the epoch's steps, and
signals during a backup cannot cut it short. The multi-worker cases run on a real Slurm
cluster in test_slurm.py."""

import os
import signal
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.checkpoints import BackupManager
from pipeline.config import TrainConfig
from pipeline.data import array_split, evaluation_images
from pipeline.train import LoopState, StopRequests, Trainer, TrainingStopped, compiled_eval_step, evaluate_exactly, make_optimizer


def _small_classifier() -> keras.Model:
    inputs = keras.Input((4, 4, 1))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))


def test_evaluation_returns_none_once_a_stop_is_agreed_after_a_batch():
    images = evaluation_images(array_split(np.zeros((96, 4, 4, 1), np.uint8), np.zeros(96, np.int64), None), in_memory=False)
    strategy = tf.distribute.get_strategy()
    polls = []
    result = evaluate_exactly(compiled_eval_step(_small_classifier(), strategy), strategy, images,
                              global_batch_size=32, stop_agreed=lambda: len(polls.append(1) or polls) == 2)  # fmt: skip
    assert result is None and len(polls) == 2  # polled after each batch, left after the second of three


def test_a_stop_agreed_during_validation_backs_up_after_the_epochs_steps_and_exits_143():
    config = TrainConfig(epochs=2, steps_per_execution=2, learning_rate=0.01, warmup_epochs=0.0)
    trainer = Trainer(
        model=_small_classifier(), optimizer=make_optimizer(config, 4), strategy=tf.distribute.get_strategy(),
        config=config, num_classes=2, steps_per_epoch=4, global_batch_size=4, show_progress=False,
    )  # fmt: skip
    polls = []
    # Two polls in training (4 steps, 2 per call); the third is the first validation batch.
    trainer.stop_requests.agreed = lambda: len(polls.append(1) or polls) >= 3
    images, one_hot = np.zeros((16, 4, 4, 1), np.float32), np.eye(2, dtype=np.float32)[[0] * 16]
    backups = []
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit(
            state=LoopState(),
            train_dataset_fn=lambda epoch, skip, context: tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4).skip(skip),
            validation=evaluation_images(array_split(np.zeros((12, 4, 4, 1), np.uint8), np.zeros(12, np.int64), None), in_memory=False),
            on_backup=lambda current: backups.append((current.epoch, current.step_in_epoch, len(current.history))),
            on_epoch_end=lambda record, is_best: pytest.fail("the interrupted epoch was recorded"),
        )  # fmt: skip
    assert backups == [(0, 4, 0)]  # epoch 1's four steps kept; its validation runs again on resume
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "saved a backup at epoch 1 step 4" in str(stopped.value)


def test_sigterms_during_a_backup_only_set_the_flag_and_the_backup_restores_intact(tmp_path):
    model = _small_classifier()
    optimizer = make_optimizer(TrainConfig(epochs=1, warmup_epochs=0.0), steps_per_epoch=1)
    optimizer.build(model.trainable_variables)
    backups = BackupManager(tmp_path, model, optimizer, chief=True)
    stop_requests = StopRequests(tf.distribute.get_strategy())
    saving = threading.Event()

    def keep_signalling():
        while saving.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.002)

    with stop_requests.catching_signals():
        saving.set()
        signaller = threading.Thread(target=keep_signalling)
        signaller.start()
        try:
            for step in range(1, 6):
                model.layers[-1].kernel.assign(np.full((16, 2), step, np.float32))
                backups.save(LoopState(epoch=0, step_in_epoch=step))
        finally:
            saving.clear()
            signaller.join()
    assert stop_requests.signal_number == signal.SIGTERM
    model.layers[-1].kernel.assign(np.zeros((16, 2), np.float32))
    state = BackupManager(tmp_path, model, optimizer, chief=True).restore()
    assert (state.epoch, state.step_in_epoch) == (0, 5)
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), np.full((16, 2), 5, np.float32))
