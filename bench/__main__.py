"""python -m bench [--only NAMES] [--quick] [--output-dir DIR]: run the benchmark tables.

Writes BENCHMARKS.md (repository root) and bench/results.json, or both into --output-dir. Each
table's results replace that table's entry in the existing results.json (so `--only` merges),
and both files are rewritten atomically after every table, so an interrupted run keeps the
tables it finished. --quick runs every table on tiny settings, only into an --output-dir.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.quiet_start import import_tensorflow_quietly

import_tensorflow_quietly()

from architectures.errors import UserError  # noqa: E402  (after TensorFlow's quiet import)
from bench.common import REPO_ROOT, BenchContext, load_results, machine, save_results  # noqa: E402
from pipeline.files import write_text_atomically  # noqa: E402
from bench.report import render  # noqa: E402

logger = logging.getLogger("bench")

TABLE_MODULES = {  # table name -> module, in run order (exports uses time_to_accuracy's run)
    "zoo": "bench.zoo",
    "vs_keras": "bench.vs_keras",
    "pipeline": "bench.input_pipeline",
    "data_scale": "bench.data_scale",
    "time_to_accuracy": "bench.time_to_accuracy",
    "budget_sweep": "bench.budget_sweep",
    "float32_step": "bench.float32_step",
    "exports": "bench.exports",
    "gpu": "bench.gpu",
    "finetune": "bench.finetune",
    "preemption": "bench.preemption",
}
FULL_CACHE_DIR = Path("/tmp/convnets-bench")  # generated data (the JPEG folder); safe to delete
FULL_RUNS_DIR = REPO_ROOT / "runs" / "bench"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated tables: {','.join(TABLE_MODULES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the tables are produced")
    parser.add_argument("--output-dir", type=Path, help="write BENCHMARKS.md and results.json here (required with --quick)")
    return parser.parse_args(argv)


def _selected_tables(only: str | None) -> list[str]:
    if only is None:
        return list(TABLE_MODULES)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in TABLE_MODULES]
    if unknown or not names:
        raise UserError(f"unknown table {unknown[0] if unknown else only!r}; choose from {', '.join(TABLE_MODULES)}")
    return [name for name in TABLE_MODULES if name in names]


def run_benchmarks(argv: list[str]) -> int:
    args = _parse(argv)
    tables = _selected_tables(args.only)
    if args.quick and args.output_dir is None:
        raise UserError("--quick needs --output-dir: quick numbers never replace the real BENCHMARKS.md")
    if args.output_dir is not None:
        document, results_path = args.output_dir / "BENCHMARKS.md", args.output_dir / "results.json"
        runs_dir = cache_dir = args.output_dir / "work"
    else:
        document, results_path = REPO_ROOT / "BENCHMARKS.md", REPO_ROOT / "bench" / "results.json"
        runs_dir, cache_dir = FULL_RUNS_DIR, FULL_CACHE_DIR
    results = load_results(results_path)
    command = shlex.join(["python", "-m", "bench", *argv])
    machine_facts = machine()
    logger.info("benchmarks %s on %s", ", ".join(tables), machine_facts)
    for name in tables:
        context = BenchContext(quick=args.quick, runs_dir=runs_dir, cache_dir=cache_dir, results=results)
        logger.info("table %s: starting", name)
        started = time.perf_counter()
        table = importlib.import_module(TABLE_MODULES[name]).run(context)
        table.update(
            measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            seconds=round(time.perf_counter() - started, 1),
            command=command,
            quick=args.quick,
            machine=machine_facts,
        )
        results["tables"][name] = table
        results["tables"] = {known: results["tables"][known] for known in TABLE_MODULES if known in results["tables"]}
        save_results(results_path, results)
        write_text_atomically(document, render(results))
        logger.info("table %s: %s in %.0f s; wrote %s", name, table["status"], table["seconds"], document)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return run_benchmarks(list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
