"""Table 4b: accuracy at equal wall time, and the time to 92% test accuracy against keras.io's convnet.

Issue 13 asks for the default architecture and recipe to be chosen by accuracy at equal wall
time, and for a machine-independent goal: the wall time our default recipe (`train
--time-budget B`, the main job's settings, without the export) needs to reach `GOAL_ACCURACY`
on the 10,000 test images, divided by the wall time of keras.io's "Simple MNIST convnet" (15
epochs, about 90%) in the same bench run. All are processes pinned to the same cores, timed from
start to exit.

Each candidate (an architecture and a precision, the rest of the recipe the main job's) runs
once per budget, in increasing order; its time to the goal is the wall time of the first run
that reaches it. Each point is its own run because a budgeted run lays its whole schedule over
its budget: a longer run's accuracy part-way says nothing about a shorter budget.

`float32` stands in for a CPU without native bfloat16, and `float32` under oneDNN's AVX2 kernels
(`ONEDNN_MAX_CPU_ISA=AVX2`, against an anchor run under them too) for an AVX2-only one more
closely: its ratio to the anchor, times the anchor's wall time on such a machine, estimates the
time the recipe needs there.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import BenchContext
from bench.time_to_accuracy import QUICK_BUDGET_ARGUMENTS, QUICK_KERAS_ARGUMENTS, display_path, keras_result, pipeline_result, timed_run
from pipeline.config import ModelConfig

logger = logging.getLogger(__name__)

GOAL_ACCURACY = 0.92


DEFAULT_ARCH = ModelConfig().arch  # the main job's


# oneDNN limited to the kernels an AVX2-only CPU gets (table 4c): the nearest stand-in here for
# such a machine, for the candidate and for its own anchor run.
AVX2_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


@dataclass(frozen=True)
class Candidate:
    arch: str
    precision: str  # train.precision
    avx2_kernels: bool = False  # run under AVX2_KERNELS, against an anchor run under them too

    @property
    def key(self) -> str:
        return f"{self.arch}-{self.precision}" + ("-avx2" if self.avx2_kernels else "")

    @property
    def environment(self) -> dict[str, str]:
        return AVX2_KERNELS if self.avx2_kernels else {}


@dataclass(frozen=True)
class SweepSettings:
    budgets: tuple[str, ...]  # every candidate runs each, in this order
    candidates: tuple[Candidate, ...]


FULL = SweepSettings(
    budgets=("60s", "90s", "135s"),
    candidates=(
        Candidate(DEFAULT_ARCH, "auto"),
        Candidate(DEFAULT_ARCH, "float32"),
        Candidate(DEFAULT_ARCH, "float32", avx2_kernels=True),
        Candidate("airbench94_w32", "float32"),
        Candidate("resnet20", "float32"),  # the main job's architecture until issue 13
    ),
)
QUICK = SweepSettings(budgets=("30s",), candidates=(Candidate(DEFAULT_ARCH, "auto"),))


def run(context: BenchContext) -> dict[str, Any]:
    settings = QUICK if context.quick else FULL
    context.runs_dir.mkdir(parents=True, exist_ok=True)
    anchors = {avx2: measure_anchor(context, avx2) for avx2 in sorted({c.avx2_kernels for c in settings.candidates})}
    sweeps = {
        candidate.key: sweep(candidate, settings.budgets, anchors[candidate.avx2_kernels], context)
        for candidate in settings.candidates
    }
    return {
        "status": "measured",
        "settings": {
            "goal_accuracy": GOAL_ACCURACY, "budgets": list(settings.budgets), "default_arch": DEFAULT_ARCH,
            "candidates": [asdict(candidate) for candidate in settings.candidates],
        },  # fmt: skip
        "anchor": anchors[False],
        **({"avx2_anchor": anchors[True]} if True in anchors else {}),
        "sweeps": sweeps,
    }


def measure_anchor(context: BenchContext, avx2_kernels: bool = False) -> dict[str, Any]:
    """keras.io's convnet, one run: its wall time is the clock the recipe's time is divided by."""
    name = "sweep-keras_convnet" + ("-avx2" if avx2_kernels else "")
    result_path = context.runs_dir / f"{name}.json"
    arguments = ("-m", "bench.keras_convnet", "--output", display_path(result_path), *(QUICK_KERAS_ARGUMENTS if context.quick else ()))
    environment = AVX2_KERNELS if avx2_kernels else {}
    anchor = timed_run(arguments, context.runs_dir / f"{name}.log", context.quick, environment)
    if anchor["returncode"] != 0:
        raise RuntimeError(f"the keras.io convnet failed (exit {anchor['returncode']}); log {anchor['log']}")
    result = keras_result(result_path)
    anchor.update(test_accuracy=result["test_accuracy"], epochs=result["epochs"], environment=environment)
    logger.info("budget sweep anchor %s: %.2f%% in %.1f s", name, 100 * anchor["test_accuracy"], anchor["wall_seconds"])
    return anchor


def sweep(candidate: Candidate, budgets: tuple[str, ...], anchor: dict[str, Any], context: BenchContext) -> dict[str, Any]:
    """One budgeted run per budget; the first that reaches the goal sets the time to it."""
    runs = []
    for budget in budgets:
        run_name = f"sweep-{candidate.key}-{budget}"
        arguments = (
            "run_pipeline.py", "train", "--arch", candidate.arch, "--time-budget", budget,
            "--set", f"train.precision={candidate.precision}",
            "--output-dir", display_path(context.runs_dir), "--run-name", run_name, "--overwrite",
            *(QUICK_BUDGET_ARGUMENTS if context.quick else ()),
        )  # fmt: skip
        log_path = context.runs_dir / f"{run_name}.log"
        run = {"budget": budget, **timed_run(arguments, log_path, context.quick, candidate.environment)}
        if run["returncode"] != 0:
            raise RuntimeError(f"{run['command']} failed (exit {run['returncode']}); log {run['log']}")
        result = pipeline_result(context.runs_dir / run_name)
        run.update(test_accuracy=result["test_accuracy"], epochs=result["epochs"], images_per_second=result["images_per_second"])
        runs.append(run)
        logger.info("budget sweep %s %s: %.2f%% in %.1f s", candidate.key, budget, 100 * run["test_accuracy"], run["wall_seconds"])
    reached = next((run for run in runs if run["test_accuracy"] >= GOAL_ACCURACY), None)
    return {
        **asdict(candidate),
        "anchor_seconds": anchor["wall_seconds"],
        "runs": runs,
        "seconds_to_goal": reached["wall_seconds"] if reached else None,
        "vs_anchor": round(reached["wall_seconds"] / anchor["wall_seconds"], 2) if reached else None,
    }
