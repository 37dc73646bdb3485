"""One exception type for every configuration mistake a person can make.

Raised at the edge (building a model, an optimizer, a simulation or a sweep), before
anything is traced or compiled, with a message that names the field and the fix.
`Range` and `check_ranges` state the values an experiment's config fields may take.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem}. Fix: {fix}")


def require(condition: bool, field: str, problem: str, fix: str) -> None:
    """Raise `ConfigError(field, problem, fix)` unless `condition` holds."""
    if not condition:
        raise ConfigError(field, problem, fix)


def choose(value, options, field: str):
    """Return `options[value]`, or raise a ConfigError listing the valid names."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(field, f"unknown value {value!r}",
                          f"use one of {', '.join(sorted(options))}")
    return options[value]


class Range(NamedTuple):
    """The values a config field (or each item of a list field) may take, for
    `check_ranges`: lo / hi bounds (None: unbounded), open or closed, whole numbers
    only, None allowed (e.g. "all examples")."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    none_ok: bool = False

    def __contains__(self, v) -> bool:
        if v is None:
            return self.none_ok
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) or not np.isfinite(v):
            return False
        if self.integer and not float(v).is_integer():
            return False
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.lo is not None and self.hi is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            text = f"a finite {kind[2:]}"
        return text + (", or None" if self.none_ok else "")


POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)                       # a probability, a cosine threshold, a share
FRACTION = Range(0, 1, lo_open=True)     # a share that must be > 0
BETA = Range(0, 1, hi_open=True)         # a momentum / moving-average coefficient
FINITE = Range()
COUNT = Range(1, integer=True)


def check_ranges(config: dict, ranges: dict) -> None:
    """ConfigError naming the first field of `config` (or item of a list field) outside
    its `Range` in `ranges` {field: Range}."""
    for field, allowed in ranges.items():
        value = config.get(field)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in items:
            require(v in allowed, field, f"got {value!r}",
                    f"use {allowed}" + (" for every value" if isinstance(value, (list, tuple)) else ""))
