"""Exports of a trained run that load without any of our code: a TF Serving SavedModel, TFLite
models for phones and ONNX, each measured on the run's test split by running it.

An export directory (default `<run_dir>/export`) holds:
    models.config                          TF Serving `--model_config_file`, absolute base paths
    batching_parameters.txt                TF Serving `--batching_parameters_file` (CPU defaults)
    export_report.json                     the last export's measurements (`ExportReport`)
    <model_name>/<version>/                SavedModel; TF Serving's base path is <model_name>/
        saved_model.pb, variables/, assets/labels.txt
        assets.extra/tf_serving_warmup_requests
    tflite/<model_name>/<version>/<model_name>_<precision>.tflite, .labels.txt, .json
    onnx/<model_name>/<version>/<model_name>.onnx

A version is a positive integer: by default one more than any version of the model in any
format. Every artefact of an export is written into hidden `.tmp-*` directories beside its
version directory and renamed into place only after all of them were converted and measured,
so TF Serving (which loads the numeric directories only) never sees half an export and an
existing version is never overwritten.

Runs trained under mixed precision are exported with float32 compute: TFLite and serving CPUs
want float32, and the Keras reference every artefact is compared with is that float32 model.
One module per format (`saved_model`, `tflite`, `onnx`), the TF Serving files
(`serving_config`) and the measuring (`measure`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from architectures.errors import UserError
from pipeline import data
from pipeline.config import from_yaml_file
from pipeline.export.measure import ArtefactReport, ExportReport, float32_model, load_eval_set
from pipeline.export.onnx import export_onnx
from pipeline.export.saved_model import export_saved_model
from pipeline.export.serving_config import BATCHING_FILE, SERVING_CONFIG_FILE, batching_parameters_text, serving_config_text
from pipeline.export.tflite import QUANTIZATIONS, calibration_images, export_tflite
from pipeline.files import write_text_atomically
from pipeline.saved_runs import CONFIG_FILE, load_run_model

__all__ = ["FORMATS", "QUANTIZATIONS", "ArtefactReport", "ExportReport", "export_run"]

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite", "onnx")
REPORT_FILE = "export_report.json"
FORMAT_TREES = {"tflite": "tflite", "onnx": "onnx"}  # sub-trees of the export directory; SavedModels sit at its top
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # safe in TF Serving URLs and file names


def export_run(
    run_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    quantize: Sequence[str] = ("none", "int8"),
    model_name: str | None = None,
    version: int | None = None,
    export_dir: str | Path | None = None,
    max_eval_examples: int | None = None,
) -> ExportReport:
    """Export a completed run in `formats` (TFLite once per `quantize`) as a new version.

    Every artefact is run on the run's test split (the first `max_eval_examples` images;
    None: all) and compared with the float32 Keras model. Bad input raises `UserError`
    before anything is written; a failure later leaves no version directory behind.
    """
    formats, quantize = _checked_choices(formats, FORMATS, "format"), _checked_choices(quantize, QUANTIZATIONS, "quantization")
    if max_eval_examples is not None and max_eval_examples < 1:
        raise UserError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} has no {CONFIG_FILE}: export needs the run's config to find its test split")
    model_name = _checked_model_name(model_name or run_dir.resolve().name)
    export_dir = Path(export_dir) if export_dir is not None else run_dir / "export"
    version = _choose_version(export_dir, model_name, version)

    trained_model, class_names, _ = load_run_model(run_dir)
    config = from_yaml_file(run_dir / CONFIG_FILE)
    model = float32_model(trained_model)
    splits = data.load_splits(config.data, config.seed)
    eval_set = load_eval_set(model, splits, max_eval_examples)
    logger.info(
        "export %s version %d: Keras float32 reference %.2f%% on %d test images",
        model_name, version, 100 * eval_set.keras_accuracy, eval_set.size,
    )

    def export_format(fmt: str, directory: Path) -> list[ArtefactReport]:
        if fmt == "saved_model":
            return [export_saved_model(model, class_names, eval_set, directory, model_name)]
        if fmt == "tflite":
            calibration = calibration_images(splits)
            return [
                export_tflite(
                    model, class_names, eval_set, directory,
                    model_name=model_name, version=version, quantization=quantization,
                    arch=config.model.arch, calibration_images=calibration,
                )
                for quantization in quantize
            ]
        return [
            export_onnx(
                model, class_names, eval_set, directory, model_name=model_name, version=version, arch=config.model.arch
            )
        ]

    artefacts = _export_versions(export_dir, model_name, version, formats, export_format)
    if "saved_model" in formats:
        write_text_atomically(export_dir / SERVING_CONFIG_FILE, serving_config_text(export_dir))
        write_text_atomically(export_dir / BATCHING_FILE, batching_parameters_text())
    report = ExportReport(
        run_dir=run_dir,
        model_name=model_name,
        version=version,
        export_dir=export_dir,
        num_eval_examples=eval_set.size,
        keras_test_accuracy=eval_set.keras_accuracy,
        artefacts=artefacts,
        path=export_dir / REPORT_FILE,
    )
    write_text_atomically(report.path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _export_versions(
    export_dir: Path,
    model_name: str,
    version: int,
    formats: Sequence[str],
    export_format: Callable[[str, Path], list[ArtefactReport]],
) -> list[ArtefactReport]:
    """`export_format(format, staging_dir)` for every format, then each staging directory
    renamed to its version; after a failure anywhere, every staging directory is deleted."""
    parents = {fmt: _version_parent(export_dir, fmt, model_name) for fmt in formats}
    staging: dict[str, Path] = {}
    artefacts: list[ArtefactReport] = []
    try:
        for fmt, parent in parents.items():
            parent.mkdir(parents=True, exist_ok=True)
            staging[fmt] = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent))
        for fmt in formats:
            artefacts += export_format(fmt, staging[fmt])
        for fmt, parent in parents.items():
            _publish(staging[fmt], parent / str(version))
    finally:
        for directory in staging.values():
            shutil.rmtree(directory, ignore_errors=True)  # already gone where published
    published = []
    for artefact in artefacts:
        final_path = parents[artefact.format] / str(version) / artefact.path.relative_to(staging[artefact.format])
        published.append(ArtefactReport(**{**asdict(artefact), "path": final_path}))
    return published


def _checked_choices(values: Sequence[str], allowed: tuple[str, ...], kind: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    for value in values:
        if value not in allowed:
            raise UserError(f"unknown export {kind} {value!r}; choose from {', '.join(allowed)}")
    if not values:
        raise UserError(f"no export {kind} given; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))  # in the given order, each once


def _checked_model_name(model_name: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(model_name) or model_name in FORMAT_TREES.values():
        raise UserError(
            f"model name {model_name!r} must be letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit) and not {' or '.join(FORMAT_TREES.values())}"
        )
    return model_name


# ----------------------------------------------------------------------------- versions


def _version_parent(export_dir: Path, fmt: str, model_name: str) -> Path:
    return export_dir / FORMAT_TREES[fmt] / model_name if fmt in FORMAT_TREES else export_dir / model_name


def _existing_versions(export_dir: Path, model_name: str) -> set[int]:
    """Numeric version directories of `model_name` in every format's tree."""
    versions = set()
    for fmt in FORMATS:
        parent = _version_parent(export_dir, fmt, model_name)
        if parent.is_dir():
            versions |= {int(child.name) for child in parent.iterdir() if child.name.isdigit()}
    return versions


def _choose_version(export_dir: Path, model_name: str, version: int | None) -> int:
    existing = _existing_versions(export_dir, model_name)
    if version is None:
        return max(existing, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"export version must be a positive integer, got {version!r}")
    if version in existing:
        raise UserError(
            f"version {version} of {model_name} already exists in {export_dir}; exports never overwrite "
            f"(next free version: {max(existing) + 1})"
        )
    return version


def _publish(staging: Path, final: Path) -> None:
    """Rename a finished staging directory to its version; never onto an existing one."""
    if final.exists():
        raise UserError(f"{final} appeared while exporting (another export running?); export again for the next version")
    staging.rename(final)
    logger.info("wrote %s", final)
