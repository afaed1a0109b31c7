"""The CPU backend: the `Ops` table of the CPU level in use (`ops.py`), the fused batch-1 decode step
(`decode_step.py`), and `prepare`, which the loader calls on a model it builds for the CPU."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...cpu.gemm import FastLinear, native_bf16_rows, use_fast_linears
from ...formats import int4, int8
from ...ops import Ops, bind
from .ops import cpu_ops


def ops() -> Ops:
    """The table every CPU model of this process uses (built once, for the CPU level in use)."""
    return cpu_ops()


def prepare(model: nn.Module, dtype: torch.dtype) -> None:
    """Bind the CPU ops and make the module swaps for `dtype` (`adopt_dtype`). Runs before the weights are read."""
    bind(model, cpu_ops())
    adopt_dtype(model, dtype)


def adopt_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """For bf16 weights make every plain linear a `FastLinear` (a class swap: state_dict, LoRA and quantization
    passes still see an nn.Linear; other dtypes keep nn.Linear). The loader calls it through `prepare`, and a model
    cast to bf16 after construction (`.to(torch.bfloat16)`) through its `_apply`. Where decode uses oneDNN-packed
    copies, a head tied to the embedding stays a plain linear so the embedding is not copied."""
    if dtype == torch.bfloat16:
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        use_fast_linears(model, skip=("lm_head",) if tied and FastLinear.needs_packing() else ())


def decode_rows() -> int:
    """Rows a batched decode forward holds at most here: the fewest any weight format's matrix-vector kernel takes
    (bf16 `native_bf16_rows()`, int8 and int4 `native_rows()`), so every linear of the step stays on its kernel: 8
    where oneDNN's bf16 GEMM takes over (AVX-512), 23 at AVX2 and NEON (int4's limit)."""
    return min(native_bf16_rows(), int8.native_rows() - 1, int4.native_rows() - 1)
