"""oneDNN-prepacked bf16 linears: same numbers as nn.Linear, used by default for bf16 CPU loads."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import phikit
from phikit.cpu_kernels import PackedLinear, packing_available, use_packed_linears

from .oracle import pair

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN (mkldnn)")


def test_packed_linear_equals_linear_and_repacks_after_weight_changes() -> None:
    torch.manual_seed(0)
    plain = nn.Linear(64, 48).to(torch.bfloat16)
    packed = nn.Linear(64, 48).to(torch.bfloat16)
    packed.load_state_dict(plain.state_dict())
    use_packed_linears(packed)
    assert type(packed) is PackedLinear
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(packed(x), plain(x))
        packed.weight.add_(1.0)
        plain.weight.add_(1.0)
        assert torch.equal(packed(x), plain(x))  # the in-place change was seen: repacked
    out = packed(x.requires_grad_())  # grad enabled: plain F.linear path, gradients flow
    out.sum().backward()
    assert x.grad is not None and packed.weight.grad is not None


@pytest.mark.parametrize("name", ["phi-2", "phi-4-mini"])
def test_bf16_load_uses_packed_linears_with_identical_logits(tmp_path, name: str) -> None:
    ours, _ = pair(name)
    ours.to(torch.bfloat16).save_pretrained(tmp_path)
    model = phikit.AutoModelForCausalLM.from_pretrained(tmp_path)
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert all(k is PackedLinear for n, k in kinds.items() if n != "lm_head")
    assert (kinds["lm_head"] is nn.Linear) == ours.config.tie_word_embeddings  # a tied head is never copied
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ours(ids).logits)
    assert torch.equal(model.generate(ids, max_new_tokens=8), ours.generate(ids, max_new_tokens=8))
    model.save_pretrained(tmp_path / "again")  # state_dict still holds the original weights
    again = phikit.AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ours.float()(ids).logits)
