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


# Rows a batched decode forward holds at most on the CPU. Every product of a step picks its own kernel by its rows
# (matrix-vector kernel or GEMM), and each costs about a + b rows either way, so one forward over all running rows
# costs less than groups that each stream every weight again. Measured on the Zen 4 host (2 threads, phi-1.5's eight
# weight shapes, bf16): 16 rows in one oneDNN GEMM 21.1 ms, as two forwards of 8 on the native kernel 30.7 ms; 24
# rows 25.5 against 41.0. Served phi-1.5 at 16 streams went from 0.94x / 1.03x llama-server's throughput (bf16 /
# int4, in groups of 8: the fewest rows any format's kernel took) to 1.09x / 1.07x (`benchmarks/RESULTS.md`).
DECODE_ROWS = 256


def decode_rows() -> int:
    """Rows a batched decode forward holds at most here (`DECODE_ROWS`): past the matrix-vector kernels' rows the
    linears turn into GEMMs, which costs less than splitting the batch."""
    return DECODE_ROWS
