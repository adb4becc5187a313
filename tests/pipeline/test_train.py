"""The training loop's parts, each on its own: optimizer (EMA, weight decay), the compiled
steps, exact evaluation, EMA swapping, stop requests, the epoch meter, backup cadence and the
BatchNorm settings of the training model."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import architectures
from pipeline.config import ModelConfig, TrainConfig
from pipeline.data import Split, array_split, evaluation_images
from pipeline.train import (
    EpochMeter,
    LoopState,
    StopRequests,
    Trainer,
    TrainingStopped,
    build_training_model,
    compiled_eval_step,
    ema_weights,
    evaluate_exactly,
    make_optimizer,
    stop_if_diverged,
)


def test_ema_copies_the_first_step_then_warms_its_decay_up_as_model_garden():
    decay = 0.999
    layer = keras.layers.Dense(3, kernel_initializer="ones")
    layer.build((None, 4))
    optimizer = make_optimizer(TrainConfig(ema_decay=decay, learning_rate=0.1, warmup_epochs=0.0, epochs=1), steps_per_epoch=10)
    optimizer.build(layer.trainable_variables)
    rng = np.random.default_rng(0)
    expected = None
    for step in range(4):
        gradients = [rng.normal(size=variable.shape).astype("float32") for variable in layer.trainable_variables]
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables))
        kernel = layer.kernel.numpy()
        momentum = 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))  # 0, 2/11, 3/12, 4/13
        expected = kernel if expected is None else momentum * expected + (1 - momentum) * kernel
    averaged_kernel = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(averaged_kernel, expected, rtol=1e-6)
    assert not np.allclose(averaged_kernel, kernel)  # the average trails the weights


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.parametrize(
    "arch, input_shape",
    [
        ("resnet20", (32, 32, 3)),  # conv kernels, BatchNorm gamma/beta
        ("convnext_tiny", (32, 32, 3)),  # depthwise kernels, biases, LayerNorm, LayerScale
        ("vit_b_16", (32, 32, 3)),  # class token, position embedding, attention kernels
        ("resmlp_s12", (32, 32, 3)),  # Affine alpha/beta
    ],
)
def test_weight_decay_shrinks_kernels_and_leaves_every_other_variable_untouched(arch, input_shape, optimizer_name):
    model = architectures.build(arch, num_classes=10, input_shape=input_shape)
    variables = model.trainable_variables
    before = [variable.numpy().copy() for variable in variables]
    optimizer = make_optimizer(
        TrainConfig(optimizer=optimizer_name, weight_decay=0.1, learning_rate=0.1, warmup_epochs=0.0, epochs=1),
        steps_per_epoch=10,
    )
    optimizer.build(variables)
    optimizer.apply_gradients([(np.zeros(variable.shape, "float32"), variable) for variable in variables])
    decayed, untouched = [], []
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if variable.name.endswith("kernel"):
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.1), rtol=1e-5, atol=1e-12, err_msg=variable.path)
            decayed.append(variable.path)
        else:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
            untouched.append(variable.path)
    assert decayed and untouched
    assert any(name.endswith(("gamma", "beta", "bias", "class_token", "pos_embedding", "alpha")) for name in untouched)


def _constant_classifier(num_classes: int, favourite: int) -> keras.Model:
    """A model that gives `favourite` probability ~1 whatever the image."""
    inputs = keras.Input((4, 4, 1))
    flat = keras.layers.Flatten()(inputs)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(np.eye(num_classes)[favourite] * 20.0))(flat)  # fmt: skip
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_exact_evaluation_counts_every_example_once_with_a_padded_last_batch():
    labels = np.array([0] * 37 + [1] * 63)  # 100 examples, batch 32: the last batch is padded
    images = evaluation_images(array_split(np.zeros((100, 4, 4, 1), np.uint8), labels, None), in_memory=False)
    strategy = tf.distribute.get_strategy()
    model = _constant_classifier(2, favourite=0)
    loss, accuracy = evaluate_exactly(compiled_eval_step(model, strategy), strategy, images, global_batch_size=32)
    assert accuracy == pytest.approx(0.37, abs=1e-9)
    assert loss == pytest.approx(0.63 * 20.0, rel=1e-3)  # the wrong class's cross-entropy is ~20 nats


class _TwoWorkersOfOneReplica:
    """A MultiWorkerMirroredStrategy of two one-replica workers as `evaluate_exactly` sees it, in
    one process: each step takes one batch from each worker's input pipeline."""

    def __init__(self, eval_step):
        self.eval_step, self.batches = eval_step, []

    def distribute_datasets_from_function(self, dataset_fn):
        contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
                    for worker in range(2)]  # fmt: skip
        return zip(*(dataset_fn(context) for context in contexts), strict=True)  # unequal batch counts fail

    def step(self, per_worker_batches):
        self.batches += per_worker_batches
        return sum(self.eval_step(batch) for batch in per_worker_batches)


def test_exact_evaluation_over_two_input_pipelines_decodes_each_example_once_and_matches_one_pipeline():
    decoded_ids = []

    def read(example_id):
        decoded_ids.append(int(example_id))  # a py_function's body runs in this process
        return np.full((4, 4, 1), int(example_id) * 19, np.uint8)

    def decode(example_id, label):
        return tf.ensure_shape(tf.py_function(read, [example_id], tf.uint8), (4, 4, 1)), label

    example_ids = np.arange(13, dtype=np.int64)  # 13 examples, global batch 4: both shares padded
    split = Split(tf.data.Dataset.from_tensor_slices((example_ids, example_ids % 3)), 13, decode=decode)
    images = evaluation_images(split, in_memory=False)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs / 255.0)))
    single = tf.distribute.get_strategy()
    eval_step = compiled_eval_step(model, single)

    two_workers = _TwoWorkersOfOneReplica(eval_step)
    two_worker_result = evaluate_exactly(two_workers.step, two_workers, images, global_batch_size=4)
    assert sorted(decoded_ids) == list(range(13))  # each record decoded once, by one worker
    weights = np.concatenate([weights.numpy() for _, _, weights in two_workers.batches])
    assert len(two_workers.batches) == 8 and {len(labels) for _, labels, _ in two_workers.batches} == {2}  # 4 steps x 2 workers
    assert weights.sum() == 13 and set(weights) == {0.0, 1.0}  # shares of 7 and 6, each padded to 8
    decoded_ids.clear()
    one_pipeline_result = evaluate_exactly(eval_step, single, images, global_batch_size=4)
    assert sorted(decoded_ids) == list(range(13))
    assert two_worker_result == pytest.approx(one_pipeline_result, rel=1e-6)


def test_ema_weights_are_in_the_model_inside_the_context_and_the_live_weights_after():
    layer_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = make_optimizer(TrainConfig(ema_decay=0.9, learning_rate=0.5, warmup_epochs=0.0, epochs=1), steps_per_epoch=10)
    optimizer.build(layer_model.trainable_variables)
    for _ in range(3):
        optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in layer_model.trainable_variables])
    live = [v.numpy().copy() for v in layer_model.trainable_variables]
    averages = [a.numpy().copy() for a in optimizer._model_variables_moving_average]
    with ema_weights(optimizer):
        for variable, average in zip(layer_model.trainable_variables, averages):
            np.testing.assert_array_equal(variable.numpy(), average)
    for variable, value in zip(layer_model.trainable_variables, live):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert not np.allclose(live[0], averages[0])


def test_a_sigterm_becomes_an_agreed_stop_with_exit_code_143_and_the_old_handler_comes_back():
    stop_requests = StopRequests(tf.distribute.get_strategy())
    previous = signal.getsignal(signal.SIGTERM)
    with stop_requests.catching_signals():
        assert not stop_requests.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_requests.agreed()
    assert signal.getsignal(signal.SIGTERM) is previous
    stopped = stop_requests.stopped(epoch=2, step_in_epoch=7)
    assert stopped.exit_code == 143
    assert "SIGTERM" in str(stopped) and "epoch 3 step 7" in str(stopped)


def test_a_non_finite_loss_stops_with_exit_code_1_and_says_what_to_change():
    stop_if_diverged(1.5, 0, 1)  # finite: nothing happens
    with pytest.raises(TrainingStopped, match="train.learning_rate") as stopped:
        stop_if_diverged(float("nan"), 0, 4)
    assert stopped.value.exit_code == 1


def test_the_epoch_meter_leaves_the_tracing_call_out_of_throughput_but_not_out_of_the_loss():
    optimizer = make_optimizer(TrainConfig(learning_rate=0.1, warmup_epochs=0.0, epochs=1), steps_per_epoch=4)
    meter = EpochMeter(0, 1, 4, optimizer, show_progress=False)

    def steps(loss_sum, images, seconds):
        import time

        time.sleep(seconds)
        return tf.constant([loss_sum, images / 2, images])

    assert meter.measure(steps, 100.0, 64.0, 0.3, traced=True) == 100.0  # slow: tracing
    meter.measure(steps, 20.0, 64.0, 0.01, traced=False)
    meter.end_training()
    record = meter.record(val_loss=0.5, val_accuracy=0.75)
    assert record.loss == pytest.approx(120.0 / 128)
    assert record.accuracy == pytest.approx(0.5)
    assert record.images_per_second > 64.0 / 0.1  # only the fast call counts (64 / 0.31 s otherwise)
    assert (record.epoch, record.val_accuracy, record.learning_rate) == (1, 0.75, pytest.approx(0.1))


def test_backups_come_every_n_global_steps_but_not_at_the_end_of_an_epoch():
    model = _constant_classifier(2, favourite=0)
    config = TrainConfig(backup_every_steps=5, steps_per_execution=4, epochs=2)
    trainer = Trainer(
        model=model, optimizer=make_optimizer(config, 12), strategy=tf.distribute.get_strategy(), config=config,
        num_classes=2, steps_per_epoch=12, global_batch_size=4, show_progress=False,
    )  # fmt: skip
    # Calls end at steps 4, 8, 12 of each epoch (global 4, 8, 12, 16, 20, 24): a multiple of 5
    # is crossed by the calls ending at 8 (5), 12 (10, but the epoch's end backs up anyway),
    # 16 (15) and 20 (20).
    due = [(epoch, step) for epoch in range(2) for step in (4, 8, 12) if trainer._backup_due(epoch, step, 4)]
    assert due == [(0, 8), (1, 4), (1, 8)]


def test_the_training_model_sets_batch_norm_momentum_and_synchronisation_on_every_bn_layer():
    def batch_norms(**settings):
        model = build_training_model(
            ModelConfig(arch="resnet20"), image_shape=(28, 28, 1), num_classes=10, channel_mean=[0.0], channel_std=[1.0],
            **settings,
        )  # fmt: skip
        layers = [layer for layer in model.get_layer("resnet20").layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(layers) == 19  # the stem and two per basic block
        return layers

    assert {(layer.momentum, layer.synchronized) for layer in batch_norms(batch_norm_momentum=0.9, synchronized_batch_norm=True)} == {(0.9, True)}
    assert {(layer.momentum, layer.synchronized) for layer in batch_norms()} == {(0.99, False)}  # the builder's own


def test_a_fit_from_a_fresh_state_runs_every_epoch_and_reports_each():
    images = np.zeros((16, 4, 4, 1), np.float32)
    one_hot = np.eye(2, dtype=np.float32)[[0] * 16]
    config = TrainConfig(epochs=2, steps_per_execution=2, learning_rate=0.01, warmup_epochs=0.0)
    model = _constant_classifier(2, favourite=0)
    trainer = Trainer(
        model=model, optimizer=make_optimizer(config, 4), strategy=tf.distribute.get_strategy(), config=config,
        num_classes=2, steps_per_epoch=4, global_batch_size=4, show_progress=False,
    )  # fmt: skip
    backups, epoch_ends = [], []
    state = trainer.fit(
        state=LoopState(),
        train_dataset_fn=lambda epoch, skip, context: tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4).skip(skip),
        validation=evaluation_images(array_split(np.zeros((6, 4, 4, 1), np.uint8), np.zeros(6, np.int64), None), in_memory=False),
        on_backup=lambda current: backups.append((current.epoch, current.step_in_epoch)),
        on_epoch_end=lambda record, is_best: epoch_ends.append((record.epoch, is_best)),
    )  # fmt: skip
    assert (state.epoch, state.step_in_epoch, len(state.history)) == (2, 0, 2)
    assert epoch_ends == [(1, True), (2, False)]  # the same accuracy is not a new best
    assert backups == [(1, 0), (2, 0)]
    assert state.history[-1].val_accuracy == pytest.approx(1.0)


def test_uint8_batches_with_integer_labels_train_exactly_as_their_float_one_hot_form():
    """The pipeline hands unaugmented batches over as decoded; the train step converts them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 4, 4, 1)).astype(np.uint8)
    labels = rng.integers(0, 3, 16)
    config = TrainConfig(epochs=1, steps_per_execution=2, learning_rate=0.01, warmup_epochs=0.0, label_smoothing=0.1)

    def trained_weights(batches: tf.data.Dataset) -> list[np.ndarray]:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4, 4, 1))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
        trainer = Trainer(
            model=model, optimizer=make_optimizer(config, 4), strategy=tf.distribute.get_strategy(), config=config,
            num_classes=3, steps_per_epoch=4, global_batch_size=4, show_progress=False,
        )  # fmt: skip
        trainer.fit(
            state=LoopState(), train_dataset_fn=lambda epoch, skip, context: batches.skip(skip),
            validation=evaluation_images(array_split(images[:4], labels[:4], None), in_memory=False),
            on_backup=lambda current: None, on_epoch_end=lambda record, is_best: None,
        )  # fmt: skip
        return model.get_weights()

    as_decoded = trained_weights(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
    converted = trained_weights(tf.data.Dataset.from_tensor_slices((images.astype(np.float32), np.eye(3, dtype=np.float32)[labels])).batch(4))
    assert not np.array_equal(as_decoded[0], np.zeros_like(as_decoded[0]))
    assert all(np.array_equal(a, b) for a, b in zip(as_decoded, converted))


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_gradient_clipping_scales_a_large_update_to_learning_rate_times_the_bound(precision):
    """SGD without momentum moves by learning rate x gradient; clipped, the move's norm is lr x bound.
    Under mixed_float16 the gradient arrives loss-scaled, is unscaled, then clipped."""
    config = TrainConfig(
        optimizer="sgd", momentum=0.0, learning_rate=0.1, warmup_epochs=0.0, weight_decay=0.0,
        gradient_clip_norm=1.0, precision=precision, epochs=1,
    )
    optimizer = make_optimizer(config, steps_per_epoch=10)
    variables = [keras.Variable(np.zeros((3, 4), "float32")), keras.Variable(np.zeros(5, "float32"))]
    loss_scale = float(optimizer.scale_loss(1.0))  # 1 in float32
    gradients = [np.full((3, 4), 1e3 * loss_scale, "float32"), np.full(5, -1e3 * loss_scale, "float32")]
    optimizer.apply_gradients(zip(gradients, variables))
    update_norm = np.sqrt(sum(np.sum(np.square(variable.numpy())) for variable in variables))
    assert update_norm == pytest.approx(0.1 * 1.0, rel=1e-5)  # unclipped it would be 0.1 x 4,123
