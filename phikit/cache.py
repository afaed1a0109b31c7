"""KV caches behind one narrow interface: `prepare` once per forward, `update` once per layer.

    cache.prepare(position_ids, start)   # the new tokens take slots [start, start + T); remembers their positions
    keys, values = cache.update(layer, k, v)   # store this layer's new k/v [B, KV, T, D]; get all S slots back
    cache.num_slots                       # S, what the attention mask must cover
    cache.get_seq_length()                # slots filled so far

`DynamicCache` grows by concatenation; `StaticCache` preallocates `max_cache_len` slots (the fast decode path and a
batching server both want fixed shapes). Both remember each slot's rope position and which LongRoPE regime its keys
were rotated with (`rope_long`, [B] bool), so the model can re-rotate cached keys once when a sequence crosses
`original_max_position_embeddings` instead of recomputing the prompt.
"""

from __future__ import annotations

from typing import Callable

import torch


class KVCache:
    """Shared bookkeeping: slot count, rope positions of the slots, LongRoPE regime of the cached keys."""

    def __init__(self) -> None:
        self.length = 0  # slots filled, including the tokens of the forward in progress once `prepare` ran
        self.start = 0  # first slot of the forward in progress
        self.positions: torch.Tensor | None = None  # [B, slots] rope position of each slot
        self.rope_long: torch.Tensor | None = None  # [B] bool, regime the cached keys carry
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_slots(self) -> int:
        raise NotImplementedError

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int) -> None:
        """Reserve slots [start, start + T) for the new tokens, whose rope positions are position_ids [B or 1, T]."""
        raise NotImplementedError

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def map_keys(self, fn: Callable[[torch.Tensor], torch.Tensor], slots: int) -> None:
        """Replace the first `slots` cached keys of every layer by fn(keys [B, KV, slots, D])."""
        for layer, keys in enumerate(self.keys):
            self.keys[layer] = torch.cat((fn(keys[:, :, :slots]), keys[:, :, slots:]), dim=2)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select rows (beam search): every per-row tensor is indexed by beam_idx [B']."""
        self.keys = [k.index_select(0, beam_idx.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, beam_idx.to(v.device)) for v in self.values]
        if self.positions is not None:
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))
        if self.rope_long is not None:
            self.rope_long = self.rope_long.index_select(0, beam_idx.to(self.rope_long.device))


class DynamicCache(KVCache):
    """Grows with each forward; slots are exactly the tokens seen so far."""

    def __init__(self, *args, **kwargs) -> None:  # accepts transformers' DynamicCache(config=...) call form
        super().__init__()

    @property
    def num_slots(self) -> int:
        return self.length

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int) -> None:
        if start != self.length:
            raise ValueError(f"DynamicCache holds {self.length} tokens but the new tokens start at slot {start}; "
                             f"a dynamic cache only appends (pass cache_position starting at {self.length})")
        positions = position_ids.expand(batch, -1)
        self.positions = positions if self.positions is None else torch.cat((self.positions, positions), dim=1)
        self.start, self.length = start, start + position_ids.shape[-1]

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value), dim=2)
        return self.keys[layer_idx], self.values[layer_idx]


class StaticCache(KVCache):
    """Preallocated `max_cache_len` slots per layer, allocated on first use with the keys' batch, dtype and device."""

    def __init__(self, config=None, max_cache_len: int | None = None, max_batch_size: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kwargs) -> None:
        super().__init__()
        if max_cache_len is None:
            if config is None:
                raise ValueError("StaticCache needs max_cache_len (the most tokens prompt + generation will reach)")
            max_cache_len = config.max_position_embeddings
        if max_cache_len <= 0:
            raise ValueError(f"max_cache_len={max_cache_len} must be positive")
        self.max_cache_len = max_cache_len

    @property
    def num_slots(self) -> int:
        return self.max_cache_len

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int) -> None:
        end = start + position_ids.shape[-1]
        if end > self.max_cache_len:
            raise ValueError(f"StaticCache has {self.max_cache_len} slots but this forward needs slots up to {end}; "
                             f"create it with max_cache_len >= {end}")
        if self.positions is None:
            self.positions = torch.zeros(batch, self.max_cache_len, dtype=torch.long, device=position_ids.device)
        self.positions[:, start:end] = position_ids.expand(batch, -1)
        self.start, self.length = start, max(self.length, end)

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            b, kv, _, d = key.shape
            shape = (b, kv, self.max_cache_len, d)
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        end = self.start + key.shape[2]
        self.keys[layer_idx][:, :, self.start:end] = key
        self.values[layer_idx][:, :, self.start:end] = value
        return self.keys[layer_idx], self.values[layer_idx]

    def map_keys(self, fn: Callable[[torch.Tensor], torch.Tensor], slots: int) -> None:
        for keys in self.keys:
            keys[:, :, :slots] = fn(keys[:, :, :slots])

    def reset(self) -> None:
        """Forget all tokens but keep the buffers (reuse across prompts without reallocating)."""
        self.length = self.start = 0
        self.rope_long = None
        for t in (*self.keys, *self.values):
            t.zero_()
