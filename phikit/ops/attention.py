"""The attention implementations a config names (`attn_implementation`): eager, sdpa and flash_attention_2.

Each takes q [B, H, T, D], k/v [B, KV, S, D], an additive bias [B or 1, 1, T, S] and the model's `Ops`, and returns
the output [B, T, H, D] and, for eager, the attention weights [B, H, T, S]. fp16 is computed in fp32 (phi-2's
attention scores overflow fp16; on CPUs fp16 matmuls are also far slower than fp32). Where the bias is plain
causality (`plain_causal`: no padding, no active window), sdpa hands a decode step to `ops.decode_attention` and a
whole prompt to `ops.causal_attention`, the two places a backend's attention kernels plug in.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from .reference import repeat_kv, sdpa
from .table import REFERENCE, Ops

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                    dropout: float = 0.0, training: bool = False, plain_causal: bool = False, ops: Ops = REFERENCE
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = q.dtype
    if dtype == torch.float16:
        q, k, v, bias = q.float(), k.float(), v.float(), bias.float()
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale + bias  # [B, H, T, S]
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout, training=training)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()  # [B, T, H, D]
    return out.to(dtype), weights.to(dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                   dropout: float = 0.0, training: bool = False, plain_causal: bool = False, ops: Ops = REFERENCE
                   ) -> tuple[torch.Tensor, None]:
    dropout = dropout if training else 0.0
    if plain_causal and not dropout:
        # Without padding or window the bias is plain causality: one query (a decode step) sees every key, and a
        # whole-sequence forward may let the kernel skip the masked blocks instead of adding the bias to them.
        if q.shape[2] == 1:
            return ops.decode_attention(q, k, v, scale), None
        if q.shape[2] == k.shape[2]:
            return ops.causal_attention(q, k, v, scale), None
    if plain_causal and q.shape[2] == 1:
        return sdpa(q, k, v, scale, dropout=dropout), None
    causal = plain_causal and q.shape[2] == k.shape[2]
    return sdpa(q, k, v, scale, None if causal else bias, causal=causal, dropout=dropout), None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                    dropout: float = 0.0, training: bool = False, plain_causal: bool = False, ops: Ops = REFERENCE
                    ) -> tuple[torch.Tensor, None]:
    """flash-attn 2 when the mask is purely causal (no padding, no active window, no unused static slots);
    anything else falls back to sdpa with the exact mask, so numbers never change with the kernel."""
    from flash_attn import flash_attn_func  # optional (CUDA only); `check_attention_implementation` checked it

    if not plain_causal:
        return sdpa_attention(q, k, v, bias, scale, dropout, training, ops=ops)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout if training
                          else 0.0, softmax_scale=scale, causal=q.shape[2] > 1)
    return out, None


def ragged_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                            lengths: torch.Tensor, scale: float, window: int | None, ops: Ops = REFERENCE
                            ) -> torch.Tensor:
    """q [B, H, 1, D] over a KV pool keys / values [N, KV, T, D]: row b's keys are keys[rows[b], :, :lengths[b]]
    (up to and including its new one) -> [B, 1, H, D]. Each row is the one-query step it would be alone, over its own
    keys (the last `window` of them under a sliding window), so a row's output does not depend on the other rows;
    `ops.rows_decode_attention` runs them all in one call."""
    first = (lengths - window).clamp_min(0) if window is not None else torch.zeros_like(lengths)
    return ops.rows_decode_attention(q, keys, values, rows, first, lengths, scale)


ATTENTION_FUNCTIONS: dict[str, AttentionFn] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "flash_attention_2": flash_attention,
}


def check_attention_implementation(name: str, device: torch.device | None = None) -> None:
    """Raise a clear error when `name` cannot run here."""
    if name not in ATTENTION_FUNCTIONS:
        raise ValueError(f"attn_implementation={name!r} is not one of {sorted(ATTENTION_FUNCTIONS)}")
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ImportError("attn_implementation='flash_attention_2' needs the flash-attn package "
                              "(pip install flash-attn) and a CUDA GPU; use attn_implementation='sdpa' instead")
        if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
            raise ValueError("attn_implementation='flash_attention_2' runs only on a CUDA GPU; move the model "
                             "with .to('cuda') or use attn_implementation='sdpa'")
