"""What every fuzz target shares: start atheris on this checkout's phikit, with the heavy dependencies imported
uninstrumented (instrumenting torch makes startup take a minute), the modules under test instrumented, and the
target's seeds as the starting corpus unless a crash file or corpus is named on the command line."""

from __future__ import annotations

import importlib
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "jinja2", "tokenizers", "safetensors")


def fuzz(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes], modules: Sequence[str],
         include: Sequence[str] = ("phikit",)) -> None:
    """Run `test_one_input` under libFuzzer until its limits (`-max_total_time`, `-runs`) end it; never returns."""
    import atheris

    sys.path.insert(0, str(CHECKOUT))  # this checkout's phikit, not an installed one
    for name in HEAVY:
        importlib.import_module(name)
    with atheris.instrument_imports(include=list(include)):
        for name in modules:
            importlib.import_module(name)
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = pathlib.Path(tempfile.mkdtemp(prefix="phikit-fuzz-seeds-"))
        for i, seed in enumerate(seeds):
            (corpus / f"seed{i}").write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
