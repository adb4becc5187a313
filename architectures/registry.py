"""The zoo's one registry: every variant of every family, by name.

A family is a features function plus a spec table (timm's `register_model`, torchvision's
`_api.py`): `@register_family("resnet", SPECS, default_size=224, options=...)` registers every
row of `SPECS`, and a duplicate name fails at import. Each family lists its options as
`Option`s, with their types and ranges; `check()` applies them, and the rules on input size,
for `build()` and for the training config alike, so each rule has one message.

    names("resnext*")          -> ["resnext50_32x4d", "resnext101_32x8d"]
    info("resnet50").family    -> "resnet"
    build("resnet50", num_classes=10, input_shape=(64, 64, 3))  -> keras.Model
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import keras

from architectures import pretrained
from architectures.errors import UserError
from architectures.weights import load_weights

logger = logging.getLogger(__name__)

POOLING_CHOICES = (None, "avg", "max")
WEIGHT_SUFFIXES = (".h5", ".keras")  # ".weights.h5" ends in ".h5" too
IMAGE_CHANNELS = 3  # of the default input; any other count is the caller's input_shape


@dataclass(frozen=True)
class Option:
    """One family option: its type, default and allowed values, declared once and checked by
    `check()`. A None default also accepts None ("the reference's choice")."""

    name: str
    type: type  # bool, int, float (ints accepted) or str
    default: Any
    help: str
    choices: tuple[Any, ...] = ()  # the allowed values, when they are a list
    at_least: float | None = None  # inclusive lower bound of a number
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound

    @classmethod
    def rate(cls, name: str, default: float, help: str) -> Option:
        """A dropout-like rate in [0, 1): 1 would drop everything."""
        return cls(name, float, default, help, at_least=0.0, below=1.0)

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.default is None
        if self.choices:
            return type(value) is self.type and value in self.choices
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return False
        elif type(value) is not self.type:  # type(), not isinstance(): True is not an int here
            return False
        return not (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def describe(self) -> str:
        """The allowed values in words: "a number in [0, 1)", "one of 8, 16, 32"."""
        if self.choices:
            allowed = "one of " + ", ".join(repr(choice) for choice in self.choices)
        elif self.type is bool:
            allowed = "True or False"
        else:
            allowed = {int: "an integer", float: "a number", str: "a string"}[self.type]
            inclusive = self.at_least is not None
            low = self.at_least if inclusive else self.above
            if low is not None and self.below is not None:
                allowed += f" in {'[' if inclusive else '('}{low:g}, {self.below:g})"
            elif low is not None:
                allowed += f" {'>=' if inclusive else '>'} {low:g}"
            elif self.below is not None:
                allowed += f" < {self.below:g}"
        return f"None or {allowed}" if self.default is None else allowed


@dataclass(frozen=True)
class Family:
    """One architecture family: how to build its features and, optionally, its own head."""

    name: str
    features: Callable[..., Any]  # (spec, images, [small_input], **options) -> tensor or {"features": ...}
    head: Callable[..., Any] | None  # (spec, feature_maps, *, num_classes, classifier_activation, options)
    default_size: int  # input side at which the paper's figures (params, MACs) hold
    min_size: int  # smallest input side the default stem accepts
    small_input_min_size: int | None  # smallest side with the small-input stem; None: no such stem
    reference: str  # paper and reference implementation
    options: dict[str, Option]
    weights_options: Callable[[str], dict[str, Any]] | None = None  # weights file -> options it needs


@dataclass(frozen=True)
class VariantInfo:
    """What the registry knows about one variant, for tables and the training pipeline."""

    name: str
    family: str
    spec: Any
    default_size: int
    min_size: int
    small_input_min_size: int | None  # None: the family is built for small images, no other stem
    reference: str
    options: dict[str, Option]

    @property
    def default_input_shape(self) -> tuple[int, int, int]:
        return (self.default_size, self.default_size, IMAGE_CHANNELS)


_FAMILIES: dict[str, Family] = {}
_VARIANT_FAMILY: dict[str, str] = {}
_VARIANT_SPEC: dict[str, Any] = {}


def register_family(
    name: str,
    specs: dict[str, Any],
    *,
    default_size: int,
    reference: str,
    options: tuple[Option, ...] = (),
    min_size: int = 32,
    small_input_min_size: int | None = None,
    head: Callable[..., Any] | None = None,
    weights_options: Callable[[str], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `features` for every row of `specs`; duplicates fail at import.

    `small_input_min_size` marks a family with a stem for 28-32 px images, which `build`
    selects with small_input=True; a family built for small images has none, and leaves it None.
    """

    def decorator(features: Callable[..., Any]) -> Callable[..., Any]:
        if name in _FAMILIES:
            raise RuntimeError(f"architecture family {name!r} is registered twice")
        declared = {option.name: option for option in options}
        small_stem = ["small_input"] if small_input_min_size is not None else []
        _check_signature(name, features, [*declared, *small_stem])
        duplicates = sorted(set(specs) & set(_VARIANT_FAMILY))
        if duplicates:
            raise RuntimeError(f"family {name!r} registers names taken by another family: {duplicates}")
        _FAMILIES[name] = Family(
            name=name,
            features=features,
            head=head,
            default_size=default_size,
            min_size=min_size,
            small_input_min_size=small_input_min_size,
            reference=reference,
            options=declared,
            weights_options=weights_options,
        )
        for variant, spec in specs.items():
            _VARIANT_FAMILY[variant] = name
            _VARIANT_SPEC[variant] = spec
        return features

    return decorator


def _check_signature(family: str, features: Callable[..., Any], expected: list[str]) -> None:
    """The features function takes exactly the declared options (and small_input where the family
    has that stem) as keyword-only parameters without defaults: the declaration holds the defaults."""
    parameters = [
        parameter
        for parameter in inspect.signature(features).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    if sorted(parameter.name for parameter in parameters) != sorted(expected):
        raise RuntimeError(
            f"family {family!r}: {features.__name__} takes keyword options "
            f"{sorted(parameter.name for parameter in parameters)}, but {sorted(expected)} are declared"
        )
    defaulted = [parameter.name for parameter in parameters if parameter.default is not inspect.Parameter.empty]
    if defaulted:
        raise RuntimeError(f"family {family!r}: defaults of {defaulted} belong in the Option declarations")


def _natural_key(text: str) -> list[Any]:
    """'resnet101' after 'resnet50': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def names(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell wildcard, in natural order."""
    return sorted(fnmatch.filter(_VARIANT_FAMILY, pattern), key=_natural_key)


def families() -> list[str]:
    """Registered family names, in registration order."""
    return list(_FAMILIES)


def _unknown_name_error(name: str) -> UserError:
    close = difflib.get_close_matches(str(name), list(_VARIANT_FAMILY), n=3, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UserError(f"unknown architecture {name!r}{hint} (list them with 'run_pipeline.py models')")


def info(name: str) -> VariantInfo:
    """Family, spec, default input size, reference and options of one variant."""
    if name not in _VARIANT_FAMILY:
        raise _unknown_name_error(name)
    family = _FAMILIES[_VARIANT_FAMILY[name]]
    return VariantInfo(
        name=name,
        family=family.name,
        spec=_VARIANT_SPEC[name],
        default_size=family.default_size,
        min_size=family.min_size,
        small_input_min_size=family.small_input_min_size,
        reference=family.reference,
        options=dict(family.options),
    )


def check(
    name: str, options: Mapping[str, Any], *, image_side: int | None = None, small_input: bool = False
) -> dict[str, Any]:
    """Every option given, filled with the declared defaults, after the registry's rules: the
    variant exists, small_input is a bool, each option is declared and allowed, and an input side
    (None: not known yet) is large enough for the chosen stem. Raises `UserError`."""
    variant = info(name)
    if not isinstance(small_input, bool):
        raise UserError(f"small_input must be True or False, got {small_input!r}")
    unknown = sorted(set(options) - set(variant.options))
    if unknown:
        allowed = f"its options are: {', '.join(sorted(variant.options))}" if variant.options else "it has none"
        raise UserError(f"{name} has no option {unknown[0]!r}; {allowed}")
    for option_name, value in options.items():
        option = variant.options[option_name]
        if not option.allows(value):
            raise UserError(f"{name} option {option_name} must be {option.describe()}, got {value!r}")
    if image_side is not None:
        _check_image_side(variant, image_side, small_input)
    return {**{option.name: option.default for option in variant.options.values()}, **options}


def _check_image_side(variant: VariantInfo, side: int, small_input: bool) -> None:
    small_stem = variant.small_input_min_size
    has_small_stem = small_stem is not None
    smallest = small_stem if small_input and has_small_stem else variant.min_size
    if side < smallest:
        hint = f", or {small_stem}x{small_stem} with small_input=True" if has_small_stem and not small_input else ""
        raise UserError(
            f"input side {side} is too small for {variant.name}: "
            f"it needs at least {smallest}x{smallest} pixels{hint}"
        )


def _resolve_input_shape(variant: VariantInfo, input_shape: Any) -> tuple[int, int, int]:
    if input_shape is None:
        return variant.default_input_shape
    try:
        shape = tuple(int(side) for side in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input_shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input_shape must be (height, width, channels) of positive sizes, got {input_shape!r}")
    return shape


def _check_weights_path(weights: Any) -> str:
    path = os.fspath(weights)
    if not path.endswith(WEIGHT_SUFFIXES):
        raise UserError(f"weights must be None, 'imagenet' or a .h5, .weights.h5 or .keras file, got {path!r}")
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    return path


def default_head(
    spec: Any,
    feature_maps: dict[str, Any],
    *,
    num_classes: int,
    classifier_activation: str | None,
    options: dict[str, Any],
) -> Any:
    """Global average pooling and one dense layer, named as keras.applications names them."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feature_maps["features"])
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)


def _pool(features: Any, pooling: str | None) -> Any:
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    return features


def build(
    name: str,
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    classifier_activation: str | None = "softmax",
    small_input: bool = False,
    **options: Any,
) -> keras.Model:
    """A functional `keras.Model` for one registered variant.

    input_shape=None means the family's default size with 3 channels. With
    include_top=False the model ends at the features, pooled when `pooling` is
    "avg" or "max". `weights` is None, "imagenet" (keras.applications' file, see
    `pretrained`) or a file: a keras.applications legacy `.h5`, or the project's own
    `.weights.h5` / `.keras`. A keras.applications file brings its own preprocessing
    (raw 0..255 pixels in) and, when its head does not fit (`_notop`, another
    num_classes), leaves the head newly initialised. small_input=True picks the family's
    stem for 28-32 px images; a family built for such images already has it. Options a
    family does not declare, and inputs too small for it, raise `UserError` (`check`)
    before anything is built.
    """
    variant = info(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pooling not in POOLING_CHOICES:
        raise UserError(f"pooling must be one of None, 'avg', 'max'; got {pooling!r}")
    shape = _resolve_input_shape(variant, input_shape)
    if weights == pretrained.IMAGENET:
        weights = pretrained.imagenet_file(
            name, include_top=include_top and num_classes == pretrained.IMAGENET_CLASSES, options=options,
            image_side=min(shape[:2]),
        )  # fmt: skip
    weights_path = None if weights is None else _check_weights_path(weights)
    family = _FAMILIES[variant.family]
    if weights_path is not None and family.weights_options is not None:
        options = _merge_weights_options(variant, options, family.weights_options(weights_path))
    resolved = check(name, options, image_side=min(shape[:2]), small_input=small_input)

    images = keras.Input(shape=shape, name="images")
    x = images
    preprocessing = pretrained.preprocessing_for(name, weights_path)
    if preprocessing is not None:
        x = pretrained.ImageNetPreprocessing(preprocessing, name=pretrained.PREPROCESSING_LAYER)(images)
    stem = {"small_input": small_input} if variant.small_input_min_size is not None else {}
    feature_maps = family.features(variant.spec, x, **stem, **resolved)
    if not isinstance(feature_maps, dict):
        feature_maps = {"features": feature_maps}
    if include_top:
        head = family.head or default_head
        outputs = head(
            variant.spec,
            feature_maps,
            num_classes=num_classes,
            classifier_activation=classifier_activation,
            options=resolved,
        )
    else:
        outputs = _pool(feature_maps["features"], pooling)
    model = keras.Model(images, outputs, name=name)
    if weights_path is not None:
        backbone_layers = {layer.name for layer in keras.Model(images, feature_maps["features"]).layers}
        head_layers = frozenset(layer.name for layer in model.layers if layer.name not in backbone_layers)
        new_layers = load_weights(model, weights_path, head_layers=head_layers)
        loaded = [layer.name for layer in model.layers if layer.weights and layer.name not in new_layers]
        logger.info(
            "%s: loaded %d layers (%s ... %s) from %s; new: %s", name, len(loaded), loaded[0], loaded[-1],
            weights_path, ", ".join(new_layers) or "none",
        )  # fmt: skip
    return model


def backbone_layer_names(name: str, **build_arguments: Any) -> frozenset[str]:
    """The layers of `build(name, include_top=False, **build_arguments)`: those a pretrained
    backbone fills. A full build's other layers are its head."""
    return frozenset(layer.name for layer in build(name, include_top=False, **build_arguments).layers)


def _merge_weights_options(
    variant: VariantInfo, given: dict[str, Any], required: dict[str, Any]
) -> dict[str, Any]:
    """Options a weights file was trained with (e.g. ResNet's v1 layout) win over defaults,
    and contradict an explicit choice only with a clear error."""
    for option, value in required.items():
        if option in given and given[option] != value:
            raise UserError(
                f"these {variant.name} weights were trained with {option}={value!r}, "
                f"but {option}={given[option]!r} was asked for"
            )
    return {**given, **required}
