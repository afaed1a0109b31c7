"""The step: one forward of a batch that feeds the tokens its cache lacks and returns the next-token logits.

It is the one unit every loop of `generate()` calls (greedy and sampling, beam search, assisted decoding's drafts
and checks), and the unit a serving engine calls for its decode rows and prefill chunks. A prefill and a decode
step are the same call: the cache knows what it holds, so only the unseen tokens go in. Where the model's backend
has a fused step (`Ops.decode_step`: on CPUs with AVX512-BF16 every phi / phi3 layer of a one-row, one-token step
in one native call, `phikit/backends/cpu/decode_step.py`), the trunk hands such steps to it; this function does not
change, and neither do its numbers.
"""

from __future__ import annotations

import torch

from ..model.cache import CacheProtocol


def rope_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, L] (1 = real token) -> rope positions [B, L] counted from each row's first real token
    (left padding); padded slots get 1, as the reference does (they are masked anyway)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def forward_step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: CacheProtocol | None,
                 keep: int = 1) -> torch.Tensor:
    """input_ids [B, L] (every token so far), attention_mask [B, L] -> fp32 logits [B, keep, V] of the last `keep`
    positions. Feeds only the tokens `cache` lacks (all of them without a cache)."""
    seen = cache.get_seq_length() if cache is not None else 0
    positions = rope_positions(attention_mask)
    out = model(input_ids[:, seen:], attention_mask=attention_mask, position_ids=positions[:, seen:],
                past_key_values=cache, use_cache=cache is not None, logits_to_keep=keep)
    return out.logits.float()
