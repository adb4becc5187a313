"""Run configuration: one frozen dataclass per section inside `RunConfig`.

Precedence: defaults < YAML (`--config`) < command-line flags < `--set section.key=value`.
Every key is checked: an unknown one fails naming the nearest valid key. `validate()` checks
the cross-field rules before any heavy work, and the resolved config is the first file
written to a run directory (`config.yaml`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from architectures.errors import UserError
from pipeline.budget import parse_duration

OPTIMIZERS = ("sgd", "adamw")
LR_DECAYS = ("cosine", "linear")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
CACHE_MODES = ("auto", "memory", "disk", "none")  # data.cache; pipeline/data/cache.py says what each does


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist | tfds:NAME | folder:PATH or DIR | idx:DIR
    data_dir: str | None = None  # TFDS data_dir; None: TFDS's default (~/tensorflow_datasets)
    download: bool = True  # let TFDS download when no prepared copy exists
    image_size: int | None = None  # square side fed to the model, pixels; None: the source's own
    channels: int | None = None  # 1 or 3; None: the source's own (folders: 3)
    validation_fraction: float = 0.1  # of train, held out when the source has no validation split
    max_train_examples: int | None = None  # cap for quick runs; None: all
    max_eval_examples: int | None = None  # cap on validation and test; None: all
    cache: str = "auto"  # decoded images between epochs: auto | memory | disk | none (pipeline/data/cache.py)
    cache_dir: str | None = None  # folder indexes, disk caches; None: $XDG_CACHE_HOME/convnets or ~/.cache/convnets
    shuffle_buffer: int = 20_000  # examples
    deterministic: bool = False  # fixed tf.data order and deterministic TF ops (slower); evaluation always is


@dataclass(frozen=True)
class AugmentConfig:
    random_crop_padding: int = 2  # pixels of zero padding before a random crop back to size; 0: off
    horizontal_flip: bool = True
    random_resized_crop: bool = False  # Inception-style crop (scale 0.08-1) and resize
    rand_augment: bool = False
    rand_augment_magnitude: float = 0.5  # Keras RandAugment factor, 0-1
    mixup_alpha: float = 0.0  # 0: off
    cutmix_alpha: float = 0.0  # 0: off
    random_erasing: float = 0.0  # probability per image; 0: off
    # Also report test accuracy on probabilities averaged with the mirrored image's (on by default,
    # as horizontal_flip is: a model trained on mirrored images may be asked about them); exports stay single-pass.
    test_time_flip: bool = True


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "airbench94_w16"  # any name from `run_pipeline.py models`; BENCHMARKS.md table 4b chose this default
    small_input: bool | None = None  # None: on when the image side is below the family's min size
    options: dict[str, Any] = field(default_factory=dict)  # family options, e.g. {output_stride: 16}
    weights: str | None = None  # "imagenet" (keras.applications' file and preprocessing) or a file (.h5, .weights.h5, .keras)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # ignored under time_budget, whose plan sets the epochs
    time_budget: str | None = None  # wall time for the whole job, e.g. 90s, 10m, 2h (pipeline/budget.py); None: train.epochs
    batch_size: int = 128  # global batch, all replicas together
    steps_per_epoch: int | None = None  # cap on an epoch's steps (large datasets, quick trials); None: the whole split
    optimizer: str = "sgd"  # sgd (momentum, Nesterov) | adamw
    learning_rate: float = 0.1  # peak, for the global batch above
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4  # decoupled, on kernels only (not biases, norms, scales)
    warmup_epochs: float = 0.5  # linear warmup, then decay to zero
    lr_decay: str = "cosine"  # cosine | linear (to zero at the last step)
    label_smoothing: float = 0.1
    gradient_clip_norm: float | None = None  # global norm; None: no clipping
    ema_decay: float | None = None  # e.g. 0.999: evaluate and export an EMA of the weights
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16 (auto: see pipeline/train.py)
    jit_compile: bool = False  # XLA
    steps_per_execution: int = 10  # train steps per tf.function call (fewer Python round trips)
    batch_norm_momentum: float = 0.9  # torchvision's 0.1 in Keras terms; Keras's 0.99 lags in short runs
    backup_every_steps: int = 200  # atomic backup for resume after preemption; 0: epoch ends only
    freeze_backbone_epochs: int = 0  # first epochs train only the new head, backbone BatchNorm in inference mode; 0: none
    fine_tune_learning_rate: float = 0.01  # peak for the whole network after the frozen epochs (own warmup, cosine decay)


@dataclass(frozen=True)
class DistributeConfig:
    strategy: str = "auto"  # auto | default | one_device | mirrored | multi_worker (TF_CONFIG)
    cpu_replicas: int = 2  # logical CPU devices for "mirrored" on a machine without GPUs
    sync_batch_norm: bool = True  # batch statistics over all replicas, so N replicas train like one device
    connect_timeout_seconds: float = 300.0  # multi-worker: wait this long for every other worker, then name the missing


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: str = "runs"  # run directories live here
    run_name: str | None = None  # None: "<dataset>-<arch>"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)

    @property
    def run_dir(self) -> Path:
        name = self.run_name or f"{_slug(self.data.dataset)}-{self.model.arch}"
        return Path(self.output_dir) / name


def _slug(text: str) -> str:
    """'folder:/data/my photos' -> 'folder-my_photos'; '/data/my photos' -> 'my_photos'."""
    kind, separator, rest = text.partition(":")
    if not separator:  # a name, or a bare directory: its last part (not '._photos' for ./photos)
        kind = Path(text).name or text
    tail = Path(rest).name if rest else ""
    slug = f"{kind}-{tail}" if tail else kind
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in slug)


# ----------------------------------------------------------------------------- loading


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {config_field.name: config_field for config_field in dataclasses.fields(cls)}


def _unknown_key(key: str, allowed: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
    return UserError(f"unknown config key '{where}{key}'{hint}")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check (and for strings from the command line, parse) a value against a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' expects an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise UserError(f"config key '{key}' expects an integer, got {value!r}") from None
        if isinstance(number, (int, float)) and float(number).is_integer():
            return int(number)
        raise UserError(f"config key '{key}' expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}' expects a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _type_name(hint: Any) -> str:
    return " or ".join(
        "none" if option is type(None) else getattr(option, "__name__", str(option))
        for option in typing.get_args(hint)
    )


def _apply(config: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """A copy of a config dataclass with nested `updates`; unknown keys fail."""
    if not isinstance(updates, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {updates!r}")
    fields = _fields(type(config))
    hints = typing.get_type_hints(type(config))  # the annotations are strings (`from __future__ import annotations`)
    changes = {}
    for key, value in updates.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), prefix)
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _convert(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(config, **changes)


def _dotted_to_nested(dotted_key: str, value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(dotted_key.split(".")):
        nested = {part: nested}
    return nested


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """'train.epochs=5' -> ('train.epochs', 5); the value is read as YAML."""
    key, separator, raw_value = assignment.partition("=")
    if not separator or not key.strip():
        raise UserError(f"--set expects key=value (e.g. train.epochs=5), got {assignment!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return key.strip(), value


def load_config(
    yaml_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> RunConfig:
    """Defaults < YAML file < `overrides` (dotted keys from flags) < `assignments` (`key=value`)."""
    config = RunConfig()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserError(f"config file not found: {yaml_path}")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config file {yaml_path} is not valid YAML: {str(error).splitlines()[0]}") from None
        config = _apply(config, content)
    for dotted_key, value in (overrides or {}).items():
        if value is not None:
            config = _apply(config, _dotted_to_nested(dotted_key, value))
    for assignment in assignments or []:
        config = _apply(config, _dotted_to_nested(*parse_assignment(assignment)))
    return config


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_yaml_file(path: str | Path) -> RunConfig:
    """Read a run's saved `config.yaml` back (strict, like any other config)."""
    return _apply(RunConfig(), yaml.safe_load(Path(path).read_text()) or {})


# ----------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(config: RunConfig) -> None:
    """Single-field ranges and cross-field rules, checked before any heavy work."""
    data, train, augment = config.data, config.train, config.augment
    _require(data.image_size is None or data.image_size >= 8, f"data.image_size must be >= 8, got {data.image_size}")
    _require(data.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {data.channels}")
    _require(0.0 <= data.validation_fraction < 1.0, f"data.validation_fraction must be in [0, 1), got {data.validation_fraction}")
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(data, key)
        _require(value is None or value >= 1, f"data.{key} must be >= 1, got {value}")
    _require(data.shuffle_buffer >= 1, f"data.shuffle_buffer must be >= 1, got {data.shuffle_buffer}")
    _require(data.cache in CACHE_MODES, f"data.cache must be one of {', '.join(CACHE_MODES)}; got {data.cache!r}")
    _require(train.epochs >= 1, f"train.epochs must be >= 1, got {train.epochs}")
    _require(train.steps_per_epoch is None or train.steps_per_epoch >= 1, f"train.steps_per_epoch must be >= 1 or none, got {train.steps_per_epoch}")
    _require(train.batch_size >= 1, f"train.batch_size must be >= 1, got {train.batch_size}")
    _require(train.optimizer in OPTIMIZERS, f"train.optimizer must be one of {', '.join(OPTIMIZERS)}; got {train.optimizer!r}")
    _require(train.learning_rate > 0, f"train.learning_rate must be > 0, got {train.learning_rate}")
    _require(0.0 <= train.momentum < 1.0, f"train.momentum must be in [0, 1), got {train.momentum}")
    _require(train.weight_decay >= 0, f"train.weight_decay must be >= 0, got {train.weight_decay}")
    _require(0 <= train.warmup_epochs < train.epochs, f"train.warmup_epochs must be in [0, epochs={train.epochs}), got {train.warmup_epochs}")
    _require(train.lr_decay in LR_DECAYS, f"train.lr_decay must be one of {', '.join(LR_DECAYS)}; got {train.lr_decay!r}")
    if train.time_budget is not None:
        parse_duration(train.time_budget)
    _require(0.0 <= train.label_smoothing < 1.0, f"train.label_smoothing must be in [0, 1), got {train.label_smoothing}")
    _require(train.gradient_clip_norm is None or train.gradient_clip_norm > 0, f"train.gradient_clip_norm must be > 0 or none, got {train.gradient_clip_norm}")
    _require(train.ema_decay is None or 0.0 < train.ema_decay < 1.0, f"train.ema_decay must be in (0, 1) or none, got {train.ema_decay}")
    _require(train.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}; got {train.precision!r}")
    _require(0.0 <= train.batch_norm_momentum < 1.0, f"train.batch_norm_momentum must be in [0, 1), got {train.batch_norm_momentum}")
    _require(train.steps_per_execution >= 1, f"train.steps_per_execution must be >= 1, got {train.steps_per_execution}")
    _require(train.backup_every_steps >= 0, f"train.backup_every_steps must be >= 0, got {train.backup_every_steps}")
    _require(0 <= train.freeze_backbone_epochs <= train.epochs, f"train.freeze_backbone_epochs must be in [0, epochs={train.epochs}], got {train.freeze_backbone_epochs}")
    _require(train.fine_tune_learning_rate > 0, f"train.fine_tune_learning_rate must be > 0, got {train.fine_tune_learning_rate}")
    _require(
        not train.freeze_backbone_epochs or config.model.weights is not None,
        "train.freeze_backbone_epochs needs pretrained weights: set model.weights (e.g. imagenet)",
    )
    _require(
        not (train.freeze_backbone_epochs and train.time_budget),
        "train.time_budget does not plan two-phase fine-tuning yet: give train.epochs instead",
    )
    _require(augment.random_crop_padding >= 0, f"augment.random_crop_padding must be >= 0, got {augment.random_crop_padding}")
    _require(0.0 <= augment.rand_augment_magnitude <= 1.0, f"augment.rand_augment_magnitude must be in [0, 1], got {augment.rand_augment_magnitude}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        _require(getattr(augment, key) >= 0, f"augment.{key} must be >= 0, got {getattr(augment, key)}")
    _require(0.0 <= augment.random_erasing <= 1.0, f"augment.random_erasing must be in [0, 1], got {augment.random_erasing}")
    _require(config.distribute.cpu_replicas >= 1, f"distribute.cpu_replicas must be >= 1, got {config.distribute.cpu_replicas}")
    _require(
        config.distribute.connect_timeout_seconds > 0,
        f"distribute.connect_timeout_seconds must be > 0, got {config.distribute.connect_timeout_seconds}",
    )
    _require(
        config.distribute.strategy in STRATEGIES,
        f"distribute.strategy must be one of {', '.join(STRATEGIES)}; got {config.distribute.strategy!r}",
    )
    _validate_dataset(data.dataset)
    _validate_architecture(config)


def _validate_dataset(dataset: str) -> None:
    """The rule lives with the data sources; imported here, as pipeline.data imports this module."""
    from pipeline.data import parse_dataset

    parse_dataset(dataset)


def _validate_architecture(config: RunConfig) -> None:
    """The architecture exists, takes these options, and accepts this input size: the registry's
    rules and messages, the ones `architectures.build` applies."""
    import architectures
    from architectures import pretrained

    side = config.data.image_size  # None: the dataset's own, checked when the model is built
    small_input = bool(config.model.small_input) if side is None else use_small_input(config.model, side)
    architectures.check(config.model.arch, config.model.options, image_side=side, small_input=small_input)
    if config.model.weights == pretrained.IMAGENET:
        pretrained.check_imagenet(config.model.arch, config.model.options)
        _require(config.data.channels in (None, 3), f"ImageNet weights take RGB images: data.channels must be 3, got {config.data.channels}")


def use_small_input(model: ModelConfig, image_side: int) -> bool:
    """The explicit choice, else the small-image stem when the image is below the family's minimum."""
    import architectures

    if model.small_input is not None:
        return model.small_input
    return image_side < architectures.info(model.arch).min_size
