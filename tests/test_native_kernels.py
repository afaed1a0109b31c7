"""phikit's native CPU kernels (phikit/cpu/native/portable.c, kernels.c) against fp32 math, and the paths that pick
them. test_cpu_levels.py reruns this file at every CPU level the host can run."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from phikit.cpu import features
from phikit.cpu import kernels as native_kernels
from phikit.cpu.gemm import FastLinear, gemm_via_fp32, onednn_bf16, use_fast_linears
from phikit.formats.configs import Int8WeightOnlyConfig
from phikit.formats.quantize import quantize_model
from phikit.formats.quantize_math import pack_int8_native, quantize_int8, unpack_int8_native

needs_native = pytest.mark.skipif(not native_kernels.available(),
                                  reason=f"native kernels unavailable here: {native_kernels.build_error}")


def within_bf16(y: torch.Tensor, reference: torch.Tensor) -> None:
    """y (bf16) is the fp32 `reference` rounded once, up to fp32 summation order: within one bf16 step."""
    step = reference.abs() * 2.0**-7 + 1e-6
    assert bool(((y.float() - reference).abs() <= step).all()), (y.float() - reference).abs().max()


@needs_native
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n", [40, 257])  # 257: bf16 rows left over after the 8-row blocks
@pytest.mark.parametrize("k", [192, 208])  # 208: bf16 columns left over after the 32-column dot products
def test_bf16_and_int8_kernels_equal_fp32_math(m: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16()
    within_bf16(native_kernels.linear_bf16(x, w, b), x.float() @ w.float().t() + b.float())
    within_bf16(native_kernels.linear_bf16(x, w, None), x.float() @ w.float().t())
    if k % 64 or n % 4:
        return  # the int8 kernel takes N % 4 == 0, K % 64 == 0 (other layers run aten's kernel)
    q, s = quantize_int8(w)
    exact = x.float() @ (q.float() * s.float()[:, None]).t()
    within_bf16(native_kernels.linear_int8(x, pack_int8_native(q), s, None), exact)
    within_bf16(native_kernels.linear_int8(x, pack_int8_native(q), s, b), exact + b.float())


@needs_native
def test_one_openmp_runtime_is_shared_with_torch() -> None:
    # a fresh process: other libraries of the test session (sentencepiece) bring their own runtimes
    code = ("import torch, phikit.cpu.kernels as n; assert n.available(); "
            "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runtimes = ast.literal_eval(out.stdout)
    assert len(runtimes) == 1, runtimes  # two runtimes would mean two spinning thread pools on the same cores


def test_disabled_by_environment_variable() -> None:
    code = "import phikit.cpu.kernels as n; print(n.available(), n.build_error)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != "PHIKIT_CPU_LEVEL"}, "PHIKIT_NATIVE": "0"},
                         check=True)
    available, reason = out.stdout.strip().split(" ", 1)
    assert available == "False" and "PHIKIT_NATIVE=0" in reason


def test_gemm_via_fp32_rounds_the_fp32_product_once() -> None:
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(40, 64, generator=gen).bfloat16(), torch.randn(100, 64, generator=gen).bfloat16()
    b = torch.randn(100, generator=gen).bfloat16()
    y = gemm_via_fp32(x, lambda a, c: w[a:c].float(), 100, b)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (x.float() @ w.float().t() + b.float()).bfloat16())


@pytest.mark.parametrize("rows", [1, 5, 64, 128])  # decode (native), short prefill (oneDNN), long (fp32 GEMM)
def test_fast_linear_matches_linear(rows: int) -> None:
    torch.manual_seed(0)
    plain = nn.Linear(128, 96).bfloat16()
    fast = nn.Linear(128, 96).bfloat16()
    fast.load_state_dict(plain.state_dict())
    assert use_fast_linears(fast) == 1 and type(fast) is FastLinear
    x = torch.randn(rows, 128).bfloat16()
    with torch.no_grad():
        within_bf16(fast(x), x.float() @ plain.weight.float().t() + plain.bias.float())
        fast.weight.add_(1.0)  # a changed weight is seen (repacked where decode uses a packed copy)
        within_bf16(fast(x), x.float() @ fast.weight.float().t() + plain.bias.float())
    out = fast(x.requires_grad_())  # grad enabled: F.linear, gradients flow
    out.sum().backward()
    assert x.grad is not None and fast.weight.grad is not None


@pytest.mark.parametrize("rows", [16, 64])
def test_biased_bf16_gemm_equals_f_linear_bit_for_bit(rows: int) -> None:
    """A prefill's biased bf16 linear lets oneDNN add the bias inside the GEMM (no copy of it into every output row
    first): the very numbers of F.linear, on a strided input too. Where oneDNN has no bf16 GEMM (CPU levels below
    avx512) the product runs as an fp32 GEMM on widened weights, rounded to bf16 once: the fp32 result's rounding."""
    torch.manual_seed(0)
    fast = nn.Linear(256, 192).bfloat16()
    w, b = fast.weight.detach().clone(), fast.bias.detach().clone()
    use_fast_linears(fast)
    x = torch.randn(2, rows, 512).bfloat16()[..., ::2]  # [2, rows, 256], not contiguous
    with torch.no_grad():
        if not onednn_bf16():
            exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
            torch.testing.assert_close(fast(x).double(), exact, rtol=2**-8, atol=1e-6)  # one bf16 rounding
            return
        # (F.linear itself rounds twice, product then bias, on a non-contiguous 3D input: compare rows as addmm does)
        assert torch.equal(fast(x), torch.nn.functional.linear(x.reshape(-1, 256), w, b).view(2, rows, 192))
        assert torch.equal(fast(x.contiguous()), torch.nn.functional.linear(x.contiguous(), w, b))


@needs_native
@pytest.mark.parametrize("rows", [1, 16, 128])
def test_int8_linear_uses_exact_dequantized_weights(rows: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 72)).bfloat16()
    w, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    quantize_model(model, Int8WeightOnlyConfig(), skip=())
    q, s = quantize_int8(w)
    x = torch.randn(rows, 128).bfloat16()
    with torch.no_grad():
        y = model(x)
    exact = x.float() @ (q.float() * s.float()[:, None]).t()
    # kernel: fp32 product (+ bias) rounded once; the generic fallback rounds the weight to bf16 first
    close = (y.float() - (exact + b.float())).abs() <= (exact + b.float()).abs() * 2.0**-7 + 2.0**-7
    assert bool(close.all())


@needs_native
def test_int8_rows_dequantize_exactly_into_the_buffer_given() -> None:
    """The fp32 rows a prefill's fp32 GEMM multiplies: q * scale bit for bit, from phikit's layout, into `out`."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (24, 192), generator=gen, dtype=torch.int8)
    s = (torch.rand(24, generator=gen) * 0.01).bfloat16()
    out = torch.full((13, 192), float("nan"))
    rows = native_kernels.dequantize_int8_rows_f32(pack_int8_native(q), s, 6, 19, out)
    assert rows.data_ptr() == out.data_ptr()
    assert torch.equal(rows, q[6:19].float() * s[6:19, None].float())
    with pytest.raises(ValueError, match=r"out must be contiguous torch.float32 \(13, 192\)"):
        native_kernels.dequantize_int8_rows_f32(pack_int8_native(q), s, 6, 19, out[:, :100])


@needs_native
@pytest.mark.parametrize("heads,kv_heads,positions", [(4, 4, 37), (8, 2, 16), (6, 3, 1)])
def test_decode_attention_equals_fp32_softmax_attention(heads: int, kv_heads: int, positions: int) -> None:
    """One query per row over a cache slice (strided views, grouped kv heads, two rows), as a decode step runs it."""
    gen = torch.Generator().manual_seed(heads * 100 + positions)
    cache_k = torch.randn(2, kv_heads, positions + 9, 32, generator=gen).bfloat16()
    cache_v = torch.randn(2, kv_heads, positions + 9, 32, generator=gen).bfloat16()
    k, v = cache_k[:, :, :positions], cache_v[:, :, :positions]  # what StaticCache.update returns
    q = torch.randn(2, 1, heads, 32, generator=gen).bfloat16().transpose(1, 2)  # [B, H, 1, D] view
    out = native_kernels.attention_decode(q, k, v, 32**-0.5)
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=32**-0.5,
                                                                 enable_gqa=True).transpose(1, 2)
    assert out.shape == (2, 1, heads, 32)
    within_bf16(out, reference)
    assert native_kernels.attention_decode(q.float(), k.float(), v.float(), 0.1) is None  # fp32: not this kernel


@needs_native
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_decode_attention_rows_equal_each_row_alone(heads: int, kv_heads: int) -> None:
    """A decode batch over a KV pool in one call (each row its own pool row, first key and length, in any order)
    gives each row what the one-row kernel gives on that row's keys alone, bit for bit, and the reference's numbers;
    the reference table's version (row by row through SDPA) agrees; what the kernel cannot take gets None."""
    from phikit.ops import reference

    gen = torch.Generator().manual_seed(heads)
    keys = torch.randn(6, kv_heads, 50, 32, generator=gen).bfloat16()  # [N, KV, T, D] pool
    values = torch.randn(6, kv_heads, 50, 32, generator=gen).bfloat16()
    q = torch.randn(4, 1, heads, 32, generator=gen).bfloat16().transpose(1, 2)  # [B, H, 1, D]
    rows, first, lengths = torch.tensor([5, 0, 3, 1]), torch.tensor([0, 4, 0, 20]), torch.tensor([1, 50, 17, 33])
    out = native_kernels.attention_decode_rows(q, keys, values, rows, first, lengths, 32**-0.5)
    alone = torch.cat([native_kernels.attention_decode(q[b:b + 1], keys[r:r + 1, :, f:n], values[r:r + 1, :, f:n],
                                                       32**-0.5)
                       for b, (r, f, n) in enumerate(zip(rows.tolist(), first.tolist(), lengths.tolist()))])
    assert out.shape == (4, 1, heads, 32) and torch.equal(out, alone)
    ref = reference.rows_decode_attention(q.float(), keys.float(), values.float(), rows, first, lengths, 32**-0.5)
    within_bf16(out, ref)
    assert native_kernels.attention_decode_rows(q, keys, values, rows, first, lengths + 1, 0.1) is None  # past T
    assert native_kernels.attention_decode_rows(q, keys, values, rows, lengths, lengths, 0.1) is None  # no keys
    assert native_kernels.attention_decode_rows(q, keys, values, rows + 1, first, lengths, 0.1) is None  # row 6 of 6


@pytest.mark.skipif(not native_kernels.has_bf16_dot(), reason="the prefill attention kernel needs AVX512-BF16")
@pytest.mark.parametrize("batch,heads,kv_heads,positions,dim", [(1, 4, 4, 37, 64), (2, 8, 2, 100, 96),
                                                                (1, 6, 3, 1, 32), (1, 2, 1, 70, 80)])
def test_prefill_attention_equals_fp32_causal_attention(batch, heads, kv_heads, positions, dim) -> None:
    """Causal attention of a whole prompt (strided views of q and of a longer cache, grouped kv heads, lengths off
    the kernel's 8-row and 32-key blocks): within what bf16 inputs allow, as close as PyTorch's own bf16 kernel."""
    gen = torch.Generator().manual_seed(heads * 100 + positions)
    q = torch.randn(batch, positions, heads, dim, generator=gen).bfloat16().transpose(1, 2)  # [B, H, T, D] view
    cache_k = torch.randn(batch, kv_heads, positions + 9, dim, generator=gen).bfloat16()
    cache_v = torch.randn(batch, kv_heads, positions + 9, dim, generator=gen).bfloat16()
    k, v = cache_k[:, :, :positions], cache_v[:, :, :positions]
    out = native_kernels.attention_prefill(q, k, v, dim**-0.5)
    # kv heads packed one or two at a time (what a long prompt gets) give the same numbers
    head_bytes = (positions + 31) // 32 * 32 * dim * 4
    for pack_bytes in (1, 2 * head_bytes):
        assert torch.equal(native_kernels.attention_prefill(q, k, v, dim**-0.5, pack_bytes), out)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    reference = sdpa(q.float(), k.float(), v.float(), scale=dim**-0.5, is_causal=True, enable_gqa=True)
    torch_bf16 = sdpa(q, k, v, scale=dim**-0.5, is_causal=True, enable_gqa=True)
    assert out.shape == (batch, positions, heads, dim)
    error = (out.float() - reference.transpose(1, 2)).abs().max()
    assert error <= max(2 * (torch_bf16.float() - reference).abs().max(), 2.0**-8)
    assert native_kernels.attention_prefill(q.float(), k.float(), v.float(), 0.1) is None  # fp32: PyTorch's


@needs_native
def test_bf16_decode_with_native_attention_matches_sdpa(monkeypatch) -> None:
    """A bf16 model's cached decode steps (native attention) give the logits of the same steps through SDPA."""
    import phikit
    from tests.oracle import make_config

    torch.manual_seed(0)
    model = phikit.PhiForCausalLM(make_config("phi-1.5")).bfloat16().eval()  # head_dim 16
    ids = torch.randint(3, 90, (1, 12))
    real, calls = native_kernels.attention_decode, []
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")  # the per-module path (the native step is tested on its own)
    monkeypatch.setattr(native_kernels, "attention_decode", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ours = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
        # every cached step, every layer; and the prefill's last layer, whose one query that the next token
        # needs attends to every key as a decode step does
        assert len(calls) == 5 * model.config.num_hidden_layers + 1
        monkeypatch.setattr(native_kernels, "attention_decode", lambda *a: None)
        sdpa = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True,
                              return_dict_in_generate=True)
    for a, b in zip(ours.scores, sdpa.scores):
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-6, atol=2**-5)


@pytest.mark.skipif(not native_kernels.has_bf16_dot(), reason="the prefill attention kernel needs AVX512-BF16")
@pytest.mark.parametrize("arch", ["phi-1.5", "phi-4-mini"])  # phi-4-mini: grouped kv heads
def test_bf16_prefill_with_native_attention_matches_sdpa(arch: str, monkeypatch) -> None:
    """A bf16 model's whole-prompt forward takes the native causal attention in every layer and gives the logits
    of PyTorch's SDPA within bf16 noise."""
    import phikit
    from tests.oracle import make_config

    torch.manual_seed(0)
    cls = phikit.PhiForCausalLM if arch == "phi-1.5" else phikit.Phi3ForCausalLM
    model = cls(make_config(arch)).bfloat16().eval()
    ids = torch.randint(3, 90, (2, 45))
    real, calls = native_kernels.attention_prefill, []
    monkeypatch.setattr(native_kernels, "attention_prefill", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ours = model(ids).logits.float()
        assert len(calls) == model.config.num_hidden_layers
        monkeypatch.setattr(native_kernels, "attention_prefill", lambda *a: None)
        sdpa = model(ids).logits.float()
    torch.testing.assert_close(ours, sdpa, rtol=2**-6, atol=2**-5)


def test_kernels_build_wherever_the_cpu_and_a_compiler_allow() -> None:
    """A compile error must fail here, not quietly skip every native test and fall back to PyTorch's kernels."""
    import shutil

    if not (os.environ.get("CC") or shutil.which("cc")):
        pytest.skip("no C compiler")
    if features.level() == "reference":
        pytest.skip("CPU level reference runs no native code")
    assert native_kernels.available(), native_kernels.build_error
    assert native_kernels.has_int4()  # the portable kernel (portable.c) at every level
    bf16 = features.at_least("avx512_bf16")
    assert native_kernels.has_decode_step()  # decode_step.c is portable too
    assert native_kernels.has_bf16_dot() == native_kernels.has_c12() == bf16


@pytest.mark.skipif(not native_kernels.has_decode_step(), reason="CPU level reference runs no native kernels")
@pytest.mark.parametrize("batch,heads,positions,dim,rotary,table_rows", [
    (1, 32, 300, 64, 32, 1),  # phi-1.5: half the dims rotate
    (2, 8, 200, 80, 32, 2),  # phi-2 (0.4), one table per row (left padding)
    (1, 12, 150, 96, 96, 1),  # Phi-3: every dim
    (2, 6, 100, 128, 96, 2),  # Phi-4-mini (0.75)
])
def test_prefill_rotary_equals_the_four_torch_ops(batch, heads, positions, dim, rotary, table_rows) -> None:
    """A bf16 prefill's rotary embedding runs natively in one pass, bit for bit RotaryTables' PyTorch ops, on a
    strided view of a fused projection; small tensors and fp32 keep PyTorch's ops."""
    from phikit.model.rope import RotaryTables

    gen = torch.Generator().manual_seed(positions)
    fused = (torch.randn(batch, positions, 3 * heads * dim, generator=gen) * 4).bfloat16()
    x = fused[..., heads * dim:2 * heads * dim].view(batch, positions, heads, dim).transpose(1, 2)  # k's view
    angles = torch.randn(table_rows, positions, rotary // 2, generator=gen) * 50
    emb = torch.cat([angles, angles], -1)
    tables = RotaryTables.build(emb.cos().bfloat16(), emb.sin().bfloat16(), dim)
    half = rotary // 2
    partnered = torch.cat((x[..., half:rotary], x[..., :half], x[..., rotary:]), dim=-1)
    reference = x * tables.cos_full + partnered * tables.sin_signed
    fast = native_kernels.rotary(x, tables.cos_full, tables.sin_signed, rotary)
    assert fast is not None and torch.equal(fast, reference)
    assert torch.equal(tables.apply(x), reference)  # the module path takes it
    assert native_kernels.rotary(x[:, :, :2], tables.cos_full[:, :, :2], tables.sin_signed[:, :, :2], rotary) is None
    assert native_kernels.rotary(x.float(), tables.cos_full.float(), tables.sin_signed.float(), rotary) is None


@needs_native
def test_logits_to_keep_under_autograd_gives_every_gradient() -> None:
    """With gradients on, a bf16 forward that keeps one position's logits sends the last layer's one query to
    PyTorch's attention (the native one-query kernel has no backward): every weight gets the gradient the full
    forward gives for the same loss."""
    import phikit
    from tests.oracle import make_config

    torch.manual_seed(0)
    model = phikit.PhiForCausalLM(make_config("phi-1.5")).bfloat16()  # head_dim 16: the native kernels apply
    ids = torch.randint(3, 90, (2, 30))
    grads = []
    for keep in (1, 0):
        model.zero_grad()
        model(ids, logits_to_keep=keep).logits[:, -1].float().square().mean().backward()
        grads.append({n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None})
    kept, full = grads
    assert kept.keys() == full.keys() and "model.layers.1.self_attn.q_proj.weight" in kept
    for name in full:
        torch.testing.assert_close(kept[name], full[name], rtol=2**-5, atol=2**-7 * full[name].abs().max().item())


@needs_native
@pytest.mark.parametrize("rows,k", [(2, 256), (3, 256), (4, 256), (5, 400), (8, 256), (17, 400), (64, 2064)])
def test_bf16_matvec_of_several_rows_equals_each_row_alone_bit_for_bit(rows: int, k: int) -> None:
    """A serving engine decodes several rows in one call, and below AVX-512 a prefill of up to 64 rows runs through
    the same kernel (`gemm.native_bf16_rows`); each row's output must be the very numbers of that row alone (the
    two-row kernel sums in the one-row order), whatever its neighbours, here at N % 4 != 0 and odd rows too."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(203, k, generator=gen).bfloat16()
    b = torch.randn(203, generator=gen).bfloat16()
    x = torch.randn(rows, k, generator=gen).bfloat16()
    together = native_kernels.linear_bf16(x, w, b)
    for m in range(rows):
        assert torch.equal(together[m], native_kernels.linear_bf16(x[m:m + 1], w, b)[0]), m
    within_bf16(together, x.float() @ w.float().t() + b.float())


@pytest.mark.skipif(not native_kernels.available(), reason="native kernels unavailable")
def test_int4_byte_dot_is_reported_where_the_portable_kernel_has_it() -> None:
    """x86 builds below AVX512-BF16 run the byte kernel (vpmaddubsw); AVX512-BF16 runs kernels.c's bf16 one;
    aarch64 has it only with the dot-product extension (tests/test_native_c.py runs that build under qemu)."""
    level = features.level()
    if level in ("avx2", "avx512"):
        assert native_kernels.has_int4_byte_dot()
    elif level == "avx512_bf16":
        assert native_kernels.has_bf16_dot() and not native_kernels.has_int4_byte_dot()
    assert native_kernels.has_int4_byte_dot() <= native_kernels.has_int4()
