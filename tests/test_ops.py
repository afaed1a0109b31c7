"""The seam (`phikit/ops`): a model gets its backend's table once, when built or loaded; the model's modules call
only the table; a table pickles by name; and the CPU table's ops give the reference's numbers at this level."""

from __future__ import annotations

import copy
import pickle

import torch

import phikit
from phikit.backends import cpu as cpu_backend
from phikit.cpu import features
from phikit.cpu.gemm import FastLinear, onednn_bf16, prefers_fp32_gemm
from phikit.ops import REFERENCE, bind, bound, by_name, reference
from phikit.ops.activations import ACTIVATIONS, GATED

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)


def tiny(seed: int = 0, **extra) -> phikit.Phi3ForCausalLM:
    torch.manual_seed(seed)
    return phikit.Phi3ForCausalLM(phikit.Phi3Config(**{**SMALL, **extra})).eval()


def test_a_built_model_carries_the_cpu_table_of_this_level() -> None:
    model = tiny()
    ops = bound(model)
    assert ops is cpu_backend.ops() and ops.name == f"cpu-{features.level()}"
    assert all(m.ops is ops for m in model.modules() if "ops" in vars(m))
    assert by_name(ops.name) is ops


def test_tables_pickle_by_name_and_models_stay_copyable() -> None:
    model = tiny()
    again = pickle.loads(pickle.dumps(model))
    assert bound(again) is bound(model)  # the same registered table, not a copy of its functions
    assert bound(copy.deepcopy(model)) is bound(model)
    assert by_name("no-such-table") is REFERENCE  # a table this process lacks: the reference runs
    ids = torch.randint(1, 128, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_rebinding_the_reference_changes_no_fp32_number() -> None:
    """fp32 runs the reference functions under either table (the native kernels take bf16 only)."""
    model = tiny()
    ids = torch.randint(1, 128, (2, 11))
    with torch.no_grad():
        ours = model(ids).logits
        bind(model, REFERENCE)
        assert bound(model) is REFERENCE
        assert torch.equal(model(ids).logits, ours)


def test_the_cpu_table_gives_the_reference_numbers_in_bf16() -> None:
    """bf16 forwards with this level's table against the reference table: every native op of the table is bit for
    bit the reference but RMSNorm (its exact mean of squares may differ by a bf16 ulp where PyTorch's fp32 sum
    rounds) and prefill attention (its own summation order), so logits agree to bf16 precision."""
    model = tiny(1, max_position_embeddings=2048).to(torch.bfloat16)
    ids = torch.randint(1, 128, (1, 1100))  # 1100 x 64 values: large enough for the elementwise kernels
    with torch.no_grad():
        ours = model(ids).logits.float()
        bind(model, REFERENCE)
        theirs = model(ids).logits.float()
    torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.02)


def test_activation_and_attention_registries_are_the_configs() -> None:
    assert set(phikit.config.ACTIVATIONS) == set(ACTIVATIONS) == set(GATED) == set(REFERENCE.activations)
    x = torch.randn(3, 8)
    gate_up = torch.randn(3, 16)
    assert torch.equal(GATED["silu"](gate_up), gate_up[:, 8:] * torch.nn.functional.silu(gate_up[:, :8]))
    assert torch.equal(ACTIVATIONS["gelu_pytorch_tanh"](x), torch.nn.functional.gelu(x, approximate="tanh"))


def test_decode_attention_reference_is_sdpa_over_every_key() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    out = reference.decode_attention(q, k, v, 0.25)
    kk, vv = reference.repeat_kv(k, 2), reference.repeat_kv(v, 2)
    expected = torch.softmax(q @ kk.transpose(2, 3) * 0.25, -1) @ vv  # [B, H, 1, D]
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_bf16_linears_never_use_pytorch_bf16_gemm_without_bf16_instructions(tmp_path) -> None:
    """A bf16 load gets FastLinear layers; below avx512 (no oneDNN bf16 here) every product runs as an fp32 GEMM
    on widened weights, the path whose speed does not collapse on an AVX2 CPU."""
    tiny().save_pretrained(tmp_path)
    model = phikit.Phi3ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert isinstance(model.model.layers[0].mlp.down_proj, FastLinear)
    assert bound(model) is cpu_backend.ops()
    if not features.at_least("avx512"):
        assert not onednn_bf16() and prefers_fp32_gemm(1) and prefers_fp32_gemm(512)
    ids = torch.randint(1, 128, (1, 5))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)
