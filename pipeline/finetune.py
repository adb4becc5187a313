"""Two-phase fine-tuning: the new head alone on a frozen backbone, then the whole network.

keras.io's transfer-learning guide (Chollet, "Transfer learning & fine-tuning"): a frozen
BatchNormalization runs in inference mode (Keras 3 uses the moving statistics when `trainable`
is False), so the pretrained statistics survive the head's first, noisy epochs; then every layer
trains at a lower peak with a warmup of its own, so large early gradients do not wreck the
pretrained features.

The phase follows from the epoch number alone, so a resumed run re-enters the phase it was
stopped in. One optimizer, built over every variable before freezing, serves both phases (a
frozen variable gets no update, its slots stay), so backups, EMA and strategies see the same
object graph throughout.
"""

from __future__ import annotations

import logging

import keras

import architectures
from pipeline.config import ModelConfig, TrainConfig, use_small_input

logger = logging.getLogger(__name__)


def backbone_layers(
    model: keras.Model, model_config: ModelConfig, image_shape: tuple[int, int, int]
) -> list[keras.layers.Layer]:
    """The layers of the training model's builder model that the pretrained file fills (not its head).
    Builds the headless model once to learn their names."""
    names = architectures.backbone_layer_names(
        model_config.arch, input_shape=image_shape, small_input=use_small_input(model_config, image_shape[0]),
        **model_config.options,
    )  # fmt: skip
    builder_model = model.get_layer(model_config.arch)
    return [layer for layer in builder_model.layers if layer.name in names]


class FineTuningPhases:
    """Freezes the backbone for the first `freeze_epochs` epochs, unfreezes it after."""

    def __init__(self, backbone: list[keras.layers.Layer], freeze_epochs: int):
        self.backbone, self.freeze_epochs = backbone, freeze_epochs
        self.frozen: bool | None = None  # None: not entered yet

    def enter(self, epoch: int) -> bool:
        """Set up `epoch`'s (0-based) phase; True if the trainable variables changed (retrace the step)."""
        frozen = epoch < self.freeze_epochs
        if frozen == self.frozen:
            return False
        for layer in self.backbone:
            layer.trainable = not frozen
        self.frozen = frozen
        phase = "the head only, backbone frozen" if frozen else "the whole network"
        logger.info("epoch %d: training %s", epoch + 1, phase)
        return True


class TwoPhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup then cosine decay, twice: to `head_learning_rate` over the frozen steps, then
    from zero again to `fine_tune_learning_rate` over the rest."""

    def __init__(
        self, head_learning_rate: float, fine_tune_learning_rate: float, warmup_steps: int, frozen_steps: int, total_steps: int
    ):
        self.head_learning_rate, self.fine_tune_learning_rate = head_learning_rate, fine_tune_learning_rate
        self.warmup_steps, self.frozen_steps, self.total_steps = warmup_steps, frozen_steps, total_steps
        self.head = _warmup_cosine(head_learning_rate, warmup_steps, frozen_steps)
        self.whole = _warmup_cosine(fine_tune_learning_rate, warmup_steps, total_steps - frozen_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return keras.ops.where(
            step < self.frozen_steps, self.head(step), self.whole(keras.ops.maximum(step - self.frozen_steps, 0.0))
        )

    def get_config(self):
        return {
            "head_learning_rate": self.head_learning_rate, "fine_tune_learning_rate": self.fine_tune_learning_rate,
            "warmup_steps": self.warmup_steps, "frozen_steps": self.frozen_steps, "total_steps": self.total_steps,
        }  # fmt: skip


def _warmup_cosine(peak: float, warmup_steps: int, steps: int) -> keras.optimizers.schedules.CosineDecay:
    """As `train.make_optimizer`'s schedule: the warmup never takes the whole phase."""
    steps = max(1, steps)
    warmup_steps = min(steps - 1, warmup_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(1, steps - warmup_steps),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def use_two_phase_schedule(optimizer: keras.optimizers.Optimizer, config: TrainConfig, steps_per_epoch: int) -> None:
    """Replace the optimizer's schedule with `TwoPhaseSchedule` (before its first step)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner.learning_rate = TwoPhaseSchedule(
        head_learning_rate=config.learning_rate,
        fine_tune_learning_rate=config.fine_tune_learning_rate,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        frozen_steps=config.freeze_backbone_epochs * steps_per_epoch,
        total_steps=config.epochs * steps_per_epoch,
    )
