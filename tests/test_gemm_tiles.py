"""phikit's own prefill GEMM tiles (`native/gemm_tiles.c`, AVX512-BF16): bf16 weights against the fp32 product, int4
and int8 weights bit for bit against the bf16 tiles on their dequantized rows, and the quantized modules' prefills
running on them where `gemm.tiles_preferred()`."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from phikit.cpu import gemm
from phikit.cpu import kernels as native_kernels
from phikit.cpu import tiles
from phikit.cpu.abi import TilesKind
from phikit.formats import int4 as int4_format
from phikit.formats.configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
from phikit.formats.int4 import Int4Linear
from phikit.formats.int8 import Int8Linear
from phikit.formats.streaming import linear_from_quantized, quantize_linear_weight

pytestmark = pytest.mark.skipif(not tiles.has_gemm_tiles(),
                                reason="the GEMM tiles need AVX512-BF16 at the CPU level in use")


def quantized(config, n: int, k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    linear = nn.Linear(k, n).to(torch.bfloat16)
    return linear_from_quantized(quantize_linear_weight(linear.weight.detach(), config), config, linear.bias)


@pytest.mark.parametrize("m", [1, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("n,k", [(64, 32), (192, 288), (128, 512)])  # 288, 512: past one 256-column panel
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_tiles_are_the_fp32_product_rounded_once(m: int, n: int, k: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16) if with_bias else None
    y = tiles.gemm_tiles(x, TilesKind.BF16, w, n, bias=bias)
    ref = x.double() @ w.double().T + (bias.double() if with_bias else 0)
    # one bf16 rounding of the sum (half an ulp: at most 2^-8 of it) plus fp32 accumulation in another order
    slack = 2.0 ** -8 * ref.abs() + 2.0 ** -20 * (x.double().abs() @ w.double().abs().T)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert ((y.double() - ref).abs() <= slack * 1.0001).all()


@pytest.mark.parametrize("group", [64, 128, 256])
@pytest.mark.parametrize("m", [3, 40])
@pytest.mark.parametrize("k", [256, 768])  # 768: three panels, groups of 256 split by none
def test_int4_tiles_equal_bf16_tiles_on_the_dequantized_rows(group: int, m: int, k: int) -> None:
    module = quantized(Int4WeightOnlyConfig(group), 128, k)
    assert isinstance(module, Int4Linear) and module.layout == "phikit"
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(group + m)).to(torch.bfloat16)
    rows = native_kernels.dequantize_int4_rows(module.qweight, module.scales_and_zeros, group, 0, 128, torch.bfloat16)
    for bias in (module.bias, None):
        y = tiles.gemm_tiles(x, TilesKind.INT4, module.qweight, 128, module.scales_and_zeros, group, bias)
        assert torch.equal(y, tiles.gemm_tiles(x, TilesKind.BF16, rows, 128, bias=bias))


@pytest.mark.parametrize("m", [2, 37])
@pytest.mark.parametrize("k", [64, 320])
def test_int8_tiles_equal_bf16_tiles_on_the_dequantized_rows(m: int, k: int) -> None:
    module = quantized(Int8WeightOnlyConfig(), 192, k)
    assert isinstance(module, Int8Linear) and module.layout == "phikit"
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)).to(torch.bfloat16)
    rows = native_kernels.dequantize_int8_rows(module.qweight, module.scales, 0, 192)
    y = tiles.gemm_tiles(x, TilesKind.INT8, module.qweight, 192, module.scales, bias=module.bias)
    assert torch.equal(y, tiles.gemm_tiles(x, TilesKind.BF16, rows, 192, bias=module.bias))


def test_threads_split_panels_without_changing_a_bit() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 384, generator=gen).to(torch.bfloat16)
    w = torch.randn(320, 384, generator=gen).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tiles.gemm_tiles(x, TilesKind.BF16, w, 320)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(one, tiles.gemm_tiles(x, TilesKind.BF16, w, 320))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("n,k", [(72, 128), (128, 48)])
def test_shapes_the_tiles_do_not_take_raise_naming_them(n: int, k: int) -> None:
    x = torch.zeros(4, k, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"N={n}, K={k}"):
        tiles.gemm_tiles(x, TilesKind.BF16, torch.zeros(n, k, dtype=torch.bfloat16), n)


def test_quantized_layouts_the_tiles_do_not_take_raise_naming_them() -> None:
    x = torch.zeros(4, 192, dtype=torch.bfloat16)  # K % 128 != 0: no int4 weight in phikit's layout has it
    sz = torch.zeros(3, 64, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="K=192, group_size=64"):
        tiles.gemm_tiles(x, TilesKind.INT4, torch.zeros(64, 96, dtype=torch.uint8), 64, sz, 64)
    x = torch.zeros(4, 96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="K=96"):
        tiles.gemm_tiles(x, TilesKind.INT8, torch.zeros(64, 96, dtype=torch.int8), 64, torch.ones(64).bfloat16())


@pytest.mark.skipif(tiles.has_gemm_tiles() and not gemm.tiles_preferred(),
                    reason="oneDNN runs on AMX tiles here: prefills keep its GEMM")
@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(128), Int8WeightOnlyConfig()])
def test_quantized_prefills_run_on_the_tiles(config, monkeypatch) -> None:
    module = quantized(config, 256, 512)
    x = torch.randn(96, 512, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    # int4's kernel / GEMM crossover is timed per process (a loaded machine can put it past 96 rows): this test is
    # about which GEMM a GEMM-sized product takes, so it takes the GEMM side whatever the timing says
    monkeypatch.setattr(int4_format, "uses_gemm", lambda rows: True)
    calls = []
    real = tiles.gemm_tiles
    monkeypatch.setattr(tiles, "gemm_tiles", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    with torch.no_grad():
        y = module(x)
    kind = TilesKind.INT4 if isinstance(config, Int4WeightOnlyConfig) else TilesKind.INT8
    assert calls == [kind]
    ref = x.float() @ module.dequantize().float().T + module.bias.float()
    assert (y.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
