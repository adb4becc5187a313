"""What every table shares: the run context, the machine's description, timing, a training probe, files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.files import write_text_atomically

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchContext:
    """What a table's `run` gets besides its own settings."""

    quick: bool  # tiny settings: checks that the tables are produced, measures nothing worth reading
    runs_dir: Path  # training runs made by the benchmarks (table 4; table 5 exports one of them)
    cache_dir: Path  # generated data reused between invocations (table 3's JPEG folder)
    results: dict[str, Any]  # the tables measured so far, this invocation's included


# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPUs and package versions, as each table records them."""
    import keras
    import numpy
    import tensorflow as tf

    cpu_model, cpu_flags = "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not cpu_flags:
                cpu_flags = set(value.split())
    memory_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    gpus = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return {
        "cpu": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory_kib / 2**20, 1),
        "native_bfloat16": bool({"avx512_bf16", "amx_bf16"} & cpu_flags),
        "cpu_flags": sorted({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"} & cpu_flags),
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


# ----------------------------------------------------------------------------- timing


def seconds_of(call: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call; the call must return only once its work is done (`.numpy()`)."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def alternate(rates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each rate measured `repeats` times, interleaved A B A B ..., so drift hits every one alike."""
    samples: dict[str, list[float]] = {name: [] for name in rates}
    for _ in range(repeats):
        for name, rate in rates.items():
            samples[name].append(rate())
    return samples


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the ratios of samples taken next to each other (A_i / B_i)."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to `name` inside, and back afterwards.

    Layers take the policy when they are built, and training under a mixed policy must not leak
    into the next table's float32 measurements.
    """
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def forward_function(model: Any) -> Callable[[Any], Any]:
    """A `tf.function` inference pass: (batch, H, W, C) float32 -> the model's outputs, training=False."""
    import tensorflow as tf

    @tf.function
    def forward(images):
        return model(images, training=False)

    return forward


def release_models() -> None:
    """Free the last model's graphs and memory before the next one is built."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


# ----------------------------------------------------------------------------- training probe


class TrainingProbe:
    """One model in the pipeline's `Trainer`, run one epoch at a time; an epoch gives its images/s.

    An epoch is `calls_per_epoch` calls of `train_config.steps_per_execution` steps each. The
    Trainer times every call but an epoch's first (which traces the step the first time, and
    waits for the input to start), so with `calls_per_epoch >= 2` every epoch is one sample.
    Input: in-memory synthetic batches by default, or any `train_dataset_fn` of the Trainer's
    form (batches as `pipeline.data.train_pipeline` gives them).
    """

    def __init__(
        self,
        *,
        arch: str,
        image_shape: tuple[int, int, int],
        num_classes: int,
        train_config: Any,  # pipeline.config.TrainConfig
        calls_per_epoch: int = 2,
        strategy: Any = None,  # tf.distribute.Strategy; None: the default strategy
    ):
        import numpy as np
        import tensorflow as tf

        from pipeline.config import ModelConfig
        from pipeline.data import array_split, evaluation_images
        from pipeline.train import Trainer, build_training_model, make_optimizer, resolve_precision

        self.strategy = strategy or tf.distribute.get_strategy()
        self.precision = resolve_precision(train_config.precision)
        self.image_shape, self.num_classes = image_shape, num_classes
        self.global_batch_size = train_config.batch_size
        steps_per_epoch = calls_per_epoch * train_config.steps_per_execution
        channels = image_shape[-1]
        with precision_policy(self.precision), self.strategy.scope():
            model = build_training_model(
                ModelConfig(arch=arch), image_shape=image_shape, num_classes=num_classes,
                channel_mean=[127.5] * channels, channel_std=[64.0] * channels,
                batch_norm_momentum=train_config.batch_norm_momentum,
                synchronized_batch_norm=self.strategy.num_replicas_in_sync > 1,
            )  # fmt: skip
            optimizer = make_optimizer(train_config, steps_per_epoch)  # the recipe's schedule, as in a run
            optimizer.build(model.trainable_variables)
        # epochs=1: each `fit` call on a fresh LoopState runs exactly one epoch.
        self.trainer = Trainer(
            model=model, optimizer=optimizer, strategy=self.strategy,
            config=dataclasses.replace(train_config, epochs=1), num_classes=num_classes,
            steps_per_epoch=steps_per_epoch, global_batch_size=self.global_batch_size, show_progress=False,
        )  # fmt: skip
        # One batch to validate on after each epoch (outside the timed calls), as fit requires.
        self.validation = evaluation_images(
            array_split(np.zeros((self.global_batch_size, *image_shape), np.uint8), np.zeros(self.global_batch_size, np.int64), None),
            in_memory=False,
        )

    def synthetic_batches(self, epoch: int, skip_batches: int, input_context: Any) -> Any:
        """The same in-memory per-replica batch forever: a step that never waits for input."""
        import tensorflow as tf

        batch = input_context.get_per_replica_batch_size(self.global_batch_size)
        images = tf.random.stateless_uniform((batch, *self.image_shape), seed=[epoch, 0], maxval=255.0)
        labels = tf.random.stateless_uniform((batch,), seed=[epoch, 1], maxval=self.num_classes, dtype=tf.int32)
        return tf.data.Dataset.from_tensors((images, tf.one_hot(labels, self.num_classes))).repeat()

    def epoch_rate(self, train_dataset_fn: Callable[[int, int, Any], Any] | None = None) -> float:
        """Train one epoch; its images/s over the timed calls."""
        from pipeline.train import LoopState

        with precision_policy(self.precision):
            state = self.trainer.fit(
                state=LoopState(),
                train_dataset_fn=train_dataset_fn or self.synthetic_batches,
                validation=self.validation,
                on_backup=lambda state: None,
                on_epoch_end=lambda record, is_best: None,
            )
        return state.history[-1].images_per_second


# ----------------------------------------------------------------------------- files


def load_results(path: Path) -> dict[str, Any]:
    """`results.json` as saved, or an empty one: {"tables": {table name: table results}}."""
    if not path.is_file():
        return {"tables": {}}
    results = json.loads(path.read_text())
    results.setdefault("tables", {})
    return results


def save_results(path: Path, results: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(results, indent=2, sort_keys=False) + "\n")
