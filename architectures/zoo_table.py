"""The `models` table: every variant's family, parameters, GMACs and default input size.

Rows are printed as each model is built (the largest take a few seconds each on a CPU), so
the table streams instead of leaving the terminal silent for a minute.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import keras
import numpy as np

from architectures import info, names
from architectures.errors import UserError
from architectures.flops import count_macs
from architectures.registry import build

COLUMNS = ("name", "family", "params", "GMACs", "input")
WIDTHS = (20, 12, 13, 8, 11)


@dataclass(frozen=True)
class ZooRow:
    name: str
    family: str
    trainable_parameters: int
    gmacs: float  # multiply-accumulates at the default input, in billions
    default_input: str


def zoo_row(name: str, num_classes: int = 1000) -> ZooRow:
    """Build one variant at its default input and measure it."""
    variant = info(name)
    model = build(name, num_classes=num_classes)
    row = ZooRow(
        name=name,
        family=variant.family,
        trainable_parameters=sum(int(np.prod(weight.shape)) for weight in model.trainable_weights),
        gmacs=count_macs(model) / 1e9,
        default_input="x".join(str(side) for side in model.input_shape[1:]),
    )
    keras.backend.clear_session()
    return row


def _format(values: tuple[str, ...]) -> str:
    return "  ".join(
        value.ljust(width) if index < 2 else value.rjust(width)
        for index, (value, width) in enumerate(zip(values, WIDTHS))
    )


def print_zoo_table(pattern: str = "*", num_classes: int = 1000) -> list[ZooRow]:
    """Print the table for variants matching `pattern`, one row as soon as it is measured."""
    selected = names(pattern)
    if not selected:
        raise UserError(f"no architecture matches {pattern!r} (try 'resnet*' or '*')")
    print(_format(COLUMNS))
    print(_format(tuple("-" * width for width in WIDTHS)))
    rows = []
    for name in selected:
        row = zoo_row(name, num_classes)
        rows.append(row)
        print(
            _format((row.name, row.family, f"{row.trainable_parameters:,}", f"{row.gmacs:.3f}", row.default_input)),
            flush=True,
        )
    print(f"{len(rows)} variants; GMACs = multiply-accumulates at the default input", file=sys.stderr)
    return rows
