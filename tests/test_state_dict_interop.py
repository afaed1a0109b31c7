"""Drop-in: `load_state_dict` across phikit and transformers, both ways, for every family (phi, phi3, a tied
phi-4-mini, phimoe), with equal logits after loading. transformers 5.x holds PhiMoE's experts stacked
(`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I], `mlp.router.weight`); phikit reads that
layout with a load-state-dict pre-hook (`phikit.model.moe.stacked_experts_pre_hook`) on the decoder layer."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from phikit.model.moe import stacked_experts_pre_hook

from .oracle import pair

FAMILIES = ["phi-2", "phi-3-mini-4k", "phi-4-mini", "phi-3.5-moe"]


def _ids() -> torch.Tensor:
    return torch.randint(3, 96, (2, 11), generator=torch.Generator().manual_seed(3))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


def _hooked(model) -> bool:
    return any(getattr(h, "hook", h) is stacked_experts_pre_hook
               for m in model.modules() for h in m._load_state_dict_pre_hooks.values())


def _moe_layers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if "block_sparse_moe" in m._modules]


@pytest.mark.parametrize("name", FAMILIES)
def test_phikit_loads_a_transformers_state_dict(name: str) -> None:
    _, ref = pair(name)
    fresh, _ = pair(name, seed=7)
    assert not torch.allclose(_logits(fresh), _logits(ref))
    if name == "phi-3.5-moe":
        assert _hooked(fresh), "the decoder layer registers moe.stacked_experts_pre_hook on PhiMoE layers"
    result = fresh.load_state_dict(ref.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_close(_logits(fresh), _logits(ref))  # two implementations: equal to rounding


def test_stacked_experts_hook_splits_exactly() -> None:
    ours, ref = pair("phi-3.5-moe")
    fresh, _ = pair("phi-3.5-moe", seed=7)
    state = ref.state_dict()
    keys = set(state)
    result = fresh.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(state) == keys  # the caller's dict is not changed
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key  # bit for bit
    assert torch.equal(_logits(fresh), _logits(ours))
    assert_close(_logits(fresh), _logits(ref))


def test_stacked_experts_with_a_bad_shape_or_both_layouts_are_errors() -> None:
    ours, ref = pair("phi-3.5-moe")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = ref.state_dict()
    key = "model.layers.0.mlp.experts.gate_up_proj"
    state[key] = torch.zeros(4, 191, 64)
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.mlp\.experts\.gate_up_proj has shape \(4, 191, 64\)"):
        ours.load_state_dict(state)
    both = {**ref.state_dict(), **{k: v for k, v in ours.state_dict().items() if ".block_sparse_moe." in k}}
    with pytest.raises(RuntimeError, match="both phikit's tensors"):
        ours.load_state_dict(both)
    partial = {k: v for k, v in ref.state_dict().items() if not k.endswith("experts.down_proj")}
    result = ours.load_state_dict(partial, strict=False)
    assert result.missing_keys and all(k.endswith(".w2.weight") for k in result.missing_keys)
    assert result.unexpected_keys == []
    assert torch.equal(ours.state_dict()["model.layers.0.block_sparse_moe.experts.0.w2.weight"],
                       before["model.layers.0.block_sparse_moe.experts.0.w2.weight"])


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_loads_a_phikit_state_dict(name: str) -> None:
    ours, _ = pair(name)
    _, ref = pair(name, seed=7)
    if name == "phi-3.5-moe":
        # transformers converts the per-expert layout only in from_pretrained (its checkpoint conversion), not in
        # nn.Module.load_state_dict: this is its documented behaviour. The route that works is
        # ours.save_pretrained(folder) + transformers' from_pretrained(folder) (tests/test_loading.py).
        with pytest.raises(RuntimeError, match=r"block_sparse_moe\.experts\.0\.w1\.weight"):
            ref.load_state_dict(ours.state_dict())
        return
    result = ref.load_state_dict(ours.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_close(_logits(ref), _logits(ours))
