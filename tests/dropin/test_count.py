"""The drop-in suite's size: at least 40 idioms across the theme files, and every seed snippet covered."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from tests.dropin.common import SEEDS_DIR, seed_snippets

MINIMUM_IDIOMS = 40
HERE = pathlib.Path(__file__).parent


def _modules() -> dict:
    return {p.stem: importlib.import_module(f"tests.dropin.{p.stem}") for p in sorted(HERE.glob("test_*.py"))
            if p.stem != "test_count"}


def test_at_least_40_idioms():
    counts = {name: len(getattr(m, "IDIOMS", [])) for name, m in _modules().items()}
    idioms = {name: n for name, n in counts.items() if name != "test_seed_snippets"}
    assert sum(idioms.values()) >= MINIMUM_IDIOMS, counts


def test_every_seed_snippet_covered():
    if not SEEDS_DIR.is_dir():
        pytest.skip(f"seed docs not found at {SEEDS_DIR} (the repo's ../shared/seeds)")
    from tests.dropin import test_cli_idioms, test_seed_snippets

    snippets = seed_snippets()
    assert len(snippets) >= 19, snippets
    assert set(test_seed_snippets.SEEDS) == set(snippets), (sorted(set(snippets) - set(test_seed_snippets.SEEDS)),
                                                          sorted(set(test_seed_snippets.SEEDS) - set(snippets)))
    rows = ({i.id for i in test_seed_snippets.IDIOMS} | {f"cli:{i.id}" for i in test_cli_idioms.IDIOMS}
            | {"as-written:000:33", "bnb:001:49"})
    for snippet, covering in test_seed_snippets.SEEDS.items():
        assert covering and set(covering) <= rows, (snippet, covering)
