#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian's Fashion-MNIST package and the
# project's virtual environment (.venv, from requirements.txt). Cheap when done.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

fashion_mnist_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$fashion_mnist_dir/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi
  echo "[bootstrap] installing Debian package dataset-fashion-mnist" >&2
  if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist; } >/tmp/convnets-apt.log 2>&1; then
    echo "[bootstrap] warning: apt-get could not install dataset-fashion-mnist (see /tmp/convnets-apt.log);" \
         "the pipeline will fall back to TFDS" >&2
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
