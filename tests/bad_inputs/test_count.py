"""The bad-input suite's size: the issue asks for at least 150 hostile inputs across the boundaries."""

from __future__ import annotations

import importlib
import pathlib

MINIMUM = 150


def test_at_least_150_cases_across_boundaries():
    here = pathlib.Path(__file__).parent
    counts = {}
    for path in sorted(here.glob("test_*.py")):
        if path.stem == "test_count":
            continue
        module = importlib.import_module(f"tests.bad_inputs.{path.stem}")
        counts[path.stem] = len(getattr(module, "CASES", [])) + len(getattr(module, "EXTRA_CASES", []))
    assert sum(counts.values()) >= MINIMUM, counts
