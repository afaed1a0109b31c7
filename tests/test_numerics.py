"""Numeric building blocks: the sparsemixer router, fp16 attention, gradient checkpointing, dependency hygiene."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

import phikit
from phikit.ops.attention import eager_attention, sdpa_attention
from phikit.model.moe import sparsemixer

from .oracle import make_config, pair, randomize

reference_moe = pytest.importorskip("transformers.models.phimoe.modeling_phimoe")


def _scores(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(64, 16, generator=gen) * 2
    scores[:8, 1] = scores[:8, 0] + 1e-3  # near-ties: inside the 2 * jitter_eps margin
    return scores


@pytest.mark.parametrize("jitter", [0.01, 0.3])
def test_sparsemixer_equals_reference_at_inference(jitter: float) -> None:
    scores = _scores(0)
    gates, experts = sparsemixer(scores, jitter, training=False)
    want_gates, want_experts = reference_moe.sparsemixer(scores, jitter_eps=jitter, training=False)
    assert torch.equal(experts, want_experts)
    assert_close(gates, want_gates)
    assert not torch.allclose(gates, torch.softmax(scores, -1).topk(2).values)  # it is not Mixtral routing


def test_sparsemixer_training_samples_and_gradients_equal_reference() -> None:
    scores = _scores(1).requires_grad_()
    ref_scores = scores.detach().clone().requires_grad_()
    torch.manual_seed(7)
    gates, experts = sparsemixer(scores, 0.01, training=True)
    torch.manual_seed(7)
    want_gates, want_experts = reference_moe.sparsemixer(ref_scores, jitter_eps=0.01, training=True)
    assert torch.equal(experts, want_experts)
    assert_close(gates, want_gates)
    weights = torch.randn(gates.shape, generator=torch.Generator().manual_seed(3))
    (gates * weights).sum().backward()
    (want_gates * weights).sum().backward()
    assert_close(scores.grad, ref_scores.grad)


@pytest.mark.parametrize("kernel", [eager_attention, sdpa_attention])
def test_fp16_attention_does_not_overflow(kernel) -> None:
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 2, 5, 64, generator=gen) * 60).half()  # q.k reaches ~1e5 > fp16 max 65504
    k = (torch.randn(1, 2, 5, 64, generator=gen) * 60).half()
    v = torch.randn(1, 2, 5, 64, generator=gen).half()
    naive = torch.matmul(q, k.transpose(2, 3))
    assert not torch.isfinite(naive).all(), "the inputs must overflow a plain fp16 matmul"
    bias = torch.zeros(1, 1, 5, 5)
    out, _ = kernel(q, k, v, bias.half(), 64**-0.5)
    want, _ = eager_attention(q.float(), k.float(), v.float(), bias, 64**-0.5)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert_close(out.float(), want, atol=2e-3, rtol=2e-3)


def test_fp16_phi2_model_stays_finite_and_close_to_fp32() -> None:
    config = make_config("phi-2")
    model = phikit.PhiForCausalLM(config).eval()
    randomize(model, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(60.0)  # attention scores far beyond fp16's range, as phi-2's grow in late layers
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        model.half()
        layer = model.model.layers[0]
        q, k, _ = layer.self_attn.project(layer.input_layernorm(model.model.embed_tokens(ids)))
        assert not torch.isfinite(torch.matmul(q, k.transpose(2, 3))).all(), "a plain fp16 q.k must overflow here"
        got = model(ids).logits
    assert torch.isfinite(got).all()
    assert_close(got.float(), want, atol=0.02 * float(want.abs().max()), rtol=0.02)


@pytest.mark.parametrize("name", ["phi-2", "phi-4-mini", "phi-3.5-moe"])
def test_gradient_checkpointing_gives_the_same_gradients(name: str) -> None:
    ours, _ = pair(name)
    ours.train()
    ours.config.router_jitter_noise = 0.0
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        ours.zero_grad()
        if checkpointing:
            ours.gradient_checkpointing_enable()
        torch.manual_seed(0)
        ours(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        assert_close(grads[0][n], grads[1][n], msg=n)


def test_library_never_imports_transformers() -> None:
    root = pathlib.Path(phikit.__file__).parent
    statement = re.compile(r"^\s*(from\s+transformers[\s.]|import\s+transformers\b)", re.MULTILINE)
    offenders = [str(p) for p in root.rglob("*.py") if statement.search(p.read_text())]
    assert offenders == []
    code = "import sys, phikit; m = phikit.Phi3ForCausalLM; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bad_inputs_raise_clear_errors() -> None:
    ours, _ = pair("phi-1.5")
    with pytest.raises(ValueError, match="id 500.*vocab_size is 96"):
        ours(torch.tensor([[1, 2, 500]]))
    with pytest.raises(ValueError, match="batch dimension"):
        ours(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="exactly one"):
        ours()
    with pytest.raises(TypeError, match="unexpected arguments \\['past_key_value'\\]"):
        ours(torch.tensor([[1, 2]]), past_key_value=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,rotary_dim", [(32, 32), (32, 16), (80, 32), (96, 72)])  # full, 0.5, 0.4, 0.75
def test_rotary_tables_give_the_reference_rotation_bit_for_bit(dtype: torch.dtype, head_dim: int,
                                                               rotary_dim: int) -> None:
    """RotaryTables (four ops per call) against apply_rotary, the transformers formulation, in fp32 and bf16."""
    from phikit.model.rope import RotaryTables, apply_rotary

    gen = torch.Generator().manual_seed(head_dim + rotary_dim)
    x = torch.randn(2, 3, 5, head_dim, generator=gen).to(dtype)  # [B, heads, T, D]
    angles = torch.rand(2, 5, rotary_dim // 2, generator=gen) * 50
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)  # [B, T, R]
    assert torch.equal(RotaryTables.build(cos, sin, head_dim).apply(x), apply_rotary(x, cos, sin))
