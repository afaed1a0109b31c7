"""The CPU backend's `Ops` table for the CPU level in use (`phikit/cpu/features.py`), built once per process.

Each op of the table is the native kernel where this level has one, else the reference function. A native op
hands what its kernel does not take (not bf16, not on the CPU, under autograd, too small to pay) to the reference
function, so the numbers are the reference's wherever the kernel does not run:

| op | native from level | kernel |
|---|---|---|
| decode_attention | every native level | one-query attention over the cache (`native/portable.c`); with it
  rows_decode_attention, a decode batch over the KV pool, each row at its own length, in one call |
| causal_attention | avx512_bf16 | causal attention of a whole prompt (`native/attention_prefill.c`) |
| rms_norm, rotary | every native level | row-parallel passes (`native/decode_step.c`) |
| gelu_new, silu(gate) * up | every native level | lookups in a table of PyTorch's own results for every bf16 input |
| decode_step | every native level | every phi / phi3 layer of a batch-1 token in one call (`decode_step.py`) |
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from ...cpu import features
from ...cpu import kernels as native
from ...ops import Ops, reference, register
from ...ops.activations import ACTIVATIONS, GATED, gelu_new
from . import decode_step


def native_gelu_new(x: torch.Tensor) -> torch.Tensor:
    fast = native.lookup(x, gelu_new)
    return fast if fast is not None else gelu_new(x)


def native_silu_gated(gate_up: torch.Tensor) -> torch.Tensor:
    fast = native.silu_gated(gate_up, F.silu)
    return fast if fast is not None else GATED["silu"](gate_up)


def native_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    fast = native.rms_norm(x, weight, eps)
    return fast if fast is not None else reference.rms_norm(x, weight, eps)


def native_rotary(x: torch.Tensor, cos_full: torch.Tensor, sin_signed: torch.Tensor, rotary_dims: int
                  ) -> torch.Tensor:
    fast = native.rotary(x, cos_full, sin_signed, rotary_dims)
    return fast if fast is not None else reference.rotary(x, cos_full, sin_signed, rotary_dims)


def native_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    fast = native.attention_prefill(q, k, v, scale)
    return fast if fast is not None else reference.causal_attention(q, k, v, scale)


def native_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    fast = native.attention_decode(q, k, v, scale)
    return fast if fast is not None else reference.decode_attention(q, k, v, scale)


def native_rows_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                                 first: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    fast = native.attention_decode_rows(q, keys, values, rows, first, lengths, scale)
    return fast if fast is not None else reference.rows_decode_attention(q, keys, values, rows, first, lengths, scale)


def fused_decode_step(*args) -> torch.Tensor | None:
    """`decode_step.step` (looked up on each call, so a test may wrap it)."""
    return decode_step.step(*args)


# op -> the CPU level from which it runs natively (the table in the module docstring); "native": every level but
# reference (avx2 and up on x86-64, neon on aarch64: the portable kernels)
NATIVE_FROM = {"decode_attention": "native", "causal_attention": "avx512_bf16", "rms_norm": "native",
               "rotary": "native", "gelu_new": "native", "silu_gated": "native", "decode_step": "native"}
KERNELS = {"decode_attention": "native one-query attention (bf16; a decode batch in one call)",
           "causal_attention": "native prefill attention (bf16)", "rms_norm": "native row-parallel (bf16)",
           "rotary": "native one pass (bf16)", "gelu_new": "native table lookup (bf16)",
           "silu_gated": "native table lookup (bf16)",
           "decode_step": "native batch-1 step of all layers (bf16 / lossless / int8 / int4 linears)"}
log = logging.getLogger("phikit.backends.cpu")


def why_not_native(op: str) -> str | None:
    """Why `op` runs the reference function in this process, or None where it runs natively."""
    needed = NATIVE_FROM[op]
    if needed == "native" and features.level() == "reference" or needed != "native" and not features.at_least(needed):
        choice = features.level_choice()
        why = f"; {choice.reason}" if choice.reason else ""
        return f"needs CPU level {needed}, this process runs {choice.level}{why}"
    if not native.available():
        return f"the native kernels are unavailable: {native.build_error}"
    if needed == "avx512_bf16" and not native.has_bf16_dot():
        return "the C compiler built no AVX512-BF16 kernels (a newer gcc or clang would)"
    return None


@functools.lru_cache(maxsize=None)
def cpu_ops() -> Ops:
    """The table for this process's CPU level (registered as "cpu-<level>"); the reason each op keeps the
    reference function is logged once, at debug level."""
    native_ops = {op for op in NATIVE_FROM if why_not_native(op) is None}
    changes: dict = {}
    if "decode_attention" in native_ops:
        changes["decode_attention"] = native_decode_attention
        changes["rows_decode_attention"] = native_rows_decode_attention
    if "causal_attention" in native_ops:
        changes["causal_attention"] = native_causal_attention
    if "rms_norm" in native_ops:
        changes["rms_norm"] = native_rms_norm
    if "rotary" in native_ops:
        changes["rotary"] = native_rotary
    if "gelu_new" in native_ops:
        changes["activations"] = {**ACTIVATIONS, "gelu_new": native_gelu_new, "gelu_fast": native_gelu_new}
    if "silu_gated" in native_ops:
        changes["gated"] = {**GATED, "silu": native_silu_gated, "swish": native_silu_gated}
    if "decode_step" in native_ops:  # PHIKIT_NATIVE_STEP=0 still turns it off, call by call (a debugging switch)
        changes["decode_step"] = fused_decode_step
    for op in sorted(set(NATIVE_FROM) - native_ops):
        log.debug("phikit: %s runs PyTorch's reference ops: %s", op, why_not_native(op))
    kernels = {op: KERNELS[op] for op in sorted(native_ops)}
    return register(Ops(f"cpu-{features.level()}", kernels=kernels, **changes))
