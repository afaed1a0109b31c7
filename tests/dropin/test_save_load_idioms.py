"""Save/load both ways (phikit saves -> transformers loads, and the reverse) and `load_state_dict` both ways, for
every family: the same logits either way."""

from __future__ import annotations

import tempfile

import pytest
import torch

from tests.dropin.common import FAMILIES, PK_PK, TF_TF, Idiom, check, load, params

import phikit
import transformers

IDS = torch.tensor([[1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975]])
CROSS = (TF_TF, (phikit, transformers), (transformers, phikit), PK_PK)


def save_then_load(saver, loader, folder, cls="AutoModelForCausalLM"):
    """`saver` loads the folder and saves it again; `loader` loads that copy."""
    model = load(saver, folder, cls)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = load(loader, tmp, cls)
    with torch.no_grad():
        return type(again).__name__, again(IDS).logits


def save_then_load_seq(saver, loader, folder):
    return save_then_load(saver, loader, folder, "AutoModelForSequenceClassification")


def save_then_load_tok(saver, loader, folder):
    return save_then_load(saver, loader, folder, "AutoModelForTokenClassification")


def save_bf16_then_load(saver, loader, folder):
    model = load(saver, folder, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = load(loader, tmp, dtype="auto")
    with torch.no_grad():
        return again.dtype, again(IDS).logits.float()


def load_state_dict(source, target, folder):
    """`target.load_state_dict(source_model.state_dict())` into a freshly built model of the same config."""
    state = load(source, folder).state_dict()
    model = target.AutoModelForCausalLM.from_config(target.AutoConfig.from_pretrained(folder))
    result = model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        return list(result.missing_keys), list(result.unexpected_keys), model(IDS).logits


def _state_dict_marks(family, pair) -> tuple:
    if family != "phimoe" or pair == PK_PK:
        return ()
    if pair[0] is transformers:
        return ()  # phikit's layers read transformers 5's stacked experts (model/moe.py, stacked_experts_pre_hook)
    # transformers cannot: its nn.Module.load_state_dict converts nothing, and phikit's state_dict() keeps the
    # checkpoint files' per-expert w1/w2/w3 (what real Phi-3.5-MoE checkpoints hold; transformers converts them
    # only in from_pretrained). save_pretrained + transformers' from_pretrained is the route that works (tested).
    return (pytest.mark.skip(reason="transformers' load_state_dict does not convert PhiMoE's per-expert layout "
                                    "(its from_pretrained does; that direction is tested by save/load)"),)


def _direction(a, b):
    return f"{a.__name__}->{b.__name__}"


IDIOMS: list[Idiom] = [
    *[Idiom(f"save_then_load/{f}", save_then_load, model=f, pairs=CROSS) for f in (*FAMILIES, "tied")],
    Idiom("save_then_load_seq", save_then_load_seq, model="phi/seq", pairs=CROSS),
    Idiom("save_then_load_tok", save_then_load_tok, model="phi/tok", pairs=CROSS),
    # bf16 logits at bf16's tolerance (torch's defaults for bf16): below avx512 phikit's bf16 GEMM is MKL's fp32 one
    # on widened weights, which rounds an element now and then an ulp away from PyTorch's bf16 GEMM
    Idiom("save_bf16_then_load", save_bf16_then_load, pairs=CROSS, rtol=1.6e-2, atol=1e-5),
    *[Idiom(f"load_state_dict/{f}/{_direction(*pair)}", load_state_dict, model=f, pairs=(TF_TF, pair),
            marks=_state_dict_marks(f, pair))
      for f in FAMILIES for pair in ((transformers, phikit), (phikit, transformers), PK_PK)],
]


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_save_load_idiom(idiom, folders):
    check(idiom, folders)
