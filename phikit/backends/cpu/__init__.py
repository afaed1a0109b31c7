"""The CPU backend: the `Ops` table of the CPU level in use (`ops.py`), the fused batch-1 decode step
(`decode_step.py`), and `prepare`, which the loader calls on a model it builds for the CPU."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...cpu.gemm import FastLinear, use_fast_linears
from ...ops import Ops, bind
from .ops import cpu_ops


def ops() -> Ops:
    """The table every CPU model of this process uses (built once, for the CPU level in use)."""
    return cpu_ops()


def prepare(model: nn.Module, dtype: torch.dtype) -> None:
    """Bind the CPU ops and, for bf16 weights, make every plain linear a `FastLinear` (a class swap: state_dict,
    LoRA and quantization passes still see an nn.Linear). Runs before the weights are read: where decode uses
    oneDNN-packed copies, a head tied to the embedding stays a plain linear so the embedding is not copied."""
    bind(model, cpu_ops())
    if dtype == torch.bfloat16:
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        use_fast_linears(model, skip=("lm_head",) if tied and FastLinear.needs_packing() else ())
