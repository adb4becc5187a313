"""Table 4b: the wall time the default recipe needs to reach 92% test accuracy, against keras.io's convnet.

Issue 13's machine-independent goal: the wall time our default recipe (the main job's resnet20
and settings, `train --time-budget B`, without the export) needs to reach `GOAL_ACCURACY` on the
10,000 test images, divided by the wall time of keras.io's "Simple MNIST convnet" (15 epochs,
about 90%) in the same bench run. Both are processes pinned to the same cores, timed from start
to exit.

Budgets are tried in increasing order, one run each, until one reaches the goal; the time needed
is that run's wall time. Each point is its own run because a budgeted run lays its whole
schedule over its budget: a longer run's accuracy part-way says nothing about a shorter budget.

`float32` stands in for a CPU without native bfloat16: its ratio to the anchor, times the
anchor's wall time on such a machine, estimates the time the recipe needs there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bench.common import BenchContext
from bench.time_to_accuracy import QUICK_BUDGET_ARGUMENTS, QUICK_KERAS_ARGUMENTS, display_path, keras_result, pipeline_result, timed_run

logger = logging.getLogger(__name__)

GOAL_ACCURACY = 0.92


@dataclass(frozen=True)
class SweepSettings:
    budgets: tuple[str, ...]  # tried in this order until one reaches the goal
    precisions: tuple[str, ...]  # train.precision values, one sweep each


FULL = SweepSettings(budgets=("60s", "90s", "135s", "200s", "300s", "450s", "600s"), precisions=("auto", "float32"))
QUICK = SweepSettings(budgets=("30s",), precisions=("auto",))


def run(context: BenchContext) -> dict[str, Any]:
    settings = QUICK if context.quick else FULL
    context.runs_dir.mkdir(parents=True, exist_ok=True)
    anchor = measure_anchor(context)
    sweeps = {precision: sweep(precision, settings.budgets, anchor, context) for precision in settings.precisions}
    return {
        "status": "measured",
        "settings": {"goal_accuracy": GOAL_ACCURACY, "budgets": list(settings.budgets), "precisions": list(settings.precisions)},
        "anchor": anchor,
        "sweeps": sweeps,
    }


def measure_anchor(context: BenchContext) -> dict[str, Any]:
    """keras.io's convnet, one run: its wall time is the clock the recipe's time is divided by."""
    result_path = context.runs_dir / "sweep-keras_convnet.json"
    arguments = ("-m", "bench.keras_convnet", "--output", display_path(result_path), *(QUICK_KERAS_ARGUMENTS if context.quick else ()))
    anchor = timed_run(arguments, context.runs_dir / "sweep-keras_convnet.log", context.quick)
    if anchor["returncode"] != 0:
        raise RuntimeError(f"the keras.io convnet failed (exit {anchor['returncode']}); log {anchor['log']}")
    result = keras_result(result_path)
    anchor.update(test_accuracy=result["test_accuracy"], epochs=result["epochs"])
    logger.info("budget sweep anchor: %.2f%% in %.1f s", 100 * anchor["test_accuracy"], anchor["wall_seconds"])
    return anchor


def sweep(precision: str, budgets: tuple[str, ...], anchor: dict[str, Any], context: BenchContext) -> dict[str, Any]:
    """Budgeted runs in increasing order until one reaches the goal; the first that does sets the time."""
    runs = []
    for budget in budgets:
        run_name = f"sweep-{precision}-{budget}"
        arguments = (
            "run_pipeline.py", "train", "--time-budget", budget, "--set", f"train.precision={precision}",
            "--output-dir", display_path(context.runs_dir), "--run-name", run_name, "--overwrite",
            *(QUICK_BUDGET_ARGUMENTS if context.quick else ()),
        )  # fmt: skip
        run = {"budget": budget, **timed_run(arguments, context.runs_dir / f"{run_name}.log", context.quick)}
        if run["returncode"] != 0:
            raise RuntimeError(f"{run['command']} failed (exit {run['returncode']}); log {run['log']}")
        result = pipeline_result(context.runs_dir / run_name)
        run.update(test_accuracy=result["test_accuracy"], epochs=result["epochs"], images_per_second=result["images_per_second"])
        runs.append(run)
        logger.info("budget sweep %s %s: %.2f%% in %.1f s", precision, budget, 100 * run["test_accuracy"], run["wall_seconds"])
        if run["test_accuracy"] >= GOAL_ACCURACY:
            break
    reached = next((run for run in runs if run["test_accuracy"] >= GOAL_ACCURACY), None)
    return {
        "runs": runs,
        "seconds_to_goal": reached["wall_seconds"] if reached else None,
        "vs_anchor": round(reached["wall_seconds"] / anchor["wall_seconds"], 2) if reached else None,
    }
