"""The checks every config field goes through: type, finiteness and range, each error naming the field, the value,
the limit and the fix. `x <= 0` lets NaN through and accepts infinity, so every number is checked finite first."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

# Sizes and ids index int32 tensors in the native kernels; a config past this is a typo, not a model.
MAX_INT = 2**31 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def finite_number(name: str, value: Any, example: str) -> float:
    """A real, finite number (not a bool, not NaN, not infinite)."""
    if not _is_number(value):
        raise ConfigError(f"{name}={_shown(value)} must be a number, e.g. {example}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number, e.g. {example}; the checkpoint's config.json is "
                          f"corrupt or was edited by hand")
    return value


def positive_number(name: str, value: Any, example: str) -> float:
    """A finite number > 0."""
    finite_number(name, value, example)
    if value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive number, e.g. {example}")
    return value


def probability(name: str, value: Any) -> float:
    """A finite number in [0, 1]."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise ConfigError(f"{name}={_shown(value)} must be a probability in [0, 1], e.g. 0.0")
    return value


def positive_int(name: str, value: Any, limit: int = MAX_INT) -> int:
    """An int in [1, limit]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={_shown(value)} must be a positive integer")
    if not 0 < value <= limit:
        raise ConfigError(f"{name}={value!r} must be a positive integer no larger than {limit}")
    return value


def token_id(name: str, value: Any) -> None:
    """A token id >= 0, or None. Ids at or past vocab_size are allowed, as transformers allows them: the family
    defaults (pad 32000 on Phi-3) outlive a small `vocab_size` in tiny test configs; the model never looks them up."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={_shown(value)} must be an integer token id or null")
    if not 0 <= value <= MAX_INT:
        raise ConfigError(f"{name}={value} is not a token id; ids are integers in [0, {MAX_INT}]: set a vocabulary "
                          f"id, or null")


def one_of(name: str, value: Any, allowed: Any) -> None:
    """`value` is one of `allowed` (unhashable and non-string values are refused, not a TypeError)."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name}={_shown(value)} is not supported; use one of {list(allowed)}")


def number_list(name: str, value: Any, length: int, why: str) -> None:
    """A list of `length` finite positive numbers."""
    if not isinstance(value, list) or not all(_is_number(x) for x in value):
        raise ConfigError(f"{name} must be a list of numbers, got {_shown(value)}")
    if len(value) != length:
        raise ConfigError(f"{name} has {len(value)} entries; it needs {why} = {length}")
    bad = next((i for i, x in enumerate(value) if not (math.isfinite(x) and x > 0)), None)
    if bad is not None:
        raise ConfigError(f"{name}[{bad}]={value[bad]!r}: every factor must be a finite number > 0")
