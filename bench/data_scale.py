"""Table 3b: does memory stay flat as an image folder grows, and how soon is a second run ready?

Generated JPEG folders (`folder_sizes` images at `file_side` px, 10 classes; the smaller ones
are hard links into the largest) are trained as a user would: `run_pipeline.py train` with
mobilenet_v2 at `image_size` px, batch `batch_size`, `steps` steps, evaluation capped at
`eval_images`, one process per row, its peak RSS from the kernel (`wait4`). Each row is one run.
The cold run on a folder checks every file and writes the index (files/s stated); the
"ready" probe is a fresh process on the now unchanged folder: seconds from the process's start
(interpreter start included) to the first training batch, index loaded and channel statistics
read. Before it the kernel's page, dentry and inode caches are dropped where the bench may
(root), as after a reboot: every file's metadata, the index and Python's own modules come from
disk. The resume probe follows with warm caches, for an epoch resumed `resume_fraction` of the
way through.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchContext

logger = logging.getLogger(__name__)

CLASSES = 10
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ScaleSettings:
    folder_sizes: tuple[int, ...]  # images; the last is generated, the others link into it
    disk_cache_sizes: tuple[int, ...]  # folders also trained with data.cache: disk
    file_side: int
    image_size: int
    arch: str
    batch_size: int
    steps: int
    eval_images: int
    resume_fraction: float
    cold_repeats: int  # fresh probes per folder, each after dropping the caches; the median one is reported


FULL = ScaleSettings(
    folder_sizes=(200, 50_000, 100_000), disk_cache_sizes=(200, 50_000), file_side=256, image_size=224,
    arch="mobilenet_v2", batch_size=32, steps=20, eval_images=64, resume_fraction=0.9, cold_repeats=3,
)  # fmt: skip
QUICK = ScaleSettings(
    folder_sizes=(100, 200), disk_cache_sizes=(100,), file_side=48, image_size=32, arch="resnet20", batch_size=8,
    steps=2, eval_images=16, resume_fraction=0.5, cold_repeats=1,
)  # fmt: skip


def run(context: BenchContext) -> dict[str, Any]:
    settings = QUICK if context.quick else FULL
    largest = generated_folder(context.cache_dir, max(settings.folder_sizes), settings.file_side)
    folders = {size: linked_subset(largest, size) for size in settings.folder_sizes}
    index_dir = context.cache_dir / "data_scale_index"
    shutil.rmtree(index_dir, ignore_errors=True)  # each folder's first run is a cold one, checking every file
    rows = []
    for size, folder in folders.items():
        for mode in ("none", "disk") if size in settings.disk_cache_sizes else ("none",):
            rows.append(_training_row(folder, size, mode, settings, context, index_dir))
            logger.info("data_scale: %s", rows[-1])
    # A quick run (the test suite's) leaves the machine's caches alone.
    ready = [_ready_row(folder, size, settings, index_dir, drop_caches=not context.quick)
             for size, folder in folders.items() if size != min(folders)]  # fmt: skip
    for row in ready:
        logger.info("data_scale ready: %s", row)
    smallest_rss = {row["cache"]: row["peak_rss_mb"] for row in rows if row["images"] == min(folders)}
    for row in rows:
        row["rss_vs_smallest"] = round(row["peak_rss_mb"] / smallest_rss[row["cache"]], 3)
    return {
        "status": "measured",
        "settings": {key: getattr(settings, key) for key in ScaleSettings.__dataclass_fields__},
        "rows": rows,
        "ready": ready,
    }


# ----------------------------------------------------------------------------- the folders


def generated_folder(cache_dir: Path, count: int, side: int) -> Path:
    """`count` JPEG "photos" (smooth random colour fields with noise), `count // 10` per class, written once."""
    folder = cache_dir / f"scale_jpeg_{count}x{side}px"
    if (folder / "complete").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_class = count // CLASSES
    jobs = [(folder / f"class{label}", label, start, min(start + 1000, per_class), side)
            for label in range(CLASSES) for start in range(0, per_class, 1000)]  # fmt: skip
    with concurrent.futures.ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpegs, jobs))
    (folder / "complete").write_text(f"{count}\n")
    logger.info("wrote %d JPEGs to %s in %.0f s", count, folder, time.perf_counter() - started)
    return folder


def _write_jpegs(job: tuple[Path, int, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    directory, label, start, end, side = job
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(start, end):
        rng = np.random.default_rng([label, index])
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (side, side, 3)) + 6 * label
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(directory / f"{index:06d}.jpg", quality=JPEG_QUALITY)


def linked_subset(folder: Path, count: int) -> Path:
    """A folder of the first `count // 10` files of each class of `folder`, as hard links (no copies)."""
    if count == int((folder / "complete").read_text()):
        return folder
    subset = folder.with_name(f"{folder.name}_first{count}")
    if (subset / "complete").is_file():
        return subset
    for class_dir in sorted(path for path in folder.iterdir() if path.is_dir()):
        (subset / class_dir.name).mkdir(parents=True, exist_ok=True)
        for source in sorted(class_dir.iterdir())[: count // CLASSES]:
            target = subset / class_dir.name / source.name
            if not target.exists():
                os.link(source, target)
    (subset / "complete").write_text(f"{count}\n")
    return subset


# ----------------------------------------------------------------------------- measurements


def _training_row(folder: Path, size: int, mode: str, settings: ScaleSettings, context: BenchContext, index_dir: Path) -> dict:
    command = [
        sys.executable, str(REPO_ROOT / "run_pipeline.py"), "train", "--dataset", str(folder),
        "--image-size", str(settings.image_size), "--arch", settings.arch, "--batch-size", str(settings.batch_size),
        "--epochs", "1", "--set", f"train.steps_per_epoch={settings.steps}", "--set", f"data.cache={mode}",
        "--set", f"data.max_eval_examples={settings.eval_images}", "--set", f"data.cache_dir={index_dir}",
        "--output-dir", str(context.runs_dir / "data_scale"), "--run-name", f"{size}-{mode}", "--overwrite",
    ]  # fmt: skip
    seconds, peak_kb, output = _run_measured(command)
    checked = re.search(r"checked (\d+) files in ([\d.]+) s \((\d+) files/s\)", output)
    return {
        "images": size,
        "cache": mode,
        "peak_rss_mb": round(peak_kb / 1024),
        "wall_seconds": round(seconds, 1),
        "files_checked": int(checked.group(1)) if checked else 0,
        "check_files_per_second": int(checked.group(3)) if checked else None,
        "images_per_second": _last_float(r"training [\d.]+ s at ([\d.]+) images/s", output),
        "cache_choice": _cache_line(output),
    }


def _ready_row(folder: Path, size: int, settings: ScaleSettings, index_dir: Path, drop_caches: bool) -> dict:
    """Fresh processes on the indexed folder: seconds to the first batch, from cold caches (the
    median of `cold_repeats` probes) and resumed.

    Right after the training rows' writes the same cold probe took from 6 to 16 s, so one probe
    says more about the disk's backlog than about the index.
    """
    fresh_runs = []
    for _ in range(settings.cold_repeats):
        caches_dropped = drop_caches and _drop_kernel_caches()
        fresh_runs.append(_probe(folder, settings, index_dir, resume=False))
    fresh = sorted(fresh_runs, key=lambda run: run["first_batch_seconds"])[(len(fresh_runs) - 1) // 2]
    resumed = _probe(folder, settings, index_dir, resume=True)
    return {"images": size, "caches_dropped": caches_dropped, **{f"fresh_{key}": value for key, value in fresh.items()},
            "fresh_first_batch_runs": [run["first_batch_seconds"] for run in fresh_runs],
            **{f"resumed_{key}": value for key, value in resumed.items()}}  # fmt: skip


def _drop_kernel_caches() -> bool:
    """Write back dirty pages, then drop the page cache, dentries and inodes; False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _probe(folder: Path, settings: ScaleSettings, index_dir: Path, resume: bool) -> dict:
    command = [sys.executable, "-m", "bench.data_scale", "--probe", str(folder), str(settings.image_size),
               str(settings.batch_size), str(index_dir), str(settings.resume_fraction if resume else 0.0)]  # fmt: skip
    _, peak_kb, output = _run_measured(command)
    result = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    return {**result, "peak_rss_mb": round(peak_kb / 1024)}


# Run a command as the grandchild of a small Python process and print its peak RSS last. The
# kernel's peak of a child counts the memory it had before `exec`: a child forked straight from
# this process (TensorFlow loaded) would report at least this process's RSS.
_PEAK_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"peak_rss_kb={usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, stdout + stderr) of one command in its own process."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_LAUNCHER, *command], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    peak_kb = int(re.findall(r"^peak_rss_kb=(\d+)$", result.stdout, re.MULTILINE)[-1])
    return seconds, peak_kb, result.stdout


def _last_float(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text)
    return float(found[-1]) if found else None


def _cache_line(text: str) -> str:
    found = re.findall(r"data cache: (.*)", text)
    return found[-1].strip() if found else ""


# ----------------------------------------------------------------------------- the probe process


def _process_age_seconds() -> float:
    """Seconds since this process started (the kernel's start time, so interpreter start-up counts)."""
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def probe(folder: str, image_size: int, batch_size: int, index_dir: str, resume_fraction: float) -> dict:
    """In a fresh process: load the folder's splits and statistics, then take one training batch."""
    from pipeline import data
    from pipeline.config import DataConfig

    config = DataConfig(dataset=folder, image_size=image_size, cache="none", cache_dir=index_dir)
    splits = data.load_splits(config, seed=0)
    data.training_statistics(splits, index_dir)
    loaded = _process_age_seconds()
    make = data.epoch_pipelines(splits.splits["train"], config, global_batch_size=batch_size, seed=0, augment=None,
                                num_classes=len(splits.class_names), in_memory=False)  # fmt: skip
    skip = int(splits.num_examples["train"] // batch_size * resume_fraction)
    next(iter(make(0, skip, None)))
    return {"index_loaded_seconds": round(loaded, 2), "first_batch_seconds": round(_process_age_seconds(), 2), "skipped_batches": skip}


if __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    folder_arg, size_arg, batch_arg, index_arg, fraction_arg = sys.argv[2:7]
    print(json.dumps(probe(folder_arg, int(size_arg), int(batch_arg), index_arg, float(fraction_arg))))
