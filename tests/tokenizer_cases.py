"""Shared fixture access for the tokenizer tests: the `../shared/fixtures/tokenizers` folder and its case files."""

from __future__ import annotations

import json
import pathlib
from functools import lru_cache

import pytest

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
LLAMA_CPP = TOKENIZERS / "llama.cpp"


def require_fixtures() -> None:
    """Skip the calling test module when the shared fixtures are absent (e.g. a bare checkout)."""
    if not (TOKENIZERS / "phi_cases.json").is_file():
        pytest.skip(f"tokenizer fixtures not found at {TOKENIZERS} (the repo's ../shared/fixtures)",
                    allow_module_level=True)


@lru_cache(maxsize=None)
def llama_cpp_cases(vocab: str) -> list[tuple[str, list[int]]]:
    """The (text, expected ids) pairs of `ggml-vocab-{vocab}.gguf.inp/.out` (46 per vocabulary)."""
    inputs = (LLAMA_CPP / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (LLAMA_CPP / f"ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert inputs[-1] == "", "the .inp file ends with a separator"
    inputs = inputs[:-1]
    return [(text, [int(x) for x in line.split()]) for text, line in zip(inputs, outputs[:len(inputs)])]


@lru_cache(maxsize=None)
def phi_cases() -> dict:
    """`phi_cases.json`: recorded chat prompts, ids and encodes."""
    return json.loads((TOKENIZERS / "phi_cases.json").read_text(encoding="utf-8"))
