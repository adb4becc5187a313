"""Time-budgeted training: how many steps fit the wall time a user gives the whole job.

`train.time_budget` covers the job from process start to the last export file. The trainer
measures its step time on the first calls of the step function (the tracing call excluded) and
the evaluation time on a few validation batches, and `plan_training` turns those into a fixed
number of epochs and steps per epoch. The learning-rate schedule is then laid over exactly
those steps, so warmup and decay end with the budget: Li, Yumer and Ramanan ("Budgeted
Training", ICLR 2020) found that schedules decaying to zero at the budget's end work best.

The plan is made once, agreed by every worker (the chief's measurements decide), and saved with
each backup, so a resumed run keeps the plan it had (and re-plans no more: its clock started
anew). From the second whole epoch under the plan on, every epoch's end re-plans the remaining
epochs, their length (up to a pass of the split) and their number, on the step time of the last
whole epochs, whose clocks include what the first steps do not show (backups, saving, a fresh
input iterator). One early check that could only cut whole epochs left up to a quarter of short
budgets unused (BENCHMARKS.md, table 4b); one that could also add epochs overran a 600 s budget
by 1 s when later epochs ran 10% slower than the first.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, replace

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
    # Re-plans (`replan_remaining`), in order: (first 0-based epoch, its steps and those of the
    # epochs after it); empty until the first check, and in plans saved before re-plans existed.
    changes: tuple[tuple[int, int], ...] = ()

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of the 0-based `epoch`."""
        steps = self.steps_per_epoch
        for first_epoch, later_steps in self.changes:
            if epoch >= first_epoch:
                steps = later_steps
        return steps

    def steps_before(self, epoch: int) -> int:
        """Steps of the epochs before the 0-based `epoch`."""
        return sum(self.steps_in_epoch(earlier) for earlier in range(epoch))

    @property
    def total_steps(self) -> int:
        return self.steps_before(self.epochs)

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

    def describe_replan(self, before: Plan, epochs_done: int, seconds_per_step: float) -> str:
        head = f"time budget: {seconds_per_step * 1000:.1f} ms/step over the last epochs (planned {self.seconds_per_step * 1000:.1f})"
        if self.epochs == epochs_done:
            return f"{head}; no time is left for another epoch, so the run ends after {self.epochs}"
        return (
            f"{head}; the {self.epochs - epochs_done} remaining epoch(s) take {self.steps_in_epoch(epochs_done)} steps "
            f"each (were {before.epochs - epochs_done} x {before.steps_in_epoch(epochs_done)}), {self.total_steps} steps in all"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan | None:
        return cls.from_dict(json.loads(text)) if text else None

    @classmethod
    def from_dict(cls, fields: dict) -> Plan:
        """A plan from `asdict`'s fields (JSON turns `changes` into lists)."""
        return cls(**{**fields, "changes": tuple(tuple(change) for change in fields.get("changes", ()))})


def finish_seconds(test_images: int, per_eval_image: float, exporting: bool) -> float:
    """What the job needs after training: the test evaluation, saving, and the export if asked."""
    test_pass = test_images * per_eval_image
    seconds = FINISH_SECONDS + test_pass
    if exporting:
        seconds += EXPORT_CONVERSION_SECONDS + EXPORT_TEST_PASSES * test_pass
    return seconds


def safety_seconds(budget_seconds: float) -> float:
    return SAFETY_SECONDS + SAFETY_FRACTION * budget_seconds


def seconds_left(budget_seconds: float, *, now: float, finish: float) -> float:
    """What the budget leaves for training and validation at job second `now`, after the safety
    margin and `finish` seconds kept for the test evaluation and export."""
    return budget_seconds - safety_seconds(budget_seconds) - now - finish


def most_steps(
    available: float, validation_seconds: float, per_step: float, split_steps: int, steps_done: int = 0
) -> tuple[int, int]:
    """(epochs, steps per epoch) holding the most steps in `available` seconds: E epochs of equal
    length, at most `split_steps` each, each followed by a validation; `steps_done` of the first
    were already taken. (0, 0) when not even one step and a validation fit."""
    best = (0, 0)
    for epochs in range(1, 100_000):
        if epochs * validation_seconds >= available:
            break
        affordable = steps_done + math.floor((available - epochs * validation_seconds) / per_step)
        steps = min(epochs * split_steps, affordable)
        if steps < epochs or steps <= (epochs - 1) * split_steps:
            break  # fewer epochs hold as many steps with fewer validations
        if (steps // epochs) * epochs > best[0] * best[1]:
            best = (epochs, steps // epochs)
    return best


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
    available = seconds_left(budget_seconds, now=measured.elapsed, finish=reserve)  # for the steps and validations
    best_epochs, best_length = most_steps(available, validation_seconds, measured.per_step, steps_per_split_epoch, steps_done)
    best_steps = best_epochs * best_length
    if best_steps <= steps_done:
        need = measured.elapsed + reserve + validation_seconds + safety_seconds(budget_seconds) + measured.per_step
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


def replan_remaining(plan: Plan, *, epochs_done: int, seconds_per_step: float, now: float, split_steps: int) -> Plan:
    """The plan with its remaining epochs re-planned to end the job on time, at job second `now`,
    with steps at `seconds_per_step` (measured on whole epochs under the plan: backups, saving and
    a fresh input iterator included) and the planned validations.

    The remaining time holds the most steps `most_steps` finds: usually as many epochs, shorter or
    longer (at most `split_steps`, a pass of the split), more where the first measurement
    overestimated the step, fewer where one validation less buys more steps.
    """
    if plan.epochs <= epochs_done or seconds_per_step <= 0:
        return plan
    available = seconds_left(plan.budget_seconds, now=now, finish=plan.finish_seconds)
    epochs, length = most_steps(available, plan.seconds_per_validation, seconds_per_step, split_steps)
    if epochs == plan.epochs - epochs_done and length == plan.steps_in_epoch(epochs_done):
        return plan
    kept = tuple(change for change in plan.changes if change[0] < epochs_done)
    replanned = replace(plan, epochs=epochs_done + epochs, changes=(*kept, (epochs_done, length)))
    return replace(replanned, warmup_steps=max(0, min(plan.warmup_steps, replanned.total_steps - 1)))
