#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian's Fashion-MNIST package, Slurm and munge (the
# test suite starts a one-node cluster of its own) and the project's virtual environment
# (.venv, from requirements.txt). Cheap when done.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# Where the package puts its files (pipeline/data.py reads them there); the variable only lets
# tests/scripts/test_bootstrap.py point this script elsewhere.
fashion_mnist_dir="${CONVNETS_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
fashion_mnist_missing() { [ ! -f "$fashion_mnist_dir/train-images-idx3-ubyte.gz" ]; }
missing_reason="there is no apt-get here"
if fashion_mnist_missing && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi
  echo "[bootstrap] installing Debian package dataset-fashion-mnist" >&2
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist; } \
    >/tmp/convnets-apt.log 2>&1 || true
  missing_reason="apt-get could not install dataset-fashion-mnist (see /tmp/convnets-apt.log)"
fi
if fashion_mnist_missing; then
  # CI fails here rather than go green with the real-data tests skipped.
  if [ "${CI:-}" = "true" ]; then
    echo "[bootstrap] error: CI=true and Fashion-MNIST is not in $fashion_mnist_dir: $missing_reason" >&2
    exit 1
  fi
  echo "[bootstrap] warning: Fashion-MNIST is not in $fashion_mnist_dir: $missing_reason;" \
       "the pipeline will fall back to TFDS and the real-data tests skip" >&2
fi

# Slurm's daemons for tests/pipeline/test_slurm.py, which skips, naming this log, where they
# cannot be installed; training itself never needs them. The variable is for test_bootstrap.py.
slurm_sbin_dir="${CONVNETS_SLURM_SBIN_DIR:-/usr/sbin}"
slurm_missing() { [ ! -x "$slurm_sbin_dir/slurmctld" ] || [ ! -x "$slurm_sbin_dir/munged" ]; }
if slurm_missing && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi
  echo "[bootstrap] installing Debian packages slurm-wlm and munge (log: /tmp/convnets-apt-slurm.log)" >&2
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq slurm-wlm munge; } \
    >/tmp/convnets-apt-slurm.log 2>&1 || true
  if slurm_missing; then
    echo "[bootstrap] warning: apt-get could not install slurm-wlm and munge (see /tmp/convnets-apt-slurm.log);" \
         "the Slurm cluster test skips" >&2
  fi
fi

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
stamp=.venv/.requirements.sha256
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "[bootstrap] creating .venv with $("$python_bin" --version) and installing requirements.txt (a few minutes)" >&2
  "$python_bin" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  .venv/bin/python -c "import tensorflow, keras, tensorflow_datasets, keras_cv, ai_edge_litert" \
    || { echo "[bootstrap] error: the virtual environment does not import; see pip's output above" >&2; exit 1; }
  echo "$wanted" > "$stamp"
fi
