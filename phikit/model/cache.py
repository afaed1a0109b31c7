"""KV caches behind one narrow protocol (`CacheProtocol`): what the decoder, the generation step and a backend's
fused step may use, and all a batched cache with per-row state needs to implement.

    cache.prepare(position_ids, start, batch, inputs)  # new tokens take slots [start, start + T)
    keys, values = cache.update(layer, k, v)            # store this layer's k/v [B, KV, T, D]; get all S slots
    cache.num_slots                                      # S, what the attention mask must cover
    cache.get_seq_length()                               # slots filled so far
    cache.rope_long                                      # [B] bool: LongRoPE regime the cached rows were computed in
    cache.layer0_inputs()                                # (inputs [B, S, hidden] | None, positions [B, S]) of the slots
    cache.replace_rows(rows, other)                      # overwrite rows' first slots (a LongRoPE crossing)
    cache.slot_buffers()                                 # (keys, values): per layer [B, KV, capacity, D] contiguous, or None

`DynamicCache` grows by concatenation; `StaticCache` preallocates `max_cache_len` slots (the fast decode path and a
batching server both want fixed shapes). Both remember each slot's rope position and the LongRoPE regime each row's
keys and values were computed in (`rope_long`, [B] bool). Under the per-sequence LongRoPE policy they also keep the
layer-0 inputs of each slot (`inputs`, [B, S, hidden], 1/(2 * layers * kv_heads/heads) of the cache's size) so a
row that crosses `original_max_position_embeddings` can be recomputed in the long regime once, in place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CacheProtocol(Protocol):
    """The members of a cache the model, the step and fused backends use (module docstring); nothing else."""

    rope_long: torch.Tensor | None

    @property
    def num_slots(self) -> int: ...

    def get_seq_length(self, layer_idx: int = 0) -> int: ...

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int,
                inputs: torch.Tensor | None = None) -> None: ...

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def layer0_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def replace_rows(self, rows: torch.Tensor, other: "CacheProtocol") -> None: ...

    def slot_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None: ...


class KVCache:
    """Shared bookkeeping: slot count, rope positions and regimes of the slots, optional layer-0 inputs."""

    def __init__(self) -> None:
        self.length = 0  # slots filled, including the tokens of the forward in progress once `prepare` ran
        self.start = 0  # first slot of the forward in progress
        self.positions: torch.Tensor | None = None  # [B, slots] rope position of each slot
        self.inputs: torch.Tensor | None = None  # [B, slots, hidden] layer-0 inputs, kept only when asked
        self.rope_long: torch.Tensor | None = None  # [B] bool, regime the cached rows were computed in
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_slots(self) -> int:
        raise NotImplementedError

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int,
                inputs: torch.Tensor | None = None) -> None:
        """Reserve slots [start, start + T) for new tokens with rope positions position_ids [B or 1, T] and, when
        given, layer-0 inputs [B, T, hidden]."""
        raise NotImplementedError

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def layer0_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(inputs [B, S, hidden] or None where not kept, rope positions [B, S]) of the filled slots."""
        n = self.length
        inputs = None if self.inputs is None or self.inputs.shape[1] < n else self.inputs[:, :n]
        return inputs, None if self.positions is None else self.positions[:, :n]

    def slot_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Each layer's key and value storage as contiguous [B, KV, capacity, D] tensors written in place (what a
        fused kernel may point at), or None where the cache reallocates as it grows."""
        return None

    def replace_rows(self, rows: torch.Tensor, other: "KVCache") -> None:
        """Overwrite the first `other.length` slots of batch rows `rows` [b] with `other`'s keys and values."""
        n = other.length
        for layer in range(len(self.keys)):
            self.keys[layer][rows, :, :n] = other.keys[layer][:, :, :n]
            self.values[layer][rows, :, :n] = other.values[layer][:, :, :n]

    def crop(self, length: int) -> None:
        """Forget every slot from `length` on (assisted decoding drops rejected draft tokens this way)."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot crop a cache of {self.length} slots to {length}")
        self.length = length
        self._crop_tensors(length)

    def _crop_tensors(self, length: int) -> None:
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]
        self.positions = None if self.positions is None else self.positions[:, :length]
        self.inputs = None if self.inputs is None else self.inputs[:, :length]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select rows (beam search): every per-row tensor is indexed by beam_idx [B']."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, beam_idx.to(t.device))

        self.keys = [pick(k) for k in self.keys]
        self.values = [pick(v) for v in self.values]
        self.positions, self.inputs, self.rope_long = pick(self.positions), pick(self.inputs), pick(self.rope_long)


class DynamicCache(KVCache):
    """Grows with each forward; slots are exactly the tokens seen so far."""

    def __init__(self, *args, **kwargs) -> None:  # accepts transformers' DynamicCache(config=...) call form
        super().__init__()

    @property
    def num_slots(self) -> int:
        return self.length

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int,
                inputs: torch.Tensor | None = None) -> None:
        if start != self.length:
            raise ValueError(f"DynamicCache holds {self.length} tokens but the new tokens start at slot {start}; "
                             f"a dynamic cache only appends (pass cache_position starting at {self.length})")
        positions = position_ids.expand(batch, -1)
        self.positions = positions if self.positions is None else torch.cat((self.positions, positions), dim=1)
        if inputs is not None:
            self.inputs = inputs if self.inputs is None else torch.cat((self.inputs, inputs), dim=1)
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
        self.end = 0  # one past the last slot of the forward in progress

    @property
    def num_slots(self) -> int:
        # Attention reads the slots up to this forward's last token only: later slots are causally masked anyway,
        # and skipping them keeps a decode step's cost proportional to the tokens so far, not to max_cache_len.
        return self.end

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int,
                inputs: torch.Tensor | None = None) -> None:
        end = start + position_ids.shape[-1]
        if end > self.max_cache_len:
            raise ValueError(f"StaticCache has {self.max_cache_len} slots but this forward needs slots up to {end}; "
                             f"create it with max_cache_len >= {end}")
        if self.positions is None:
            self.positions = torch.zeros(batch, self.max_cache_len, dtype=torch.long, device=position_ids.device)
        self.positions[:, start:end] = position_ids.expand(batch, -1)
        if inputs is not None:
            if self.inputs is None:
                self.inputs = inputs.new_zeros(batch, self.max_cache_len, inputs.shape[-1])
            self.inputs[:, start:end] = inputs
        self.start, self.end, self.length = start, end, max(self.length, end)

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            b, kv, _, d = key.shape
            shape = (b, kv, self.max_cache_len, d)
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        self.keys[layer_idx][:, :, self.start:self.end] = key
        self.values[layer_idx][:, :, self.start:self.end] = value
        return self.keys[layer_idx][:, :, :self.end], self.values[layer_idx][:, :, :self.end]

    def slot_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        return self.keys, self.values  # [B, KV, max_cache_len, D] each, allocated on the first update

    def _crop_tensors(self, length: int) -> None:
        pass  # slots past `length` lie beyond every later query: causality masks them until overwritten

    def reset(self) -> None:
        """Forget all tokens but keep the buffers (reuse across prompts without reallocating)."""
        self.length = self.start = self.end = 0
        self.rope_long = None
        for t in (*self.keys, *self.values):
            t.zero_()
