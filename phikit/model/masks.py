"""Attention masks as pure functions of slot indices: causal, padding (left or right) and sliding window.

Slots are cache indices, not rope positions: with left padding a row's first real token sits in slot > 0. A query in
slot q may see key slot k when k <= q, when k > q - window (sliding window), and when the 2D padding mask marks k as
a real token. This is the reference rule, so masks match transformers' for every cache layout.
"""

from __future__ import annotations

import torch


def allowed_keys(query_slots: torch.Tensor, num_slots: int, padding_mask: torch.Tensor | None,
                 sliding_window: int | None) -> torch.Tensor:
    """Bool [B or 1, 1, T, S]: True where a query may attend to a key.

    query_slots: [T] cache slot of each new token; padding_mask: [B, L] with 1 for real tokens, L <= S (slots past
    L are new or unused and left to the causal rule).
    """
    key_slots = torch.arange(num_slots, device=query_slots.device)  # [S]
    allowed = key_slots[None, :] <= query_slots[:, None]  # [T, S]
    if sliding_window is not None:
        allowed = allowed & (key_slots[None, :] > query_slots[:, None] - sliding_window)
    allowed = allowed[None, None]  # [1, 1, T, S]
    if padding_mask is not None:
        pad = padding_mask.to(device=query_slots.device, dtype=torch.bool)
        if pad.shape[-1] < num_slots:
            pad = torch.nn.functional.pad(pad, (0, num_slots - pad.shape[-1]), value=True)
        allowed = allowed & pad[:, None, None, :num_slots]  # [B, 1, T, S]
    return allowed


def additive_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's most negative value elsewhere (a fully masked row stays finite, never NaN)."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)
