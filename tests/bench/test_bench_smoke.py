"""`python -m bench --quick` produces every table, well formed: BENCHMARKS.md with every section
and results.json with each table's keys. No assertion here is about speed: benchmarks are
measured, not unit-tested."""

import json
import re
import subprocess
import sys

import pytest

from bench.report import HEADINGS
from tests.cli import REPO_ROOT, cli_env

PROVENANCE_KEYS = {"status", "measured_at", "seconds", "command", "quick", "machine"}
MACHINE_KEYS = {"cpu", "logical_cores", "usable_cores", "ram_gib", "gpus", "tensorflow", "keras", "numpy"}
MEASURED_KEYS = {
    "zoo": {"settings", "rows"},
    "vs_keras": {"settings", "rows"},
    "pipeline": {"settings", "rows", "training"},
    "data_scale": {"settings", "rows", "ready"},
    "time_to_accuracy": {"settings", "rows", "reference"},
    "budget_sweep": {"settings", "anchor", "sweeps"},
    "float32_step": {"settings", "rows"},
    "exports": {"run_dir", "test_images", "keras_test_accuracy", "rows"},
    "gpu": {"settings", "devices", "rows"},
    "finetune": {"settings", "pretrain", "rows", "tflite"},
    "preemption": {"settings", "rows", "median_seconds_to_exit", "max_steps_lost"},
}


def run_bench(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *arguments], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("bench")
    result = run_bench("--quick", "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def markdown_tables(document: str) -> list[list[str]]:
    """Each run of consecutive `|` lines in the document."""
    tables, current = [], []
    for line in document.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.slow
def test_quick_run_writes_every_section_with_well_formed_tables(quick_output):
    document = (quick_output / "BENCHMARKS.md").read_text()
    positions = [document.index(f"\n## {heading}\n") for heading in HEADINGS.values()]
    assert positions == sorted(positions)
    assert "\n## Findings\n" in document
    assert document.count("Quick settings (`--quick`)") == len(HEADINGS)
    tables = markdown_tables(document)
    assert len(tables) >= 9  # zoo, vs keras, two pipeline tables, two data-scale tables, accuracy and reference, exports, findings
    for table in tables:
        columns = {line.count("|") for line in table}
        assert len(columns) == 1, table  # every row as wide as its header
        assert all(re.fullmatch(r":?-{3,}:?", cell.strip()) for cell in table[1].strip("|").split("|")), table


@pytest.mark.slow
def test_quick_run_records_every_table_with_its_provenance(quick_output):
    results = json.loads((quick_output / "results.json").read_text())
    assert list(results["tables"]) == list(HEADINGS)
    for name, table in results["tables"].items():
        assert PROVENANCE_KEYS <= set(table), name
        assert MACHINE_KEYS <= set(table["machine"]), name
        assert table["quick"] is True and table["command"].startswith("python -m bench --quick"), name
        if table["status"] == "measured":
            assert MEASURED_KEYS[name] <= set(table), name
        else:
            assert name == "gpu" and table["status"] == "not measured (no GPU)", (name, table["status"])


@pytest.mark.slow
def test_quick_rows_hold_the_measured_figures(quick_output):
    tables = json.loads((quick_output / "results.json").read_text())["tables"]
    zoo = {row["name"]: row for row in tables["zoo"]["rows"]}
    assert zoo["resnet20"]["parameters"] == 269_722  # He et al. 2016, 10 classes
    assert zoo["resnet20"]["training_images_per_second"] > 0 and zoo["mobilenet_v2"]["training_images_per_second"] is None
    assert all(row["inference_images_per_second"] > 0 for row in zoo.values())
    for row in tables["vs_keras"]["rows"]:
        assert row["train_ratio"] > 0 and row["inference_ratio"] > 0
    loaders = {(row["source"], row["loader"]) for row in tables["pipeline"]["rows"]}
    assert {("Fashion-MNIST", "ours (data.epoch_pipelines)"), ("JPEG folder", "keras image_dataset_from_directory"),
            ("JPEG folder", "tf.io.decode_jpeg only"), ("JPEG folder", "tf.io.decode_jpeg + resize")} <= loaders  # fmt: skip
    (streamed,) = [row for row in tables["pipeline"]["rows"] if row["source"] == "JPEG folder" and row["caching"] == "streamed"
                   and row["loader"].startswith("ours") and row["augmentation"] == "off"]  # fmt: skip
    assert all(streamed[key] > 0 for key in ("steady_vs_keras", "steady_vs_bare_decode", "steady_vs_bare_resize"))
    assert {row["caching"] for row in tables["pipeline"]["rows"] if row["source"] == "JPEG folder"} == {"streamed", "in memory"}
    scale = tables["data_scale"]
    assert [(row["images"], row["cache"]) for row in scale["rows"]] == [(100, "none"), (100, "disk"), (200, "none")]
    assert scale["rows"][0]["files_checked"] == 100 and all(row["peak_rss_mb"] > 0 for row in scale["rows"])
    assert scale["ready"][0]["resumed_skipped_batches"] > 0 and scale["ready"][0]["fresh_first_batch_seconds"] > 0
    assert scale["ready"][0]["caches_dropped"] is False  # a quick run leaves the machine's caches alone
    recipes = {row["recipe"]: row for row in tables["time_to_accuracy"]["rows"]}
    assert list(recipes) == ["default", "keras_convnet"]
    for row in recipes.values():
        assert row["returncode"] == 0, row.get("error")
        assert 0.0 <= row["test_accuracy"] <= 1.0 and len(row["curve"]) == row["epochs"] == 1
        assert [run["seed"] for run in row["runs"]] == [0, 1]  # one run per seed
        # The row is one real run, the lower of the two by accuracy: its accuracy and its times.
        median_run = min(row["runs"], key=lambda run: run["test_accuracy"])
        assert row["median_seed"] == median_run["seed"]
        assert (row["test_accuracy"], row["wall_seconds"]) == (median_run["test_accuracy"], median_run["wall_seconds"])
    check = tables["time_to_accuracy"]["budget_check"]
    assert check["returncode"] == 0 and "--time-budget 30s" in check["command"]
    assert check["plan"]["budget_seconds"] == 30 and check["plan"]["epochs"] == check["epochs"] >= 1
    sweep = tables["budget_sweep"]
    assert sweep["anchor"]["returncode"] == 0 and sweep["anchor"]["wall_seconds"] > 0
    (candidate,) = sweep["sweeps"].values()  # the default architecture only, one budget, in a quick run
    (point,) = candidate["runs"]
    assert (candidate["arch"], candidate["precision"]) == (sweep["settings"]["default_arch"], "auto")
    assert point["returncode"] == 0 and "--time-budget 30s" in point["command"] and "train.precision=auto" in point["command"]
    assert f"--arch {candidate['arch']}" in point["command"]
    reached = point["test_accuracy"] >= sweep["settings"]["goal_accuracy"]
    assert candidate["seconds_to_goal"] == (point["wall_seconds"] if reached else None)
    steps = {row["variant"]: row for row in tables["float32_step"]["rows"]}
    assert steps["float32, AVX2 kernels"]["environment"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"} and steps["float32, AVX2 kernels"]["vs_baseline"] == 1.0
    assert all(row["images_per_second"] > 0 and row["train"]["precision"] == "float32" for row in steps.values())
    seed_1_run = recipes["default"]["runs"][1]
    assert "--seed 1" in seed_1_run["command"] and seed_1_run["run_dir"] != recipes["default"]["run_dir"]
    exports = {(row["format"], row["quantization"]) for row in tables["exports"]["rows"]}
    assert exports == {("saved_model", "none"), ("tflite", "none"), ("tflite", "float16"), ("tflite", "dynamic"), ("tflite", "int8"),
                       ("onnx", "none")}  # fmt: skip
    rgb = tables["exports"]["rgb_int8"]
    assert rgb["status"] == "measured" and rgb["arch"] == "mobilenet_v2"
    int8 = {row["quantization"]: row for row in rgb["rows"]}["int8"]
    assert (int8["input_dtype"], int8["output_dtype"]) == ("int8", "int8") and 0.0 <= int8["top1_agreement"] <= 1.0
    preemption = tables["preemption"]
    assert preemption["max_steps_lost"] <= 1 and all(row["exit_codes"] == [143, 143] for row in preemption["rows"])


@pytest.mark.slow
def test_only_replaces_the_named_tables_and_keeps_the_others(quick_output):
    before = json.loads((quick_output / "results.json").read_text())["tables"]
    result = run_bench("--quick", "--output-dir", str(quick_output), "--only", "gpu")
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((quick_output / "results.json").read_text())["tables"]
    assert list(after) == list(HEADINGS)
    assert {name: after[name] for name in after if name != "gpu"} == {name: before[name] for name in before if name != "gpu"}
    assert after["gpu"]["command"].endswith("--only gpu")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--quick"], "--quick needs --output-dir"),
        (["--only", "zoo,speed", "--output-dir", "unused"], "unknown table 'speed'; choose from zoo, vs_keras"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(arguments, message, tmp_path):
    arguments = [str(tmp_path / argument) if argument == "unused" else argument for argument in arguments]
    result = run_bench(*arguments)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "unused").exists()
