"""Table 5: size, batch-1 CPU latency and test accuracy of every export of the default run, and
int8 TFLite on an RGB model at 224 px.

`pipeline.export.export_run` does the measuring (each artefact run on the run's test split and
compared with the float32 Keras model; latency is the median of its batch-1 calls: the
SavedModel's `serving_default` on PNG bytes and ONNX in onnxruntime, each on its runtime's
default thread pool, one thread per core; TFLite in the LiteRT interpreter with XNNPACK on one
thread, as a phone app would run it; each row records its thread count). The run is table
4(a)'s (the default recipe), else, outside --quick, `runs/fashion_mnist-airbench94_w16` when it is
complete.

Table 5(b): int8 calibration is known to be harder for depthwise convolutions on RGB photos than
for our 28x28 gray default model, so mobilenet_v2 is trained briefly at 224x224x3 (Fashion-MNIST
upscaled to RGB, through the CLI) and exported as float32 and full-int8 TFLite (builtin ops,
int8 input and output). Exports go to temporary directories, deleted afterwards: the table keeps
the figures, not the files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchContext

logger = logging.getLogger(__name__)

FULL_QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
QUICK_MAX_EVAL_EXAMPLES = 64
FALLBACK_RUN_DIR = REPO_ROOT / "runs" / "fashion_mnist-airbench94_w16"

RGB_ARCH = "mobilenet_v2"
RGB_RUN_NAME = "fashion_mnist_rgb-mobilenet_v2"
# Full: 224 px RGB, 2,000 training images for 2 epochs, 1,000 test images. Quick: checks the rows appear.
RGB_SETTINGS = {"image_size": 224, "train_examples": 2000, "eval_examples": 1000, "epochs": 2, "batch_size": 32}
RGB_QUICK_SETTINGS = {"image_size": 64, "train_examples": 64, "eval_examples": 32, "epochs": 1, "batch_size": 16}
RGB_TIMEOUT_SECONDS = 3600


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
            run_dir, formats=("saved_model", "tflite", "onnx"), quantize=FULL_QUANTIZATIONS, export_dir=export_dir,
            max_eval_examples=QUICK_MAX_EVAL_EXAMPLES if context.quick else None,
        )  # fmt: skip
        rows = [_row(artefact, export_dir) for artefact in report.artefacts]
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    return {
        "status": "measured",
        "run_dir": _display_path(run_dir),
        "test_images": report.num_eval_examples,
        "keras_test_accuracy": report.keras_test_accuracy,
        "rows": rows,
        "rgb_int8": rgb_int8(context),
    }


def rgb_int8(context: BenchContext) -> dict[str, Any]:
    """Table 5(b): mobilenet_v2 trained briefly at 224x224x3, its float32 and int8 TFLite models measured."""
    from pipeline.export import export_run
    from pipeline.export.tflite import CALIBRATION_IMAGES

    settings = {**(RGB_QUICK_SETTINGS if context.quick else RGB_SETTINGS), "calibration_images": CALIBRATION_IMAGES}
    run_dir = context.runs_dir / RGB_RUN_NAME
    command = [
        sys.executable, "run_pipeline.py", "train", "--arch", RGB_ARCH, "--dataset", "fashion_mnist",
        "--image-size", str(settings["image_size"]), "--epochs", str(settings["epochs"]),
        "--batch-size", str(settings["batch_size"]), "--output-dir", str(context.runs_dir.resolve()), "--run-name", RGB_RUN_NAME,
        "--set", "data.channels=3", "--set", f"data.max_train_examples={settings['train_examples']}",
        "--set", f"data.max_eval_examples={settings['eval_examples']}", "--set", "train.learning_rate=0.05",
    ]  # fmt: skip
    context.runs_dir.mkdir(parents=True, exist_ok=True)
    log_path = context.runs_dir / f"{RGB_RUN_NAME}.log"
    with open(log_path, "w") as log:
        # A completed run with the same settings is reused: the CLI reports it and exits 0.
        try:
            returncode = subprocess.run(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=RGB_TIMEOUT_SECONDS,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = -9
    result: dict[str, Any] = {"arch": RGB_ARCH, "settings": settings, "command": _display_command(command)}
    if returncode != 0 or not (run_dir / "metrics.json").is_file():
        return {**result, "status": f"not measured: training exited {returncode} (log {_display_path(log_path)})", "rows": []}
    export_dir = Path(tempfile.mkdtemp(prefix="convnets-bench-export-"))
    try:
        report = export_run(run_dir, formats=("tflite",), quantize=("none", "int8"), export_dir=export_dir)
        rows = []
        for artefact in report.artefacts:
            sidecar = json.loads(artefact.path.with_suffix(".json").read_text())
            rows.append({
                **_row(artefact, export_dir),
                "input_dtype": sidecar["input"]["dtype"], "output_dtype": sidecar["output"]["dtype"],
            })  # fmt: skip
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    return {
        **result,
        "status": "measured",
        "run_dir": _display_path(run_dir),
        "test_images": report.num_eval_examples,
        "keras_test_accuracy": report.keras_test_accuracy,
        "rows": rows,
    }


def _row(artefact: Any, export_dir: Path) -> dict[str, Any]:
    return {
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


def _display_path(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _display_command(command: list[str]) -> str:
    """The command as typed in the repository (python, not this interpreter's path)."""
    return " ".join(["python", *command[1:]])
