"""Time-budgeted training: how many steps fit the wall time a user gives the whole job.

`train.time_budget` covers the job from process start to the last export file. The trainer
measures its step time on the first calls of the step function (the tracing call excluded) and
the evaluation time on a few validation batches, and `plan_training` turns those into a fixed
number of epochs and steps per epoch. The learning-rate schedule is then laid over exactly
those steps, so warmup and decay end with the budget: Li, Yumer and Ramanan ("Budgeted
Training", ICLR 2020) found that schedules decaying to zero at the budget's end work best.

The plan is made once, agreed by every worker (the chief's measurements decide), checked once
against the faster of the first two whole epochs run under it (whose clocks include backups
and saving, which the first steps do not show: fewer epochs if the rest would overrun, never
more), and saved with
each backup, so a resumed run keeps the plan it had.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass

from architectures.errors import UserError



def _process_started() -> float:
    """`time.monotonic()` at this process's start (Linux's /proc), else now: the job's clock
    includes interpreter start and importing TensorFlow, about 5 s here."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


JOB_STARTED = _process_started()

# Held back from the budget for what the plan cannot see: the epoch-start cost of a fresh
# input iterator, slower steps late in an epoch, a busy machine.
SAFETY_FRACTION = 0.03
SAFETY_SECONDS = 5.0
# After training: saving the model and plots (a few seconds); with --export, converting to
# SavedModel, TFLite (float32 and int8) and ONNX (about 25 s for resnet20 on a 2-core EPYC)
# and evaluating each of the 4 artefacts on the test split.
FINISH_SECONDS = 5.0
EXPORT_CONVERSION_SECONDS = 30.0
EXPORT_TEST_PASSES = 4

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in "90s", "10m", "2h", "1h30m" or a bare number of seconds."""
    match = _DURATION.match(str(text))
    if not match or not any(match.groups()):
        raise UserError(f"train.time_budget: cannot read {text!r} as a duration; use e.g. 90s, 10m, 2h or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError(f"train.time_budget must be positive, got {text!r}")
    return total


def job_seconds() -> float:
    """Wall seconds since the job started."""
    return time.monotonic() - JOB_STARTED


@dataclass(frozen=True)
class Measurements:
    """What the plan is made from, all in wall seconds (the chief's, under multi-worker)."""

    elapsed: float  # job time used when the plan is made
    per_step: float  # one training step, tracing excluded
    per_eval_image: float  # one evaluation image, tracing excluded


@dataclass(frozen=True)
class Plan:
    budget_seconds: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    seconds_per_step: float
    seconds_per_validation: float
    finish_seconds: float  # held back for the test evaluation, saving and export
    planned_at: float  # job seconds when the plan was made

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def expected_end(self) -> float:
        """Job seconds at which the plan expects the job to end."""
        return self.planned_at + self.training_seconds + self.finish_seconds

    @property
    def training_seconds(self) -> float:
        return self.total_steps * self.seconds_per_step + self.epochs * self.seconds_per_validation

    def describe(self) -> str:
        return (
            f"time budget {self.budget_seconds:.0f} s: measured {self.seconds_per_step * 1000:.1f} ms/step and "
            f"{self.seconds_per_validation:.1f} s per validation after {self.planned_at:.0f} s of the job; planned "
            f"{self.epochs} epoch(s) x {self.steps_per_epoch} steps = {self.total_steps} steps (warmup "
            f"{self.warmup_steps}), about {self.training_seconds:.0f} s of training and validation, "
            f"{self.finish_seconds:.0f} s kept for the test evaluation and export; expected end at "
            f"{self.expected_end:.0f} s"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan | None:
        return cls(**json.loads(text)) if text else None


def finish_seconds(test_images: int, per_eval_image: float, exporting: bool) -> float:
    """What the job needs after training: the test evaluation, saving, and the export if asked."""
    test_pass = test_images * per_eval_image
    seconds = FINISH_SECONDS + test_pass
    if exporting:
        seconds += EXPORT_CONVERSION_SECONDS + EXPORT_TEST_PASSES * test_pass
    return seconds


def plan_training(
    *,
    budget_seconds: float,
    measured: Measurements,
    steps_done: int,
    steps_per_split_epoch: int,
    validation_images: int,
    test_images: int,
    exporting: bool,
    warmup_epochs: float,
) -> Plan:
    """The most training steps that end the job within the budget.

    Epochs are whole passes of at most the split's steps, each followed by a validation; with
    E epochs the steps are shared evenly, so every epoch is the same length. `steps_done` were
    already taken (in the first epoch) while measuring.
    """
    validation_seconds = validation_images * measured.per_eval_image
    reserve = finish_seconds(test_images, measured.per_eval_image, exporting)
    safety = SAFETY_SECONDS + SAFETY_FRACTION * budget_seconds
    available = budget_seconds - safety - measured.elapsed - reserve  # for the remaining steps and validations
    best_steps, best_epochs = 0, 0
    for epochs in range(1, 100_000):
        if epochs * validation_seconds >= available:
            break
        affordable = steps_done + math.floor((available - epochs * validation_seconds) / measured.per_step)
        steps = min(epochs * steps_per_split_epoch, affordable)
        if steps < epochs or steps <= (epochs - 1) * steps_per_split_epoch:
            break  # fewer epochs hold as many steps with fewer validations
        steps_per_epoch = steps // epochs
        if steps_per_epoch * epochs > best_steps:
            best_steps, best_epochs = steps_per_epoch * epochs, epochs
    if best_steps <= steps_done:
        need = measured.elapsed + reserve + validation_seconds + safety + measured.per_step
        raise UserError(
            f"train.time_budget {budget_seconds:.0f} s is too small: {measured.elapsed:.0f} s went to start-up and "
            f"measuring, one validation takes {validation_seconds:.1f} s and the test evaluation"
            f"{' and export' if exporting else ''} {reserve:.0f} s; give at least {math.ceil(need)} s"
        )
    steps_per_epoch = best_steps // best_epochs
    total = best_steps
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    return Plan(
        budget_seconds=budget_seconds,
        epochs=best_epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=max(warmup, 0),
        seconds_per_step=measured.per_step,
        seconds_per_validation=validation_seconds,
        finish_seconds=reserve,
        planned_at=measured.elapsed,
    )


def epochs_that_fit(plan: Plan, *, epochs_done: int, epoch_seconds: float, now: float) -> int:
    """The plan's epochs, or fewer where the remaining ones at `epoch_seconds` each (a measured
    whole epoch) would end the job after its budget; at least the epochs already done."""
    safety = SAFETY_SECONDS + SAFETY_FRACTION * plan.budget_seconds
    available = plan.budget_seconds - safety - now - plan.finish_seconds
    more = max(0, math.floor(available / epoch_seconds)) if epoch_seconds > 0 else plan.epochs
    return max(epochs_done, min(plan.epochs, epochs_done + more))
