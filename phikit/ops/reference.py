"""The reference implementations of the operations a backend may replace: PyTorch ops, in the reference model's
order of operations. Every backend's version must give these numbers (or differ by a stated, tested rounding).

Shape letters as in `model/rope.py`: B batch, H query heads, KV key/value heads, T new tokens, S keys, D head dim,
R rotary dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., n] / rms(x) * weight [n], computed in fp32 and cast back before the weight (Phi-3's order)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotary(x: torch.Tensor, cos_full: torch.Tensor, sin_signed: torch.Tensor, rotary_dims: int) -> torch.Tensor:
    """x [B, heads, T, D] rotated on its first R dims: x * cos_full + x[..., partner] * sin_signed, with tables
    [B or 1, 1, T, D] (`model.rope.RotaryTables`: cos and 1 on the pass-through dims; -sin, +sin and 0)."""
    half = rotary_dims // 2
    # x[..., partner] by slices: a gather (index_select) over the last dim took ~17x longer on a 512-token prefill
    partnered = torch.cat((x[..., half:rotary_dims], x[..., :half], x[..., rotary_dims:]), dim=-1)
    return x * cos_full + partnered * sin_signed


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, KV, S, D] -> [B, KV*groups, S, D]: each kv head serves `groups` consecutive query heads."""
    if groups == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None].expand(b, kv, groups, s, d).reshape(b, kv * groups, s, d)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None,
         causal: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention: q [B, H, T, D], k / v [B, KV, S, D], an additive mask
    [B or 1, 1, T, S] or None -> out [B, T, H, D]. fp16 on the CPU is computed in fp32 (phi-2's scores overflow
    fp16; CPU fp16 matmuls are also far slower than fp32)."""
    dtype = q.dtype
    if dtype == torch.float16 and q.device.type == "cpu":
        q, k, v = q.float(), k.float(), v.float()
        mask = mask.float() if mask is not None else None
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype) if mask is not None else None,
                                         dropout_p=dropout, scale=scale, is_causal=causal)
    return out.transpose(1, 2).contiguous().to(dtype)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """A whole unpadded prompt: q [B, H, T, D], k / v [B, KV, T, D], query t seeing keys 0..t -> [B, T, H, D]."""
    return sdpa(q, k, v, scale, causal=True)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token per row seeing every cached key: q [B, H, 1, D], k / v [B, KV, S, D] -> [B, 1, H, D]."""
    return sdpa(q, k, v, scale)


def rows_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                          first: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token per row, each over its own row of a KV pool and its own keys: q [B, H, 1, D], keys / values
    [N, KV, T, D], rows / first / lengths [B] (row b sees keys[rows[b], :, first[b]:lengths[b]]) -> [B, 1, H, D];
    row by row, `decode_attention` on that row's keys alone."""
    out = [decode_attention(q[b:b + 1], keys[r:r + 1, :, f:n], values[r:r + 1, :, f:n], scale)
           for b, (r, f, n) in enumerate(zip(rows.tolist(), first.tolist(), lengths.tolist()))]
    return torch.cat(out)
