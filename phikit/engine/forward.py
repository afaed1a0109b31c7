"""The engine's forwards, on the model's own step and cache seams: a prefill chunk of one slot, a decode step of one
or more slots (one new token each), and a packed step (several slots' prefill chunks and decode tokens in one
forward). Each returns the next-token logits in fp32."""

from __future__ import annotations

import torch

from .slots import SlotPool


def prefill(model, pool: SlotPool, slot: int, tokens: list[int]) -> torch.Tensor:
    """Feed `tokens` into `slot` after what it holds -> logits [V] of the last one."""
    start = pool.lengths[slot]
    ids = torch.tensor([tokens], dtype=torch.long)  # [1, T]
    positions = torch.arange(start, start + len(tokens))[None]  # [1, T]
    cache = pool.view([slot])
    try:
        out = model(ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    except BaseException:
        pool.lengths[slot] = start  # a failed forward leaves the slot as it was
        raise
    pool.tokens[slot].extend(tokens)
    return out.logits[0, -1].float()


def decode(model, pool: SlotPool, slots: list[int], tokens: list[int], ragged: bool) -> torch.Tensor:
    """One new token per slot, each at its slot's length -> logits [B, V]. `ragged`: the batched path (linears over
    all rows, attention per row), also for a single row, so a row's numbers do not depend on how many run beside it
    wherever the linears' rows do not; else one slot as a batch-1 step (the fused decode step where the backend has
    one: exactly what `generate()` runs)."""
    starts = [pool.lengths[s] for s in slots]
    ids = torch.tensor(tokens, dtype=torch.long)[:, None]  # [B, 1]
    positions = torch.tensor(starts, dtype=torch.long)[:, None]  # [B, 1]
    cache = pool.view(slots, ragged)
    try:
        out = model(ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    except BaseException:
        for s, at in zip(slots, starts):
            pool.lengths[s] = at
        raise
    for s, t in zip(slots, tokens):
        pool.tokens[s].append(t)
    return out.logits[:, -1].float()


def packed(model, pool: SlotPool, segments: list[tuple[int, list[int]]]) -> torch.Tensor:
    """Several slots' new tokens in one forward: `segments[i] = (slot, tokens)` (a prefill chunk, or one decode
    token), each after what its slot holds -> logits [S, V] of each segment's last token. The linears read each
    weight once for all of them; attention is per segment (`phikit.model.packed`)."""
    starts = [pool.lengths[s] for s, _ in segments]
    ids = torch.tensor([[t for _, tokens in segments for t in tokens]], dtype=torch.long)  # [1, T]
    positions = torch.cat([torch.arange(at, at + len(tokens)) for at, (_, tokens) in zip(starts, segments)])[None]
    cache = pool.packed_view([(s, len(tokens)) for s, tokens in segments])
    try:
        out = model(ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=cache.last)
    except BaseException:
        for (s, _), at in zip(segments, starts):
            pool.lengths[s] = at
        raise
    for s, tokens in segments:
        pool.tokens[s].extend(tokens)
    return out.logits[0].float()
