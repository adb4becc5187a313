"""scripts/bootstrap.sh when Fashion-MNIST or Slurm is missing: a copy of the script in a stand-in
repository whose virtual environment is up to date, with an apt-get that fails first on PATH
and the dataset and Slurm directories moved into tmp_path. Under CI=true a missing dataset fails
the run; a missing Slurm is only a warning."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def bootstrap(tmp_path):
    """Run the copied script with `CI` set as given; returns (result, apt-get calls)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "bootstrap.sh", repo / "scripts" / "bootstrap.sh")
    (repo / "requirements.txt").write_text("numpy\n")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    (repo / ".venv" / ".requirements.sha256").write_text(hashlib.sha256(b"numpy\n").hexdigest() + "\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt_calls = tmp_path / "apt-get.calls"
    for name, body in {"apt-get": f'echo "$*" >> {apt_calls}\nexit 100', "sudo": 'exec "$@"'}.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)

    slurm_sbin = tmp_path / "sbin"  # Slurm installed, unless a test empties it
    slurm_sbin.mkdir()
    for name in ("slurmctld", "munged"):
        (slurm_sbin / name).write_text("#!/bin/sh\n")
        (slurm_sbin / name).chmod(0o755)

    def run(ci: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
        environment = {key: value for key, value in os.environ.items() if key != "CI"}
        environment.update(PATH=f"{fake_bin}:{os.environ['PATH']}", CONVNETS_FASHION_MNIST_DIR=str(tmp_path / "fashion-mnist"),
                           CONVNETS_SLURM_SBIN_DIR=str(slurm_sbin))
        if ci is not None:
            environment["CI"] = ci
        result = subprocess.run(
            ["bash", str(repo / "scripts" / "bootstrap.sh")], env=environment, capture_output=True, text=True, timeout=60
        )
        return result, apt_calls.read_text().splitlines() if apt_calls.exists() else []

    return run


def test_under_ci_a_dataset_apt_cannot_install_fails_the_run_in_one_line(bootstrap):
    result, apt_calls = bootstrap(ci="true")
    assert result.returncode == 1
    assert apt_calls == ["update -qq"]
    lines = result.stderr.strip().splitlines()
    assert lines[:-1] == ["[bootstrap] installing Debian package dataset-fashion-mnist"]
    assert lines[-1].startswith("[bootstrap] error: CI=true and Fashion-MNIST is not in ")
    assert "apt-get could not install dataset-fashion-mnist" in lines[-1]


def test_outside_ci_a_missing_dataset_is_a_warning(bootstrap):
    result, apt_calls = bootstrap(ci=None)
    assert result.returncode == 0, result.stderr
    assert apt_calls == ["update -qq"]
    assert "[bootstrap] warning: Fashion-MNIST is not in " in result.stderr
    assert "real-data tests skip" in result.stderr


def test_an_installed_dataset_needs_no_apt_even_under_ci(bootstrap, tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    result, apt_calls = bootstrap(ci="true")
    assert result.returncode == 0, result.stderr
    assert apt_calls == [] and result.stderr == ""


def test_slurm_that_apt_cannot_install_is_a_warning_even_under_ci(bootstrap, tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "sbin" / "slurmctld").unlink()
    result, apt_calls = bootstrap(ci="true")
    assert result.returncode == 0, result.stderr
    assert apt_calls == ["update -qq"]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("[bootstrap] installing Debian packages slurm-wlm and munge")
    assert lines[-1].startswith("[bootstrap] warning: apt-get could not install slurm-wlm and munge")
    assert lines[-1].endswith("the Slurm cluster test skips")
