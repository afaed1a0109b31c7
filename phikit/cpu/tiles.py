"""phikit's own prefill GEMM tiles (`native/gemm_tiles.c`, AVX512-BF16) from Python: y [M, N] = x [M, K] @ W^T
(+ bias) for a bf16, int4 or int8 weight in its format's layout, the weight dequantized panel by panel as the tiles
pack it. Quantized prefills run on it where `gemm.tiles_preferred()` (formats/int4.py, formats/int8.py)."""

from __future__ import annotations

import torch

from . import features, kernels
from .kernels import _ptr
from .abi import TilesKind


def has_gemm_tiles() -> bool:
    """Whether phikit's own prefill GEMM (`native/gemm_tiles.c`: bf16, int4 and int8 weights, AVX512-BF16) runs here."""
    lib = kernels._library()
    return lib is not None and bool(lib.phk_has_gemm_tiles())


def gemm_tiles_ok(n: int, k: int) -> bool:
    """Whether `gemm_tiles` takes a weight of N = n rows and K = k columns (N % 64 == 0, K % 32 == 0)."""
    return has_gemm_tiles() and bool(kernels._library().phk_gemm_tiles_ok(n, k))


def gemm_tiles(x: torch.Tensor, kind: TilesKind, weight: torch.Tensor, n: int, sz: torch.Tensor | None = None,
               group_size: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y bf16 [M, N] = x [M, K] @ W^T (+ bias) on phikit's own GEMM tiles (`native/gemm_tiles.c`), W given in its
    format's layout: `kind` BF16 (weight bf16 [N, K]), INT4 (phikit's int4 layout, sz = scales_and_zeros, group_size)
    or INT8 (phikit's int8 layout, sz = scales). Each weight value is the bf16 its dequantized rows hold, accumulated
    in fp32 with the bias and rounded once: a quantized weight gives bit for bit BF16's output on those rows. x, sz
    and bias bf16 and contiguous; `gemm_tiles_ok(n, K)` must hold."""
    m, k = x.shape
    if not gemm_tiles_ok(n, k):
        raise ValueError(f"gemm_tiles takes N % 64 == 0 and K % 32 == 0 on a CPU with AVX512-BF16; got N={n}, K={k} "
                         f"at CPU level {features.level()}")
    if kind == TilesKind.INT4 and (k % 128 or group_size not in (64, 128, 256)):
        raise ValueError(f"int4 tiles take phikit's int4 layout (K % 128 == 0, group_size 64, 128 or 256); got K={k}, "
                         f"group_size={group_size}")
    if kind == TilesKind.INT8 and k % 64:
        raise ValueError(f"int8 tiles take phikit's int8 layout (K % 64 == 0); got K={k}")
    y = torch.empty(m, n, dtype=torch.bfloat16)
    kernels._library().phk_gemm_tiles(_ptr(x), int(kind), _ptr(weight), _ptr(sz), group_size, _ptr(bias), _ptr(y),
                                      m, n, k, torch.get_num_threads())
    return y
