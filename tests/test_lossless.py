"""Lossless 12-bit bf16 weights (phikit/lossless.py, native/lossless.c): every bf16 bit pattern comes back, the
matrix-vector kernel equals the plain bf16 kernel bit for bit, and a model loaded with `LosslessBf16Config` decodes
the plain bf16 model's logits bit for bit while saving and loading plain bf16 checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import phikit
from phikit.formats import lossless
from phikit.backends.cpu import decode_step as native_decode
from phikit.cpu import kernels as native_kernels
from phikit.cpu.gemm import FastLinear, use_fast_linears
from phikit.formats.lossless import LosslessBf16Config, LosslessBf16Linear
from phikit.formats.quantize import quantize_model
from tests.oracle import make_config

pytestmark = pytest.mark.skipif(not native_kernels.has_c12(),
                                reason="the lossless 12-bit kernels need AVX512-BF16 and a C compiler: "
                                       f"{native_kernels.build_error or 'this CPU lacks AVX512-BF16'}")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def expected_exceptions(w: torch.Tensor) -> int:
    """The format's rule in closed form: per row and 64 columns, base = max exponent - 15 (at least 0); a weight
    whose exponent is in [1, base] has no 4-bit code and goes to the side list."""
    e = ((bits(w).int() >> 7) & 0xFF).reshape(w.shape[0], -1, 64)
    base = (e.amax(-1, keepdim=True) - 15).clamp(min=0)
    return int(((e >= 1) & (e <= base)).sum())


OUTLIER_COLUMN = 5  # activations are zero there (see normal_with_outliers)


def normal_with_outliers(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """N(0, 0.02) bf16 weights, with some tiny values, a row of zeros, and in every third row a 3000 at column
    OUTLIER_COLUMN: the other 63 weights of that group are then 2^17 below it, all exceptions, and with zero
    activations at the outlier they alone make the output, so a missed exception shows."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.02
    tiny = torch.rand(n, k, generator=gen) < 0.002
    w[tiny] *= 1e-6
    w[::3, OUTLIER_COLUMN] = 3000.0
    w[n // 2] = 0
    return w.to(torch.bfloat16)


def test_every_bf16_bit_pattern_comes_back() -> None:
    """All 65536 patterns (±0, subnormals, normals, ±inf, every NaN payload), in an order that puts wide and narrow
    exponent ranges in the same groups, plus slices of rows starting anywhere."""
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    shuffled = every[torch.randperm(every.numel(), generator=torch.Generator().manual_seed(0))]
    for pattern, exceptions in ((every, 0), (shuffled, 60_000)):  # in order, a group spans at most 2 exponents
        w = pattern.view(torch.bfloat16).reshape(64, 1024).contiguous()
        layer = LosslessBf16Linear.from_weight(w)
        assert torch.equal(bits(layer.dequantize()), bits(w))
        assert torch.equal(bits(layer.rows(3, 61)), bits(w[3:61]))
        assert layer.exceptions == expected_exceptions(w) >= exceptions


@pytest.mark.parametrize("n,k", [(8, 64), (72, 192), (1024, 2048), (256, 8192)])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_matvec_equals_the_plain_bf16_kernel_bit_for_bit(n: int, k: int, rows: int, bias: bool) -> None:
    w = normal_with_outliers(n, k)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    x[:, OUTLIER_COLUMN] = 0
    b = torch.randn(n, generator=gen).to(torch.bfloat16) if bias else None
    layer = LosslessBf16Linear.from_weight(w, b)
    assert layer.exceptions == expected_exceptions(w) > 0
    with torch.no_grad():
        y = layer(x)
    assert torch.equal(bits(y), bits(native_kernels.linear_bf16(x, w, b)))


@pytest.mark.parametrize("slice_rows", [4096, 1024])  # rebuilt whole, or by row slices
def test_prefill_gemm_and_autograd_use_the_same_weights(slice_rows: int, monkeypatch) -> None:
    """More rows than the matrix-vector kernel takes go through the GEMM on the rebuilt weight (by row slices, each
    multiplied by x 256 rows at a time); with autograd (or another dtype) the layer computes F.linear on the rebuilt
    weight, as a plain bf16 linear would."""
    monkeypatch.setattr(lossless, "bf16_slice_rows", lambda k: slice_rows)
    w = normal_with_outliers(4096, 1024)  # 8 MB of bf16: more than one slice
    b = torch.randn(4096).to(torch.bfloat16)
    layer = LosslessBf16Linear.from_weight(w, b)
    plain = nn.Linear(1024, 4096).to(torch.bfloat16)
    with torch.no_grad():
        plain.weight.copy_(w)
        plain.bias.copy_(b)
    x = torch.randn(300, 1024).to(torch.bfloat16)  # GEMMs of 256 and 44 rows
    with torch.no_grad():
        got, want = layer(x).float(), plain(x).float()
    assert (got - want).abs().max().item() <= 1e-2 * want.abs().max().item()  # GEMM summation order only
    xg = x[:5].clone().requires_grad_(True)
    layer(xg).float().sum().backward()
    assert torch.allclose(xg.grad.float(), w.float().sum(0).expand(5, -1), rtol=1e-2, atol=1e-2)


def save_tiny(name: str, folder, **overrides) -> nn.Module:
    torch.manual_seed(0)
    config = make_config(name, hidden_size=128, intermediate_size=256, num_attention_heads=4, vocab_size=128,
                         **overrides)
    model = {"phi": phikit.PhiForCausalLM, "phi3": phikit.Phi3ForCausalLM}[config.model_type](config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    model.to(torch.bfloat16).save_pretrained(str(folder))
    return model


def cached_logits(model: nn.Module, ids: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Logits of a prefill and then `steps` one-token cached steps (greedy), stacked [steps + 1, V]."""
    out = model.generate(ids, max_new_tokens=steps + 1, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, min_new_tokens=steps + 1)
    return torch.stack([t[0] for t in out.logits])


@pytest.mark.parametrize("name", ["phi-1.5", "phi-3-mini-4k"])
def test_loaded_model_decodes_the_plain_models_logits_bit_for_bit(name: str, tmp_path) -> None:
    save_tiny(name, tmp_path)
    plain = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    packed = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16,
                                                         quantization_config=LosslessBf16Config())
    kinds = {type(m) for m in packed.modules()}
    assert LosslessBf16Linear in kinds and FastLinear not in kinds  # the head too
    assert native_decode.explain(packed.model) is None  # the native decode step takes it
    ids = torch.randint(3, 128, (1, 11), generator=torch.Generator().manual_seed(2))
    assert torch.equal(cached_logits(packed, ids), cached_logits(plain, ids))
    assert packed.num_parameters() == plain.num_parameters()
    assert "quantization_config" not in packed.config.to_dict() or not packed.config.to_dict()["quantization_config"]


def test_state_dict_and_checkpoints_are_plain_bf16(tmp_path) -> None:
    original = save_tiny("phi-1.5", tmp_path / "a")
    packed = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"), dtype=torch.bfloat16,
                                                         quantization_config=LosslessBf16Config())
    state = packed.state_dict()
    reference = original.to(torch.bfloat16).state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(bits(state[k]), bits(reference[k])) for k in reference)
    packed.save_pretrained(str(tmp_path / "b"))
    assert "quantization_config" not in json.loads((tmp_path / "b" / "config.json").read_text())
    again = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path / "b"), dtype=torch.bfloat16)
    assert all(torch.equal(bits(v), bits(reference[k])) for k, v in again.state_dict().items())
    # load_state_dict re-encodes: other weights in, their logits out
    other = save_tiny("phi-1.5", tmp_path / "c")
    other_state = {k: v.clone() for k, v in other.to(torch.bfloat16).state_dict().items()}
    for v in other_state.values():
        v.mul_(1.5) if v.dim() == 2 else None
    packed.load_state_dict(other_state)
    plain = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path / "c"), dtype=torch.bfloat16)
    plain.load_state_dict(other_state)
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(4))
    assert torch.equal(cached_logits(packed, ids, 3), cached_logits(plain, ids, 3))
    bad = dict(other_state, **{"lm_head.weight": other_state["lm_head.weight"][:8]})
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        packed.load_state_dict(bad)


def test_what_cannot_hold_it_stays_plain_or_raises(tmp_path) -> None:
    save_tiny("phi-1.5", tmp_path)
    with pytest.raises(ValueError, match=r"torch_dtype=torch.bfloat16"):
        phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32,
                                                    quantization_config=LosslessBf16Config())
    where_possible = phikit.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), dtype=torch.float32, quantization_config=LosslessBf16Config(required=False))
    assert not any(isinstance(m, LosslessBf16Linear) for m in where_possible.modules())
    packed = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16,
                                                         quantization_config=LosslessBf16Config())
    with pytest.raises(RuntimeError, match="reload the model without quantization_config"):
        packed.to(torch.float32)
    # shapes off the kernel's blocks (rows % 8, columns % 64) keep their plain layer
    model = nn.Sequential(nn.Linear(64, 30), nn.Linear(30, 64), nn.Linear(64, 64)).to(torch.bfloat16)
    use_fast_linears(model)
    quantize_model(model, LosslessBf16Config())
    assert [type(m) for m in model] == [FastLinear, FastLinear, LosslessBf16Linear]
    # a head tied to the embedding stays the embedding
    save_tiny("phi-3-mini-4k", tmp_path / "tied", tie_word_embeddings=True)
    tied = phikit.AutoModelForCausalLM.from_pretrained(str(tmp_path / "tied"), dtype=torch.bfloat16,
                                                       quantization_config=LosslessBf16Config())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


def test_the_command_holds_bf16_weights_lossless_by_default(capsys) -> None:
    """`phikit generate` on the bundled bf16 model: the default (`--weights auto`) loads the 12-bit form and prints
    exactly what `--weights plain` prints."""
    from phikit.cli import main

    texts = {}
    for weights in ("auto", "plain"):
        assert main(["generate", "def parse(line):", "--max-new-tokens", "24", "--no-stream", "--weights",
                     weights]) == 0
        out = capsys.readouterr()
        texts[weights] = out.out
        held = "lossless 12-bit bf16" if weights == "auto" else "bfloat16"
        assert f"weights: {held})" in out.err
    assert texts["auto"] == texts["plain"] and len(texts["auto"]) > len("def parse(line):")
