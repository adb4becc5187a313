"""Table 5: size, batch-1 CPU latency and test accuracy of every export of the default run.

`pipeline.export.export_run` does the measuring (each artefact run on the run's test split and
compared with the float32 Keras model; latency is the median of its batch-1 calls: the
SavedModel's `serving_default` on PNG bytes on TensorFlow's default thread pool, one thread per
core; TFLite in the LiteRT interpreter with XNNPACK on one thread, as a phone app would run it;
each row records its thread count). The run is table 4(a)'s (the default recipe), else, outside --quick,
`runs/fashion_mnist-resnet20` when it is complete. Exports go to a temporary directory, deleted
afterwards: the table keeps the figures, not the files.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchContext

logger = logging.getLogger(__name__)

FULL_QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
QUICK_MAX_EVAL_EXAMPLES = 64
FALLBACK_RUN_DIR = REPO_ROOT / "runs" / "fashion_mnist-resnet20"


def run(context: BenchContext) -> dict[str, Any]:
    if importlib.util.find_spec("pipeline.export") is None:
        return {"status": "not measured: export module missing", "rows": []}
    from pipeline.export import export_run

    run_dir = default_run_dir(context)
    if run_dir is None:
        return {
            "status": "not measured: no completed run of the default recipe (run `python -m bench --only time_to_accuracy` first)",
            "rows": [],
        }
    export_dir = Path(tempfile.mkdtemp(prefix="convnets-bench-export-"))
    try:
        report = export_run(
            run_dir, formats=("saved_model", "tflite"), quantize=FULL_QUANTIZATIONS, export_dir=export_dir,
            max_eval_examples=QUICK_MAX_EVAL_EXAMPLES if context.quick else None,
        )  # fmt: skip
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    rows = [
        {
            "format": artefact.format,
            "quantization": artefact.quantization,
            "path": str(artefact.path.relative_to(export_dir)),  # inside the (deleted) export directory
            "size_bytes": artefact.size_bytes,
            "test_accuracy": artefact.test_accuracy,
            "top1_agreement": artefact.top1_agreement,
            "max_abs_prob_diff": artefact.max_abs_prob_diff,
            "batch1_latency_ms": round(artefact.batch1_latency_ms, 3),
            "latency_threads": artefact.latency_threads,
            "notes": artefact.notes,
        }
        for artefact in report.artefacts
    ]
    return {
        "status": "measured",
        "run_dir": str(run_dir.relative_to(REPO_ROOT)) if run_dir.is_relative_to(REPO_ROOT) else str(run_dir),
        "test_images": report.num_eval_examples,
        "keras_test_accuracy": report.keras_test_accuracy,
        "rows": rows,
    }


def default_run_dir(context: BenchContext) -> Path | None:
    """Table 4(a)'s run directory if it completed, else (full runs only) the CLI's default run."""
    for row in context.results.get("tables", {}).get("time_to_accuracy", {}).get("rows", []):
        if row.get("recipe") == "default" and row.get("returncode") == 0 and row.get("run_dir"):
            run_dir = Path(row["run_dir"])
            run_dir = run_dir if run_dir.is_absolute() else REPO_ROOT / run_dir
            if (run_dir / "metrics.json").is_file():
                return run_dir
    if not context.quick and (FALLBACK_RUN_DIR / "metrics.json").is_file():
        return FALLBACK_RUN_DIR
    return None
