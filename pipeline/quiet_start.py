"""Importing TensorFlow without its C++ start-up chatter (for the command-line entry points)."""

from __future__ import annotations

import os


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe for GPUs with stderr closed at the file-descriptor level.

    TF's C++ runtime prints absl/oneDNN/CUDA start-up lines that TF_CPP_MIN_LOG_LEVEL does
    not silence; a one-line error from us must stay one line. Python-level errors raised
    here still surface, since stderr is restored before they propagate.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        tf.get_logger().handlers.clear()  # log through our handler only, not twice
    finally:
        os.dup2(saved_stderr, 2)
        os.close(devnull)
        os.close(saved_stderr)
