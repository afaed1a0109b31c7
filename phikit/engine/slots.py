"""The engine's KV pool: `parallel` slots of `ctx` positions per layer, one contiguous row per slot (llama.cpp's
layout; for 1-16 CPU rows contiguous rows keep one-query attention streaming, and copying a cached prefix is
cheaper than prefilling it), each row at its own length.

    pool = SlotPool(slots=4, ctx=512)
    pool.view([2])        # one row: a StaticCache-like cache over slot 2 (prefill chunks; the fused decode step)
    pool.view([0, 2, 3])  # several rows, one new token each at its own length (`ragged`: the decode batch)
    pool.packed_view([(1, 37), (3, 1)])   # several slots' new tokens in one forward: a prefill chunk, a decode row
    pool.copy_prefix(src=2, dst=1, n=40)   # n > 1 choices from one prefill; prefix reuse across slots

Per slot it keeps the tokens whose keys and values it holds (`tokens`, for prefix matching once the slot is free),
each slot's rope positions, the LongRoPE regime its rows were computed in and the regime fixed at admission
(`pinned_long`), and under the per-sequence LongRoPE policy the layer-0 inputs a crossing recomputes from.
"""

from __future__ import annotations

import torch


class SlotPool:
    def __init__(self, slots: int, ctx: int) -> None:
        self.slots, self.ctx = slots, ctx
        self.keys: list[torch.Tensor] = []  # per layer [slots, KV, ctx, D], allocated on the first write
        self.values: list[torch.Tensor] = []
        self.lengths = [0] * slots  # positions filled per slot
        self.tokens: list[list[int]] = [[] for _ in range(slots)]  # ids of the filled positions
        self.positions = torch.zeros(slots, ctx, dtype=torch.long)  # rope position of each filled position
        self.rope_long = torch.zeros(slots, dtype=torch.bool)
        self.pinned_long = torch.zeros(slots, dtype=torch.bool)
        self.inputs: torch.Tensor | None = None  # [slots, ctx, hidden] layer-0 inputs, when the model keeps them
        self._row_views: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def view(self, rows: list[int], ragged: bool = False) -> "RowCache | RaggedCache":
        """A batch-1 cache over one slot, or (several slots, or `ragged`) a one-token-per-row decode cache."""
        return RowCache(self, rows[0]) if len(rows) == 1 and not ragged else RaggedCache(self, rows)

    def packed_view(self, segments: list[tuple[int, int]]) -> "PackedCache":
        """A cache for one packed forward: segment i is `segments[i] = (slot, n)`, n new tokens after what the slot
        holds, the segments' tokens one after another in a [1, sum n] input."""
        return PackedCache(self, segments)

    def reset(self, slot: int, keep: int = 0) -> None:
        """Keep the first `keep` positions of `slot` (a reused prefix), forget the rest."""
        self.lengths[slot] = keep
        del self.tokens[slot][keep:]

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Slot dst takes slot src's first n positions (keys, values, positions, regimes, tokens)."""
        for t in (*self.keys, *self.values):
            t[dst, :, :n] = t[src, :, :n]
        self.positions[dst, :n] = self.positions[src, :n]
        if self.inputs is not None:
            self.inputs[dst, :n] = self.inputs[src, :n]
        self.rope_long[dst], self.pinned_long[dst] = self.rope_long[src], self.pinned_long[src]
        self.lengths[dst], self.tokens[dst] = n, self.tokens[src][:n]

    def used_positions(self, active: list[int]) -> int:
        return sum(self.lengths[s] for s in active)

    def row_buffers(self, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each layer's [1, KV, ctx, D] view of one slot, the same tensor objects every call (a fused step binds
        its pointers once per slot)."""
        views = self._row_views.get(slot)
        if views is None or len(views[0]) != len(self.keys):
            views = self._row_views[slot] = ([k[slot:slot + 1] for k in self.keys],
                                             [v[slot:slot + 1] for v in self.values])
        return views

    def allocate(self, layer: int, key: torch.Tensor) -> None:
        if layer == len(self.keys):
            _, kv, _, d = key.shape
            shape = (self.slots, kv, self.ctx, d)
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=key.dtype, device=key.device))

    def keep_inputs(self, inputs: torch.Tensor | None) -> None:
        if inputs is not None and self.inputs is None:
            self.inputs = inputs.new_zeros(self.slots, self.ctx, inputs.shape[-1])


class RowCache:
    """One slot as a batch-1 cache: new tokens append at the slot's length (the `CacheProtocol` of
    `phikit.model.cache`, with `StaticCache`'s semantics over `ctx` positions)."""

    ragged = False

    def __init__(self, pool: SlotPool, slot: int) -> None:
        self.pool, self.slot = pool, slot
        self.start = self.end = pool.lengths[slot]
        self.pinned_long = pool.pinned_long[slot:slot + 1]

    @property
    def rope_long(self) -> torch.Tensor | None:
        return self.pool.rope_long[self.slot:self.slot + 1] if self.pool.lengths[self.slot] else None

    @rope_long.setter
    def rope_long(self, value: torch.Tensor) -> None:
        self.pool.rope_long[self.slot] = bool(value[0])

    @property
    def num_slots(self) -> int:
        return self.end

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.pool.lengths[self.slot]

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int, inputs: torch.Tensor | None = None) -> None:
        pool, s = self.pool, self.slot
        end = start + position_ids.shape[-1]
        if batch != 1 or start != pool.lengths[s] or end > pool.ctx:
            raise ValueError(f"slot {s} holds {pool.lengths[s]} of {pool.ctx} positions; cannot write batch {batch} "
                             f"at [{start}, {end})")
        pool.positions[s, start:end] = position_ids[0]
        pool.keep_inputs(inputs)
        if inputs is not None:
            pool.inputs[s, start:end] = inputs[0]
        self.start, self.end = start, end
        pool.lengths[s] = end

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool
        pool.allocate(layer_idx, key)
        k, v = pool.keys[layer_idx][self.slot:self.slot + 1], pool.values[layer_idx][self.slot:self.slot + 1]
        k[:, :, self.start:self.end] = key
        v[:, :, self.start:self.end] = value
        return k[:, :, :self.end], v[:, :, :self.end]

    def layer0_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n, s, pool = self.pool.lengths[self.slot], self.slot, self.pool
        inputs = None if pool.inputs is None else pool.inputs[s:s + 1, :n]
        return inputs, pool.positions[s:s + 1, :n]

    def replace_rows(self, rows: torch.Tensor, other) -> None:
        n = other.length
        for layer in range(len(self.pool.keys)):
            self.pool.keys[layer][self.slot, :, :n] = other.keys[layer][0, :, :n]
            self.pool.values[layer][self.slot, :, :n] = other.values[layer][0, :, :n]

    def slot_buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        return self.pool.row_buffers(self.slot) if self.pool.keys else None


class RaggedCache:
    """Several slots, one new token each at its own length (`ragged`: `Decoder.run` then runs each row's attention
    over its own keys in the pool `update_rows` gives, all rows in one call). A row that would change LongRoPE
    regime runs as a `RowCache` instead (the engine checks)."""

    ragged = True

    def __init__(self, pool: SlotPool, rows: list[int]) -> None:
        self.pool, self.rows = pool, rows
        self.index = torch.tensor(rows)
        self.pinned_long = pool.pinned_long[self.index]
        self.starts = [pool.lengths[r] for r in rows]
        self._at = torch.tensor(self.starts)  # [B] each row's new position

    @property
    def rope_long(self) -> torch.Tensor:
        return self.pool.rope_long[self.index]

    @rope_long.setter
    def rope_long(self, value: torch.Tensor) -> None:
        if not torch.equal(value, self.pool.rope_long[self.index]):
            raise ValueError("a ragged decode batch cannot change a row's LongRoPE regime; run that row alone")

    @property
    def num_slots(self) -> int:
        return max(self.starts) + 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.starts)

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int, inputs: torch.Tensor | None = None) -> None:
        pool = self.pool
        if position_ids.shape != (len(self.rows), 1) or batch != len(self.rows):
            raise ValueError(f"a ragged cache takes one position per row [{len(self.rows)}, 1], "
                             f"got {tuple(position_ids.shape)}")
        pool.keep_inputs(inputs)
        for b, (s, at) in enumerate(zip(self.rows, self.starts)):
            if at >= pool.ctx:
                raise ValueError(f"slot {s} is full ({pool.ctx} positions)")
            pool.positions[s, at] = position_ids[b, 0]
            if inputs is not None:
                pool.inputs[s, at] = inputs[b, 0]
            pool.lengths[s] = at + 1

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("a ragged cache is read through update_rows (the pool, each row's slot and length)")

    def update_rows(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """key / value [B, KV, 1, D] written at each row's position -> (keys, values) the layer's pool [N, KV, T, D],
        the rows' slots [B] and their lengths [B] (start_b + 1: row b's keys are keys[slot_b, :, :length_b])."""
        pool = self.pool
        pool.allocate(layer_idx, key)
        keys, values = pool.keys[layer_idx], pool.values[layer_idx]
        keys[self.index, :, self._at] = key[:, :, 0]  # [B, KV, D] into each row's own position
        values[self.index, :, self._at] = value[:, :, 0]
        return keys, values, self.index, self._at + 1

    def layer0_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def replace_rows(self, rows: torch.Tensor, other) -> None:
        raise ValueError("a ragged decode batch cannot change a row's LongRoPE regime; run that row alone")

    def slot_buffers(self) -> None:
        return None


class PackedCache:
    """Several slots' new tokens in one [1, T] forward, segment after segment (`Decoder` runs the linears over all T
    tokens and attention per segment on `update_segments`'s views): prefill chunks of several requests and decode
    rows (one-token segments) share each weight's one pass. A segment never changes its slot's LongRoPE regime
    (`rope_long` raises; the engine runs such a row alone)."""

    packed = True
    ragged = False

    def __init__(self, pool: SlotPool, segments: list[tuple[int, int]]) -> None:
        slots = [s for s, _ in segments]
        if not segments or len(set(slots)) != len(slots) or any(n < 1 for _, n in segments):
            raise ValueError(f"a packed forward takes distinct slots with at least one token each, got {segments}")
        self.pool, self.segments = pool, segments
        self.starts = [pool.lengths[s] for s in slots]
        self.index = torch.tensor(slots)
        self.pinned_long = pool.pinned_long[self.index]
        ends = torch.tensor([n for _, n in segments]).cumsum(0)
        self.offsets = [0] + ends[:-1].tolist()  # where each segment's tokens begin in the input
        self.last = ends - 1  # [S] each segment's last token in the input: the positions whose logits are read
        single = [i for i, (_, n) in enumerate(segments) if n == 1]
        # the one-token segments (decode rows): their offsets in the input, slots and lengths after this step
        self.decode_rows = (torch.tensor([self.offsets[i] for i in single]), self.index[single],
                            torch.tensor([self.starts[i] + 1 for i in single])) if single else None

    @property
    def rope_long(self) -> torch.Tensor:
        return self.pool.rope_long[self.index]

    @rope_long.setter
    def rope_long(self, value: torch.Tensor) -> None:
        for i, ((s, _), start) in enumerate(zip(self.segments, self.starts)):
            if start and bool(self.pool.rope_long[s]) != bool(value[i]):
                raise ValueError(f"slot {s} would change LongRoPE regime in a packed forward; run that row alone")
        self.pool.rope_long[self.index] = value

    @property
    def num_slots(self) -> int:
        return max(st + n for st, (_, n) in zip(self.starts, self.segments))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.starts)

    def prepare(self, position_ids: torch.Tensor, start: int, batch: int, inputs: torch.Tensor | None = None) -> None:
        pool, total = self.pool, sum(n for _, n in self.segments)
        if batch != 1 or position_ids.shape != (1, total):
            raise ValueError(f"a packed cache takes one row of {total} positions [1, {total}], got batch {batch} "
                             f"and {tuple(position_ids.shape)}")
        for (s, n), at in zip(self.segments, self.starts):
            if at + n > pool.ctx:
                raise ValueError(f"slot {s} holds {at} of {pool.ctx} positions; cannot add {n}")
        pool.keep_inputs(inputs)
        for (s, n), at, off in zip(self.segments, self.starts, self.offsets):
            pool.positions[s, at:at + n] = position_ids[0, off:off + n]
            if inputs is not None:
                pool.inputs[s, at:at + n] = inputs[0, off:off + n]
            pool.lengths[s] = at + n

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("a packed cache is read through update_segments (one view per segment)")

    def layer_pool(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys / values pool [N, KV, T, D] (after `update_segments` wrote this step's)."""
        return self.pool.keys[layer_idx], self.pool.values[layer_idx]

    def update_segments(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """key / value [1, KV, T, D] -> per segment (k, v) [1, KV, start + n, D] (views of the pool) and its start."""
        pool = self.pool
        pool.allocate(layer_idx, key)
        keys, values = pool.keys[layer_idx], pool.values[layer_idx]
        out = []
        for (s, n), at, off in zip(self.segments, self.starts, self.offsets):
            keys[s, :, at:at + n] = key[0, :, off:off + n]
            values[s, :, at:at + n] = value[0, :, off:off + n]
            out.append((keys[s:s + 1, :, :at + n], values[s:s + 1, :, :at + n], at))
        return out

    def layer0_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def replace_rows(self, rows: torch.Tensor, other) -> None:
        raise ValueError("a packed forward cannot change a row's LongRoPE regime; run that row alone")

    def slot_buffers(self) -> None:
        return None
