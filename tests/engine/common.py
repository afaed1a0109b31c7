"""Models for the engine tests: tiny random fp32 models of every family, and the bundled bf16 model."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

import phikit

from ..oracle import VARIANTS, make_config, randomize

BUNDLED = Path(phikit.__file__).parent / "default_model"


def tiny(name: str, seed: int = 0, **overrides):
    """A random fp32 model of variant `name` (tests/oracle.py), eval mode."""
    config = make_config(name, **overrides)
    model = phikit.AutoModelForCausalLM.from_config(config) if hasattr(phikit.AutoModelForCausalLM, "from_config") \
        else _model_class(config)(config)
    randomize(model, seed)
    return model.eval()


def _model_class(config):
    return {"phi": phikit.PhiForCausalLM, "phi3": phikit.Phi3ForCausalLM,
            "phimoe": phikit.PhimoeForCausalLM}[config.model_type]


@functools.lru_cache(maxsize=1)
def bundled():
    model = phikit.AutoModelForCausalLM.from_pretrained(BUNDLED)
    tokenizer = phikit.AutoTokenizer.from_pretrained(BUNDLED)
    return model, tokenizer


def random_ids(vocab: int, n: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def uncached_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the last position of an uncached forward over `ids` -> [V]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


__all__ = ["VARIANTS", "tiny", "bundled", "random_ids", "uncached_logprobs", "BUNDLED"]
