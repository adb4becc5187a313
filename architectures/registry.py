"""The zoo's one registry: every variant of every family, by name.

A family is a features function plus a spec table (timm's `register_model`, torchvision's
`_api.py`): `@register_family("resnet", SPECS, default_size=224)` registers every row of
`SPECS`, and a duplicate name fails at import. The features function's keyword-only
parameters *are* the family's options, so `build()` knows what a family accepts without a
second list that could drift.

    names("resnext*")          -> ["resnext50_32x4d", "resnext101_32x8d"]
    info("resnet50").family    -> "resnet"
    build("resnet50", num_classes=10, input_shape=(64, 64, 3))  -> keras.Model
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import keras

from architectures.errors import UserError

# The options every family must accept, and what they mean.
SHARED_OPTIONS = ("small_input",)  # small_input: a stem for 28-32 px images (no early downsampling)
POOLING_CHOICES = (None, "avg", "max")
WEIGHT_SUFFIXES = (".h5", ".keras")  # ".weights.h5" ends in ".h5" too


@dataclass(frozen=True)
class Family:
    """One architecture family: how to build its features and, optionally, its own head."""

    name: str
    features: Callable[..., Any]  # (spec, images, **options) -> tensor or {"features": tensor, ...}
    head: Callable[..., Any] | None  # (spec, feature_maps, *, num_classes, classifier_activation, options)
    default_size: int  # input side at which the paper's figures (params, MACs) hold
    min_size: int  # smallest input side the default stem accepts
    small_input_min_size: int  # smallest input side with small_input=True
    reference: str  # paper and reference implementation
    options: dict[str, Any] = field(default_factory=dict)  # option name -> default
    weights_options: Callable[[str], dict[str, Any]] | None = None  # weights file -> options it needs


@dataclass(frozen=True)
class VariantInfo:
    """What the registry knows about one variant, for tables and the training pipeline."""

    name: str
    family: str
    spec: Any
    default_size: int
    min_size: int
    small_input_min_size: int
    reference: str
    options: dict[str, Any]


_FAMILIES: dict[str, Family] = {}
_VARIANT_FAMILY: dict[str, str] = {}
_VARIANT_SPEC: dict[str, Any] = {}


def register_family(
    name: str,
    specs: dict[str, Any],
    *,
    default_size: int,
    reference: str,
    min_size: int = 32,
    small_input_min_size: int = 8,
    head: Callable[..., Any] | None = None,
    weights_options: Callable[[str], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `features` for every row of `specs`; duplicates fail at import."""

    def decorator(features: Callable[..., Any]) -> Callable[..., Any]:
        if name in _FAMILIES:
            raise RuntimeError(f"architecture family {name!r} is registered twice")
        options = _declared_options(features)
        missing = [option for option in SHARED_OPTIONS if option not in options]
        if missing:
            raise RuntimeError(f"family {name!r} must accept the shared options {missing}")
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
            options=options,
            weights_options=weights_options,
        )
        for variant, spec in specs.items():
            _VARIANT_FAMILY[variant] = name
            _VARIANT_SPEC[variant] = spec
        return features

    return decorator


def _declared_options(features: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of a features function, with their defaults."""
    options = {}
    for parameter in inspect.signature(features).parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            if parameter.default is inspect.Parameter.empty:
                raise RuntimeError(f"option {parameter.name!r} of {features.__name__} needs a default")
            options[parameter.name] = parameter.default
    return options


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


def _resolve_options(variant: VariantInfo, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(variant.options))
    if unknown:
        allowed = ", ".join(sorted(variant.options))
        raise UserError(
            f"{variant.name} ({variant.family}) has no option {unknown[0]!r}; its options are: {allowed}"
        )
    resolved = {**variant.options, **given}
    if not isinstance(resolved["small_input"], bool):
        raise UserError(f"small_input must be True or False, got {resolved['small_input']!r}")
    return resolved


def _resolve_input_shape(
    variant: VariantInfo, input_shape: Any, small_input: bool
) -> tuple[int, int, int]:
    if input_shape is None:
        return (variant.default_size, variant.default_size, 3)
    try:
        shape = tuple(int(side) for side in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input_shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input_shape must be (height, width, channels) of positive sizes, got {input_shape!r}")
    smallest = variant.small_input_min_size if small_input else variant.min_size
    if min(shape[:2]) < smallest:
        hint = "" if small_input else "; pass small_input=True for 28-32 px images"
        raise UserError(
            f"{variant.name} needs inputs of at least {smallest}x{smallest} pixels, "
            f"got {shape[0]}x{shape[1]}{hint}"
        )
    return shape


def _check_weights_path(weights: Any) -> str:
    path = os.fspath(weights)
    if not path.endswith(WEIGHT_SUFFIXES):
        raise UserError(f"weights must be None or a .h5, .weights.h5 or .keras file, got {path!r}")
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
    **options: Any,
) -> keras.Model:
    """A functional `keras.Model` for one registered variant.

    input_shape=None means the family's default size with 3 channels. With
    include_top=False the model ends at the features, pooled when `pooling` is
    "avg" or "max". `weights` is None or a file: a keras.applications legacy `.h5`,
    or the project's own `.weights.h5` / `.keras`. Options a family does not declare,
    and inputs too small for it, raise `UserError` before anything is built.
    """
    variant = info(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pooling not in POOLING_CHOICES:
        raise UserError(f"pooling must be one of None, 'avg', 'max'; got {pooling!r}")
    weights_path = None if weights is None else _check_weights_path(weights)
    family = _FAMILIES[variant.family]
    if weights_path is not None and family.weights_options is not None:
        options = _merge_weights_options(variant, options, family.weights_options(weights_path))
    resolved = _resolve_options(variant, options)
    shape = _resolve_input_shape(variant, input_shape, resolved["small_input"])

    images = keras.Input(shape=shape, name="images")
    feature_maps = family.features(variant.spec, images, **resolved)
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
        from architectures.weights import load_weights  # imported late: h5py is only needed here

        load_weights(model, weights_path)
    return model


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
