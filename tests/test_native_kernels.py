"""phikit's native CPU kernels (phikit/native/kernels.c) against fp32 math, and the paths that pick them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from phikit import native_kernels
from phikit.cpu_kernels import FastLinear, gemm_via_fp32, use_fast_linears
from phikit.quantize import Int8WeightOnlyConfig, quantize_model
from phikit.quantize_math import quantize_int8

needs_native = pytest.mark.skipif(not native_kernels.available(),
                                  reason=f"native kernels unavailable here: {native_kernels.build_error}")


def within_bf16(y: torch.Tensor, reference: torch.Tensor) -> None:
    """y (bf16) is the fp32 `reference` rounded once, up to fp32 summation order: within one bf16 step."""
    step = reference.abs() * 2.0**-7 + 1e-6
    assert bool(((y.float() - reference).abs() <= step).all()), (y.float() - reference).abs().max()


@needs_native
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n", [40, 257])  # 257: rows left over after the 4- and 8-row blocks
def test_bf16_and_int8_kernels_equal_fp32_math(m: int, n: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n)
    k = 192
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16()
    within_bf16(native_kernels.linear_bf16(x, w, b), x.float() @ w.float().t() + b.float())
    within_bf16(native_kernels.linear_bf16(x, w, None), x.float() @ w.float().t())
    q, s = quantize_int8(w)
    exact = x.float() @ (q.float() * s.float()[:, None]).t()
    within_bf16(native_kernels.linear_int8(x, q, s, None), exact)
    within_bf16(native_kernels.linear_int8(x, q, s, b), exact + b.float())


@needs_native
def test_one_openmp_runtime_is_shared_with_torch() -> None:
    # a fresh process: other libraries of the test session (sentencepiece) bring their own runtimes
    code = ("import torch, phikit.native_kernels as n; assert n.available(); "
            "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runtimes = ast.literal_eval(out.stdout)
    assert len(runtimes) == 1, runtimes  # two runtimes would mean two spinning thread pools on the same cores


def test_disabled_by_environment_variable() -> None:
    code = "import phikit.native_kernels as n; print(n.available(), n.build_error)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PHIKIT_NATIVE": "0"}, check=True)
    assert out.stdout.strip() == "False disabled by PHIKIT_NATIVE=0"


def test_gemm_via_fp32_rounds_the_fp32_product_once() -> None:
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(40, 64, generator=gen).bfloat16(), torch.randn(100, 64, generator=gen).bfloat16()
    b = torch.randn(100, generator=gen).bfloat16()
    y = gemm_via_fp32(x, lambda a, c: w[a:c].float(), 100, b)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (x.float() @ w.float().t() + b.float()).bfloat16())


@pytest.mark.parametrize("rows", [1, 5, 64])  # decode-sized (native kernel) and prefill-sized (fp32 GEMM)
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


@needs_native
@pytest.mark.parametrize("rows", [1, 64])
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
