"""A packed forward: several sequences' new tokens in one [1, T] input, segment after segment (a serving engine's
prefill chunks of several requests, and its decode rows as one-token segments). The linears see all T tokens at
once, so each weight is read once for the whole step (and a prefill-sized product runs as a GEMM); rope and attention
are per segment, on that segment's own cache row, with the mask a forward of that segment alone would build.

The cache (`PackedCache` of `phikit.engine.slots`) says where each segment's tokens are and where its keys go:
`segments` [(slot, n)], `starts` (tokens the slot held before), `offsets` (where the segment begins in the input),
`update_segments` (writes the new keys / values, returns each segment's view of its row), and for the one-token
segments `decode_rows` (their offsets, slots and lengths) with `layer_pool` (the layer's pool, which a decode batch
reads in one `rows_decode_attention` call).
"""

from __future__ import annotations

import torch

from ..ops import Ops
from ..ops.attention import ATTENTION_FUNCTIONS, ragged_decode_attention
from .masks import additive_bias, allowed_keys
from .rope import RopeSpec, choose_long, cos_sin


def segment_regimes(spec: RopeSpec, position_ids: torch.Tensor, cache) -> torch.Tensor:
    """[S] bool: each segment's LongRoPE regime, chosen from its own positions (or pinned at admission)."""
    return torch.cat([choose_long(spec, position_ids[:, off:off + n], 1)
                      for off, (_, n) in zip(cache.offsets, cache.segments)]) | cache.pinned_long


def segment_cos_sin(spec: RopeSpec, position_ids: torch.Tensor, long: torch.Tensor, cache,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [1, T, R], each segment's rows in its own regime."""
    parts = [cos_sin(spec, position_ids[:, off:off + n], long[i:i + 1], dtype)
             for i, (off, (_, n)) in enumerate(zip(cache.offsets, cache.segments))]
    return torch.cat([c for c, _ in parts], dim=1), torch.cat([s for _, s in parts], dim=1)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, layer_idx: int, scale: float,
                     window: int | None, implementation: str, ops: Ops) -> torch.Tensor:
    """q [1, H, T, D], k / v [1, KV, T, D] (the new tokens, rotated) -> [1, T, H, D]: each segment's queries attend to
    its row's cached keys and its own new ones, causally (and within the sliding window), as that segment would in a
    forward of its own. The new keys and values go into the cache."""
    heads, d = q.shape[1], q.shape[3]
    out = q.new_empty(1, q.shape[2], heads, d)
    views = cache.update_segments(layer_idx, k, v)
    if cache.decode_rows is not None:  # the one-token segments (decode rows): one call, each over its own keys
        offsets, slots, lengths = cache.decode_rows
        pool_keys, pool_values = cache.layer_pool(layer_idx)
        rows_q = q[0][:, offsets].unsqueeze(2).transpose(0, 1)  # [R, H, 1, D]
        out[0, offsets] = ragged_decode_attention(rows_q, pool_keys, pool_values, slots, lengths, scale, window,
                                                  ops)[:, 0]
    for (keys, values, start), off, (_, n) in zip(views, cache.offsets, cache.segments):
        if n == 1:
            continue
        qs = q[:, :, off:off + n]
        allowed = allowed_keys(torch.arange(start, start + n), start + n, None, window)
        plain_causal = window is None or start + n <= window
        seg, _ = ATTENTION_FUNCTIONS[implementation](qs, keys, values, additive_bias(allowed, q.dtype), scale, 0.0,
                                                     False, plain_causal=plain_causal, ops=ops)
        out[:, off:off + n] = seg  # [1, n, H, D]
    return out
