"""The command line's contract for bad input: one line on stderr, exit code 2, no traceback,
nothing written; the `models` table; and the `train` command line `launch` gives its workers."""

import sys

import pytest

import run_pipeline
from tests.cli import run_cli


def assert_one_line_user_error(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "--arch", "resnet5"], "unknown architecture 'resnet5'; close matches:"),
        (["train", "--set", "train.epoch=3"], "did you mean 'epochs'"),
        (["train", "--epochs", "many"], "argument --epochs: invalid int value"),
        (["train", "--arch", "resnet18", "--image-size", "16", "--set", "model.small_input=false"], "too small for resnet18"),
        (["train", "--dataset", "folder:/no/such/folder"], "/no/such/folder"),
        (["train", "--config", "no_such_recipe.yaml"], "config file not found"),
        (["train", "--strategy", "mirrored", "--batch-size", "63"], "not divisible by the 2 replicas"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["evaluate", "--run-dir", "no/such/run"], "no trained model at no/such/run"),
        (["predict", "--run-dir", "no/such/run", "image.png"], "no trained model at no/such/run"),
        (["models", "nothing_like_this*"], "no architecture matches"),
        (["export", "--run-dir", "no/such/run"], "run directory not found: no/such/run"),
        (["predict", "--server", "http://127.0.0.1:9", "image.png"], "--server needs --model-name"),
        (["predict", "image.png"], "one of the arguments --run-dir --server is required"),
        (["evaluate", "--run-dir", "no/such/run", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["launch", "--workers=0"], "--workers must be >= 1, got 0"),
        (["launch", "--workers=2", "--set", "distribute.strategy=mirrored"], "launch sets --strategy multi_worker itself"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(arguments, message, tmp_path):
    result = run_cli(*arguments, "--output-dir", str(tmp_path / "runs")) if arguments[0] == "train" else run_cli(*arguments, cwd=tmp_path)
    assert_one_line_user_error(result, message)
    assert not (tmp_path / "runs").exists()


def test_models_table_lists_parameters_and_gmacs():
    result = run_cli("models", "resnet1*")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert list(rows) == ["resnet18", "resnet101", "resnet110", "resnet152"]
    assert rows["resnet18"][1:] == ["resnet", "11,689,512", "1.814", "224x224x3"]
    assert rows["resnet110"][1] == "resnet_cifar"


def parse(*argv: str):
    return run_pipeline._build_parser().parse_args(list(argv))


@pytest.mark.parametrize("workers", [["--workers", "2"], ["--workers=2"]], ids=["--workers 2", "--workers=2"])
def test_launch_gives_each_worker_the_train_command_line_it_was_given(workers):
    launch = parse(
        "--verbose", "launch", *workers, "--config=configs/smoke.yaml", "--epochs", "3", "--run-name=-odd",
        "--set", "train.learning_rate=0.05", "--set=data.max_train_examples=64", "--resume", "--export",
    )
    worker = parse(*run_pipeline._worker_arguments(launch))
    assert launch.workers == 2 and worker.command == "train"
    assert {**vars(worker), "command": "launch", "workers": 2} == vars(launch)


def test_launch_called_through_main_reads_its_argv_not_sys_argv(monkeypatch, tmp_path):
    """Workers are not started here; test_distributed.py starts real ones through the command line."""
    started = {}

    def record(workers, cli_arguments, run_dir, cli_path):
        started.update(workers=workers, cli_arguments=cli_arguments, run_dir=run_dir)
        return 0

    monkeypatch.setattr("pipeline.launch.launch", record)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert run_pipeline.main(["launch", "--workers=2", "--epochs", "1", "--output-dir", str(tmp_path)]) == 0
    assert started == {
        "workers": 2,
        "cli_arguments": ["train", "--epochs=1", f"--output-dir={tmp_path}"],
        "run_dir": tmp_path / "fashion_mnist-airbench94_w16",
    }
