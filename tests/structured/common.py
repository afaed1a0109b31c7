"""Shared pieces of the structured-output tests; modules skip, with the reason, where llguidance is absent."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

pytest.importorskip("llguidance", reason="llguidance is not installed: pip install 'phikit[structured]' (or "
                                         "-e '.[test]')")

import phikit  # noqa: E402

BUNDLED = Path(phikit.__file__).parent / "default_model"

# OpenAI-style schema of the acceptance line: an enum, a bounded integer, a required-property object
SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
        "detail": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 8}},
                   "required": ["word"]},
    },
    "required": ["mood", "score", "detail"],
}


@functools.lru_cache(maxsize=1)
def bundled():
    model = phikit.AutoModelForCausalLM.from_pretrained(BUNDLED, dtype="float32").eval()
    return model, phikit.AutoTokenizer.from_pretrained(BUNDLED)
