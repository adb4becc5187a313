"""Optimizer, schedule, loss and the training loop.

One custom loop serves every strategy: the default strategy, MirroredStrategy and
MultiWorkerMirroredStrategy. Keras 3.15's `model.fit` fails under MultiWorkerMirroredStrategy
(`Attempt to convert a value (PerReplica...)` from `Trainer._maybe_symbolic_build`), while a
`strategy.run` step over a `distribute_datasets_from_function` input works on all of them;
one loop also means single-machine and cluster runs share every feature (EMA, backups,
best checkpoint, exact validation).

Evidence for the defaults: SGD with Nesterov momentum 0.9, linear warmup then cosine decay
and weight decay on kernels only is the CIFAR/ImageNet ResNet recipe (He et al. 2016; timm);
`steps_per_execution` > 1 runs several steps per `tf.function` call, which matters on CPUs
where a small model's step is a few milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

import architectures
from architectures import pretrained
from pipeline.budget import Measurements, Plan, job_seconds, plan_training, replan_remaining
from pipeline.config import ModelConfig, TrainConfig, use_small_input
from pipeline.data.pipelines import model_inputs

if TYPE_CHECKING:
    from pipeline.data import EvaluationImages
    from pipeline.finetune import FineTuningPhases

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training ended early on purpose or by divergence; `exit_code` for the CLI: 128 + the signal
    after a stop request (143 for SIGTERM, 130 for Ctrl-C, a backup saved), 1 for divergence."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- model


def build_training_model(
    model_config: ModelConfig,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    channel_mean: list[float],
    channel_std: list[float],
    batch_norm_momentum: float | None = None,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Raw pixels in, class probabilities out: (batch, H, W, C) float 0..255 -> (batch, K) float32.

    The normalisation is a layer of the model, so every export (SavedModel, TFLite) carries
    its own preprocessing and takes plain pixels: the dataset's statistics, or with
    keras.applications weights the preprocessing they were trained with. The final float32
    cast keeps softmax outputs in float32 under mixed precision. `batch_norm_momentum` (None: the builder's) and
    `synchronized_batch_norm` (statistics over all replicas) apply to every BatchNorm layer.
    """
    backbone = architectures.build(
        model_config.arch,
        num_classes=num_classes,
        input_shape=image_shape,
        small_input=use_small_input(model_config, image_shape[0]),
        weights=model_config.weights,
        **model_config.options,
    )
    pixels = keras.Input(shape=image_shape, name="pixels")
    if pretrained.preprocessing_for(model_config.arch, model_config.weights):
        normalized = pixels  # the backbone starts with the weights' own preprocessing
    else:
        mean = np.asarray(channel_mean, dtype="float32")
        variance = np.square(np.maximum(np.asarray(channel_std, dtype="float32"), 1e-3))
        normalized = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")(pixels)
    outputs = backbone(normalized)
    if isinstance(outputs, (list, tuple)):  # GoogLeNet's auxiliary heads are for the paper's training only
        outputs = outputs[0]
    probabilities = keras.layers.Activation("linear", dtype="float32", name="probabilities")(outputs)
    model = keras.Model(pixels, probabilities, name=f"{model_config.arch}_classifier")
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras's 0.99 leaves the moving statistics far behind in short CPU runs (findings).
            layer.momentum = layer.momentum if batch_norm_momentum is None else batch_norm_momentum
            layer.synchronized = synchronized_batch_norm
    return model


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


# ----------------------------------------------------------------------------- precision


def resolve_precision(precision: str) -> str:
    """`auto`: bfloat16 where the hardware computes it natively, else float32.

    Measured on this project's 2-core AMD EPYC (avx512_bf16): resnet20 at 28x28 trains at
    1,246 images/s with mixed_bfloat16 against 715 with float32. Where bfloat16 is emulated
    (CPUs without avx512_bf16/AMX) it is slower than float32, so it is not forced there. GPUs
    get mixed_bfloat16 from compute capability 8.0 (Ampere), mixed_float16 before.
    """
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_native_bfloat16() else "float32"


def _cpu_has_native_bfloat16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD (Nesterov) or AdamW on a warmup + decay schedule; EMA and clipping as configured."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup_steps = min(total_steps - 1, round(config.warmup_epochs * steps_per_epoch))
    schedule = WarmupThenDecay(config.learning_rate, total_steps, warmup_steps, config.lr_decay)
    common = dict(
        learning_rate=schedule,
        weight_decay=config.weight_decay or None,
        global_clipnorm=config.gradient_clip_norm,
        use_ema=config.ema_decay is not None,
        ema_momentum=config.ema_decay or 0.99,
    )
    if config.optimizer == "sgd":
        optimizer = _SGDWithEMAWarmup(momentum=config.momentum, nesterov=True, **common)
    else:
        optimizer = _AdamWWithEMAWarmup(**common)
    if resolve_precision(config.precision) == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class _EMAWarmup:
    """Keras's optimizer EMA with TF Model Garden's dynamic decay, `min(decay, (1 + t) / (10 + t))` at step t.

    Keras uses the full decay from step 1, so with 0.998 the average still holds a third of the
    first epoch's weights after 421 steps and the early epochs' EMA validation is near chance
    (12% after epoch 1 of the Fashion-MNIST recipe). The warmup averages over about the last
    10% of the steps instead, until (1 + t) / (10 + t) reaches the configured decay (t = 4,490
    for 0.998). Step 0 copies the weights, as Keras does.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = keras.ops.cast(self.iterations, "float32")
        warmed_up = keras.ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        decay = keras.ops.where(keras.ops.equal(self.iterations, 0), 0.0, warmed_up)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                momentum = keras.ops.cast(decay, variable.dtype)
                # TF's ExponentialMovingAverage form: an unchanged (frozen) variable's average stays bit-exact.
                average.assign(average - (1.0 - momentum) * (average - variable))


class _DecayKernelsOnly:
    """Decoupled weight decay on kernels only, for every family: not on biases, BatchNorm or
    LayerNorm scales and offsets, LayerScale/Affine factors, ViT's class token or position
    embedding (timm's rule: no decay on 1-D parameters, tokens and embeddings).

    Keras decays every variable unless told otherwise (`_use_weight_decay` is True for all).
    Conv, depthwise, separable and dense kernels are all named `...kernel`; under TensorFlow
    the name may carry a `:0` suffix.
    """

    def _use_weight_decay(self, variable):
        return variable.name.split(":")[0].endswith("kernel")


class _SGDWithEMAWarmup(_EMAWarmup, _DecayKernelsOnly, keras.optimizers.SGD):
    pass


class _AdamWWithEMAWarmup(_EMAWarmup, _DecayKernelsOnly, keras.optimizers.AdamW):
    pass


class WarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from zero to `peak`, then cosine or linear decay to zero at `total_steps`.

    With cosine this is Keras's `CosineDecay(warmup_target=peak)`, step for step. The lengths
    are variables, so a time budget can set them once its plan is made, after the step
    function was traced with them.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, decay: str = "cosine"):
        self.peak, self.decay = float(peak), decay
        self.total_steps = tf.Variable(float(total_steps), trainable=False, name="schedule_total_steps")
        self.warmup_steps = tf.Variable(float(warmup_steps), trainable=False, name="schedule_warmup_steps")

    def set_lengths(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps.assign(float(total_steps))
        self.warmup_steps.assign(float(warmup_steps))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup, total = tf.convert_to_tensor(self.warmup_steps), tf.convert_to_tensor(self.total_steps)
        warming = self.peak * step / tf.maximum(warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0), 0.0, 1.0)
        if self.decay == "linear":
            decayed = self.peak * (1.0 - progress)
        else:
            decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < warmup, warming, decayed)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": int(self.total_steps.numpy()),
            "warmup_steps": int(self.warmup_steps.numpy()),
            "decay": self.decay,
        }


def learning_rate_schedule(optimizer: keras.optimizers.Optimizer) -> WarmupThenDecay:
    return getattr(optimizer, "inner_optimizer", optimizer)._learning_rate


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(inner.learning_rate)


# ----------------------------------------------------------------------------- loop


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    images_per_second: float


@dataclass
class LoopState:
    """Where training stands; restored from a backup on resume."""

    epoch: int = 0  # 0-based epoch in progress
    step_in_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    plan: Plan | None = None  # a time budget's plan, once made


@dataclass(frozen=True)
class TrainingBudget:
    """What a time-budgeted `Trainer` needs beyond its config; see `pipeline/budget.py`."""

    seconds: float
    validation_probe: EvaluationImages  # a few validation images, to time the evaluation step
    validation_probe_images: int
    validation_images: int
    test_images: int
    exporting: bool  # the job exports after training (the budget covers it)
    chief: bool  # this worker's measurements make the plan


class Trainer:
    """Runs epochs of `strategy.run` steps; validation is exact across replicas.

    `train_dataset_fn(epoch, skip_batches, input_context)` returns one epoch of per-replica
    batches as `pipeline.data.train_pipeline` gives them (uint8 images and integer labels, or
    augmented: float32 0..255 and one-hot); `validation` is the validation split's
    `EvaluationImages`. `on_backup(state)` is called where a backup is due;
    `on_epoch_end(record, is_best)` after each validation. `phases` (fine-tuning) sets which
    layers train in each epoch.

    With a `budget`, the first epoch measures the step and evaluation times, and the plan
    they give sets `epochs`, `steps_per_epoch` and the schedule's lengths (`pipeline/budget.py`).
    """

    def __init__(
        self,
        *,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        config: TrainConfig,
        num_classes: int,
        steps_per_epoch: int,
        global_batch_size: int,
        show_progress: bool,
        budget: TrainingBudget | None = None,
        phases: FineTuningPhases | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.config = config
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch  # of the epoch running now: a budget's plan sets it per epoch
        self.split_steps_per_epoch = steps_per_epoch  # a whole pass of the split (or train.steps_per_epoch)
        self.plan: Plan | None = None
        self.global_batch_size = global_batch_size
        self.show_progress = show_progress
        self.budget = budget
        self.epochs = config.epochs
        self.stop_requests = StopRequests(strategy)
        self._loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing, reduction=None)
        self._train_steps = self._compiled_train_steps()
        self.phases = phases
        self._eval_step = compiled_eval_step(model, strategy)

    def evaluate(self, images: EvaluationImages) -> tuple[float, float] | None:
        """Exact (loss, accuracy) over `images`, each worker decoding only its share, on all
        replicas; None when the workers agreed to stop part-way."""
        return evaluate_exactly(
            self._eval_step, self.strategy, images, global_batch_size=self.global_batch_size,
            stop_agreed=self.stop_requests.agreed,
        )

    def ema_weights(self):
        """Context manager: the EMA of the weights in the model while inside (no-op without EMA)."""
        return ema_weights(self.optimizer) if self.config.ema_decay else contextlib.nullcontext()

    def fit(
        self,
        *,
        state: LoopState,
        train_dataset_fn: Callable[[int, int, tf.distribute.InputContext], tf.data.Dataset],
        validation: EvaluationImages,
        on_backup: Callable[[LoopState], None],
        on_epoch_end: Callable[[EpochRecord, bool], None],
    ) -> LoopState:
        # A resumed run keeps the plan it was saved with and re-plans no more: its job clock started anew.
        replanning = state.plan is None
        if state.plan is not None:
            self._follow(state.plan, state.epoch)
        planned_epochs: list[tuple[float, int]] = []  # (wall seconds, steps) of whole epochs under the plan
        with self.stop_requests.catching_signals():
            while state.epoch < self.epochs:
                planned_before_epoch, epoch_started = state.plan is not None, time.perf_counter()
                if state.plan is not None:
                    self.steps_per_epoch = state.plan.steps_in_epoch(state.epoch)
                record = self._run_epoch(state, train_dataset_fn, validation, on_backup)
                best = max((r.val_accuracy for r in state.history), default=-1.0)
                state.history.append(record)
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                on_epoch_end(record, record.val_accuracy > best)
                on_backup(state)
                if self.budget and replanning and planned_before_epoch:
                    planned_epochs.append((time.perf_counter() - epoch_started, self.steps_per_epoch))
                    if len(planned_epochs) >= self.PLAN_CHECK_EPOCHS:  # the next backup holds the new plan
                        state.plan = self._replanned(state, planned_epochs[-self.PRICE_EPOCHS :], len(planned_epochs))
        return state

    def _run_epoch(self, state, train_dataset_fn, validation, on_backup) -> EpochRecord:
        epoch, skip = state.epoch, state.step_in_epoch
        if self.phases is not None and self.phases.enter(epoch):  # other variables train now: trace the step anew
            self._train_steps = self._compiled_train_steps()
        if skip:
            logger.info("resuming epoch %d at step %d of %d", epoch + 1, skip, self.steps_per_epoch)
        meter = EpochMeter(epoch, self.epochs, self.steps_per_epoch, self.optimizer, self.show_progress)
        distributed = self.strategy.distribute_datasets_from_function(
            lambda input_context: train_dataset_fn(epoch, skip, input_context)
        )
        iterator = iter(distributed)
        while state.step_in_epoch < self.steps_per_epoch:
            steps = min(self.config.steps_per_execution, self.steps_per_epoch - state.step_in_epoch)
            loss_sum = meter.measure(self._train_steps, iterator, tf.constant(steps), traced=state.step_in_epoch == skip)
            state.step_in_epoch += steps
            stop_if_diverged(loss_sum, epoch, state.step_in_epoch)
            meter.show(state.step_in_epoch)
            if self.budget and state.plan is None and meter.measured_enough(state.step_in_epoch >= self.steps_per_epoch):
                state.plan = self._plan(state, meter)
                self._follow(state.plan, state.epoch)
            if self.stop_requests.agreed():
                on_backup(state)
                raise self.stop_requests.stopped(epoch, state.step_in_epoch)
            if self._backup_due(epoch, state.step_in_epoch, steps):
                on_backup(state)
        del iterator, distributed  # released here, so a slow teardown shows in this epoch's seconds
        meter.end_training()
        with self.ema_weights():
            validation_result = self.evaluate(validation)
        if validation_result is None:  # stopped during validation: the epoch's steps are kept, validation reruns
            on_backup(state)
            raise self.stop_requests.stopped(epoch, state.step_in_epoch)
        return meter.record(*validation_result)

    def _plan(self, state: LoopState, meter: EpochMeter) -> Plan:
        """The budget's plan from this worker's measurements, or the chief's under multi-worker."""
        seconds_per_step = meter.seconds_per_step(self.global_batch_size)
        probe = self.budget.validation_probe
        self.evaluate(probe)  # traces the evaluation step: not timed
        probe_started = time.perf_counter()
        self.evaluate(probe)
        per_eval_image = (time.perf_counter() - probe_started) / self.budget.validation_probe_images
        measured = self._chiefs(np.array([job_seconds(), seconds_per_step, per_eval_image]))
        plan = plan_training(
            budget_seconds=self.budget.seconds,
            measured=Measurements(*(float(value) for value in measured)),
            steps_done=state.step_in_epoch,
            steps_per_split_epoch=self.split_steps_per_epoch,
            validation_images=self.budget.validation_images,
            test_images=self.budget.test_images,
            exporting=self.budget.exporting,
            warmup_epochs=self.config.warmup_epochs,
        )
        logger.info("%s", plan.describe())
        return plan

    PLAN_CHECK_EPOCHS = 2  # whole epochs under a budget's plan before the first re-plan
    PRICE_EPOCHS = 3  # the last whole epochs whose mean step time prices the remaining steps

    def _replanned(self, state: LoopState, recent: list[tuple[float, int]], epochs_measured: int) -> Plan:
        """The plan with its remaining epochs re-planned (`replan_remaining`) on the step time of the
        `recent` whole epochs (wall seconds, steps), less their planned validations; logged at the
        first re-plan and where the number of epochs changes."""
        plan = state.plan
        training_seconds = sum(seconds - plan.seconds_per_validation for seconds, _ in recent)
        seconds_per_step = max(training_seconds, 1e-9) / sum(steps for _, steps in recent)
        measured = self._chiefs(np.array([seconds_per_step, job_seconds()]))
        replanned = replan_remaining(
            plan, epochs_done=state.epoch, seconds_per_step=float(measured[0]), now=float(measured[1]),
            split_steps=self.split_steps_per_epoch,
        )  # fmt: skip
        first = epochs_measured == self.PLAN_CHECK_EPOCHS
        if replanned == plan:
            if first:
                logger.info("time budget: %.1f ms/step over whole epochs; keeping the plan", 1000 * measured[0])
            return plan
        log = logging.INFO if first or replanned.epochs != plan.epochs else logging.DEBUG
        logger.log(log, "%s", replanned.describe_replan(plan, state.epoch, float(measured[0])))
        self._follow(replanned, state.epoch)
        return replanned

    def _chiefs(self, measured: np.ndarray) -> np.ndarray:
        """The chief's `measured` on every worker (a collective call under multi-worker), so all plan alike."""
        if not self.strategy.extended._in_multi_worker_mode():
            return measured
        chief_only = measured if self.budget.chief else np.zeros_like(measured)
        return _sum_over_workers(self.strategy, tf.constant(chief_only)).numpy()

    def _follow(self, plan: Plan, epoch: int) -> None:
        """The plan's epochs, the length of `epoch` (0-based, the one running or next) and the
        schedule's lengths."""
        self.plan = plan
        self.epochs, self.steps_per_epoch = plan.epochs, plan.steps_in_epoch(epoch)
        learning_rate_schedule(self.optimizer).set_lengths(plan.total_steps, plan.warmup_steps)

    def _compiled_train_steps(self) -> Callable[[object, tf.Tensor], tf.Tensor]:
        return compiled_train_steps(
            self.model, self.optimizer, self.strategy, self._loss, self.global_batch_size, self.config.jit_compile,
            self.num_classes,
        )  # fmt: skip

    def _backup_due(self, epoch: int, step_in_epoch: int, steps_just_run: int) -> bool:
        """Every `backup_every_steps` global steps, except at the epoch's end (which backs up anyway)."""
        every = self.config.backup_every_steps
        global_step = (self.plan.steps_before(epoch) if self.plan else epoch * self.steps_per_epoch) + step_in_epoch
        return bool(every) and global_step % every < steps_just_run and step_in_epoch < self.steps_per_epoch


# ----------------------------------------------------------------------------- loop parts


def compiled_train_steps(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    loss_fn: keras.losses.Loss,
    global_batch_size: int,
    jit_compile: bool,
    num_classes: int,
) -> Callable[[object, tf.Tensor], tf.Tensor]:
    """`train_steps(iterator, steps)`: `steps` optimizer steps in one call -> [loss sum, correct, images].

    The iterator's batches are uint8 images with integer labels, or already float32 with one-hot
    labels (augmented); `model_inputs` converts the first kind here, on the replica's device.
    """

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = loss_fn(labels, probabilities)
            loss = tf.reduce_sum(per_example) / global_batch_size
            if model.losses:
                loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        correct = tf.cast(tf.argmax(probabilities, -1) == tf.argmax(labels, -1), tf.float32)
        batch = tf.cast(tf.shape(labels)[0], tf.float32)
        return gradients, tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float32)), tf.reduce_sum(correct), batch])

    # XLA compiles the forward and backward pass only: the iterator and the optimizer's
    # cross-replica all-reduce (a merge_call) cannot live inside an XLA cluster.
    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels):
        gradients, statistics = forward_backward(*model_inputs(images, labels, num_classes))
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return statistics

    def train_steps(iterator, steps):
        totals = tf.zeros([3])
        for _ in tf.range(steps):
            per_replica = strategy.run(replica_step, args=next(iterator))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    return tf.function(train_steps)


def compiled_eval_step(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable:
    """`eval_step((uint8 images, integer labels, weights))` -> [weighted loss sum, weighted correct,
    weight sum], all replicas; the batch is converted here, as `compiled_train_steps` does."""
    num_classes = model.output_shape[-1]

    def replica_step(images, labels, weights):
        images, labels = model_inputs(images, labels, num_classes)
        probabilities = model(images, training=False)
        per_example = keras.losses.categorical_crossentropy(labels, probabilities)
        correct = tf.cast(tf.argmax(probabilities, -1) == tf.argmax(labels, -1), tf.float32)
        return tf.stack([tf.reduce_sum(per_example * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)])

    def eval_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return tf.function(eval_step)


def evaluate_exactly(
    eval_step: Callable,
    strategy: tf.distribute.Strategy,
    images: EvaluationImages,
    *,
    global_batch_size: int,
    stop_agreed: Callable[[], bool] = lambda: False,
) -> tuple[float, float] | None:
    """Exact (loss, accuracy) of `images` with `compiled_eval_step`, or None as soon as
    `stop_agreed()` (polled after each batch, on every worker alike) says so.

    Each input pipeline decodes only its share of the records and pads it with zero-weight
    examples to as many batches as the largest share needs, so every replica gets the same
    number of equal batches and no example is dropped or counted twice.
    """

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        pipelines = input_context.num_input_pipelines
        per_pipeline_step = per_replica * (input_context.num_replicas_in_sync // pipelines)
        largest_share = math.ceil(images.size / pipelines)  # pipeline 0's: shares differ by at most one example
        padded_count = math.ceil(largest_share / per_pipeline_step) * per_pipeline_step
        count = images.share_size(input_context)
        weighted = images.share(input_context).map(lambda image, label: (image, label, tf.constant(1.0)))
        if padded_count > count:
            image_spec, label_spec, _ = weighted.element_spec
            padding = tf.data.Dataset.from_tensors(
                (tf.zeros(image_spec.shape, image_spec.dtype), tf.zeros([], label_spec.dtype), tf.constant(0.0))
            ).repeat(padded_count - count)
            weighted = weighted.concatenate(padding)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return weighted.batch(per_replica).with_options(options).prefetch(tf.data.AUTOTUNE)

    totals = np.zeros(3)
    for batch in strategy.distribute_datasets_from_function(dataset_fn):
        totals += eval_step(batch).numpy()
        if stop_agreed():
            return None
    loss_sum, correct, examples = totals
    return loss_sum / max(examples, 1.0), correct / max(examples, 1.0)


@contextlib.contextmanager
def ema_weights(optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """The optimizer's EMA in the model's variables while inside; the live weights after."""
    variables = averaged_variables(optimizer)
    live_weights = [variable.numpy() for variable in variables]
    getattr(optimizer, "inner_optimizer", optimizer).finalize_variable_values(variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, live_weights):
            variable.assign(value)


def averaged_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """The variables the optimizer was built with, in its order: the EMA's, frozen layers' included.

    Not `model.trainable_variables`: Keras pairs each average with a variable by position, and a
    frozen backbone (fine-tuning) leaves that list.
    """
    return list(getattr(optimizer, "inner_optimizer", optimizer)._trainable_variables)


class StopRequests:
    """SIGTERM (how clusters preempt) and Ctrl-C ask training to stop at the next step call or
    validation batch.

    Every worker agrees on the request before acting on it, so all of them back up at the same
    step and exit together, whichever one was signalled. While signals are caught, a further
    signal only sets the flag again: it cannot interrupt the backup being written.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.signal_number: int | None = None

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        previous_handlers = {}
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            try:
                previous_handlers[signal_number] = signal.signal(signal_number, self._request)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for signal_number, handler in previous_handlers.items():
                signal.signal(signal_number, handler)

    def _request(self, signal_number, frame) -> None:
        self.signal_number = signal_number

    def agreed(self) -> bool:
        """True when any worker was asked to stop (a collective call: every worker must make it)."""
        local = 1.0 if self.signal_number else 0.0
        if self.strategy.extended._in_multi_worker_mode():
            return bool(_sum_over_workers(self.strategy, tf.constant(local)).numpy())
        return bool(local)

    def stopped(self, epoch: int, step_in_epoch: int) -> TrainingStopped:
        """The exception to raise once the backup is saved; waits first until every worker has saved,
        so a scheduler that ends the job at the first exit (srun --kill-on-bad-exit) cuts no write short."""
        if self.strategy.extended._in_multi_worker_mode():
            _sum_over_workers(self.strategy, tf.constant(0.0))
        if self.signal_number:
            reason = f"received {signal.Signals(self.signal_number).name}"
        else:
            reason = "another worker was asked to stop"
        return TrainingStopped(
            f"{reason}: saved a backup at epoch {epoch + 1} step {step_in_epoch}; "
            "run the same command again to resume",
            exit_code=128 + (self.signal_number or signal.SIGTERM),
        )


@tf.function
def _sum_over_workers(strategy: tf.distribute.Strategy, local_flag: tf.Tensor) -> tf.Tensor:
    value = strategy.run(lambda: tf.identity(local_flag))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)  # ReduceOp has no MAX


def stop_if_diverged(loss_sum: float, epoch: int, step_in_epoch: int) -> None:
    if not np.isfinite(loss_sum):
        raise TrainingStopped(
            f"loss became {loss_sum} at epoch {epoch + 1} step {step_in_epoch}; "
            "lower train.learning_rate or set train.gradient_clip_norm",
            exit_code=1,
        )


class EpochMeter:
    """One epoch's running loss and accuracy, its clock, its throughput and its progress bar.

    The clock starts at construction, so it covers making and releasing the epoch's input.
    Throughput counts only calls that did not trace the step function.
    """

    def __init__(self, epoch: int, epochs: int, steps_per_epoch: int, optimizer: keras.optimizers.Optimizer, show_progress: bool):
        self.epoch, self.optimizer = epoch, optimizer
        self.totals = np.zeros(3)  # loss sum, correct, images
        self.timed_images, self.timed_seconds, self.timed_calls = 0.0, 0.0, 0
        self.training_seconds = 0.0
        self.progress = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["lr"]) if show_progress else None
        if self.progress:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        self.started = time.perf_counter()

    def measure(self, train_steps: Callable[..., tf.Tensor], *args, traced: bool) -> float:
        """Call `train_steps(*args)`, add its [loss sum, correct, images]; returns its loss sum."""
        call_started = time.perf_counter()
        step_totals = train_steps(*args).numpy()
        if not traced:  # the first call of an epoch traces the function: not throughput
            self.timed_images += step_totals[2]
            self.timed_seconds += time.perf_counter() - call_started
            self.timed_calls += 1
        self.totals += step_totals
        return float(step_totals[0])

    # Timed calls that make a step-time measurement good enough for a budget's plan.
    MEASURE_SECONDS = 3.0
    MEASURE_CALLS = 2

    def measured_enough(self, epoch_over: bool) -> bool:
        """Enough timed calls to plan on; at an epoch's end, whatever there is."""
        return epoch_over or (self.timed_calls >= self.MEASURE_CALLS and self.timed_seconds >= self.MEASURE_SECONDS)

    def seconds_per_step(self, global_batch_size: int) -> float:
        """Wall seconds per step of the timed calls (the tracing call only when nothing else ran)."""
        if self.timed_images:
            return self.timed_seconds / (self.timed_images / global_batch_size)
        return (time.perf_counter() - self.started) / max(1.0, self.totals[2] / global_batch_size)

    def show(self, step_in_epoch: int) -> None:
        if self.progress:
            loss_sum, correct, images = self.totals
            metrics = [("loss", loss_sum / images), ("accuracy", correct / images), ("lr", current_learning_rate(self.optimizer))]
            self.progress.update(step_in_epoch, metrics)

    def end_training(self) -> None:
        self.training_seconds = time.perf_counter() - self.started

    def record(self, val_loss: float, val_accuracy: float) -> EpochRecord:
        loss_sum, correct, images = self.totals
        timed = self.timed_seconds > 0
        record = EpochRecord(
            epoch=self.epoch + 1,
            loss=float(loss_sum / max(images, 1)),
            accuracy=float(correct / max(images, 1)),
            val_loss=float(val_loss),
            val_accuracy=float(val_accuracy),
            learning_rate=current_learning_rate(self.optimizer),
            seconds=time.perf_counter() - self.started,
            images_per_second=float(self.timed_images / self.timed_seconds if timed else images / self.training_seconds),
        )
        if self.progress:
            metrics = [("loss", record.loss), ("accuracy", record.accuracy), ("lr", record.learning_rate),
                       ("val_loss", record.val_loss), ("val_accuracy", record.val_accuracy)]  # fmt: skip
            self.progress.update(self.progress.target, metrics, finalize=True)
        return record


def progress_wanted() -> bool:
    """Keras progress bars on a terminal; one log line per epoch otherwise (CI, files, clusters)."""
    return sys.stdout.isatty()
