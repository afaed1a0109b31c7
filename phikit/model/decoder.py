"""One generic Phi decoder: attention, block and trunk, configured by `Architecture` flags.

Module attribute names equal the Hugging Face checkpoint names (`self_attn.qkv_proj`, `mlp.fc1`,
`block_sparse_moe.experts.3.w1`, ...), so `state_dict()` keys match real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..arch import Architecture
from ..ops import REFERENCE, Ops
from ..ops.attention import ATTENTION_FUNCTIONS, ragged_decode_attention
from .cache import CacheProtocol, DynamicCache
from .layers import FcMLP, GatedMLP, make_norm
from .masks import additive_bias, allowed_keys
from .moe import SparseMoE, stacked_experts_pre_hook
from .packed import packed_attention, segment_cos_sin, segment_regimes
from .rope import RopeSpec, RotaryTables, choose_long, cos_sin, rope_spec_from_config


@dataclass
class StepContext:
    """What every layer of one forward shares: rope tables, mask, cache, the attention kernel and the model's ops."""

    rotary: RotaryTables  # cos/sin of every position, applied to each layer's q and k
    bias: torch.Tensor  # [B or 1, 1, T, S] additive mask
    plain_causal: bool  # no padding and no active window: kernels may use their own causal mask
    first_key: int  # keys before this slot are outside an active sliding window: attention skips them
    cache: CacheProtocol | None
    attn_implementation: str
    output_attentions: bool
    ops: Ops
    ragged: bool = False  # rows at their own lengths, one query each: attention per row on the cache's views
    window: int | None = None  # sliding window (the ragged and packed paths apply it per row)
    packed: bool = False  # several sequences' tokens in one row, segment after segment (`packed.py`)


class Attention(nn.Module):
    owns_dropout = True  # training mode changes its numbers (a fused decode step checks this)

    def __init__(self, config, arch: Architecture, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        hidden, bias = config.hidden_size, arch.attention_bias
        self.fused = arch.fused_qkv
        if self.fused:
            self.qkv_proj = nn.Linear(hidden, q_size + 2 * kv_size, bias=bias)
        else:
            self.q_proj = nn.Linear(hidden, q_size, bias=bias)
            self.k_proj = nn.Linear(hidden, kv_size, bias=bias)
            self.v_proj = nn.Linear(hidden, kv_size, bias=bias)
        self.out_name = arch.out_proj
        self.add_module(arch.out_proj, nn.Linear(q_size, hidden, bias=bias))
        self.qk_layernorm = arch.qk_layernorm
        if self.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(self.head_dim, eps=arch.norm_eps)
            self.k_layernorm = nn.LayerNorm(self.head_dim, eps=arch.norm_eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, hidden] -> q [B, H, T, D], k and v [B, KV, T, D]."""
        b, t, _ = x.shape
        if self.fused:
            q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: StepContext, keep_last: int | torch.Tensor = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, hidden] -> [B, T, hidden], or [B, keep_last, hidden] for the last `keep_last` queries only (the
        keys and values of all T positions still go to the cache); in a packed forward `keep_last` may be an index
        tensor [K] of the positions to keep."""
        b, t, _ = x.shape
        q, k, v = self.project(x)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = ctx.rotary.apply(q, ctx.ops), ctx.rotary.apply(k, ctx.ops)
        bias = ctx.bias
        if ctx.packed:  # segments of several sequences: attention per segment on its own cache row
            out = packed_attention(q, k, v, ctx.cache, self.layer_idx, self.scale, ctx.window,
                                   ctx.attn_implementation, ctx.ops)  # [1, T, H, D]
            out = _kept(out, keep_last)
            return self._modules[self.out_name](out.reshape(b, out.shape[1], self.num_heads * self.head_dim)), None
        if ctx.ragged:  # a serving batch: each row's one query attends to that row's own keys
            keys, values, slots, lengths = ctx.cache.update_rows(self.layer_idx, k, v)
            out = ragged_decode_attention(q, keys, values, slots, lengths, self.scale, ctx.window,
                                          ctx.ops)  # [B, 1, H, D]
            return self._modules[self.out_name](out.reshape(b, t, self.num_heads * self.head_dim)), None
        if keep_last:
            q, bias, t = q[:, :, -keep_last:], bias[:, :, -keep_last:], keep_last  # the last queries see every key
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # [B, KV, S, D]
        if ctx.first_key:
            k, v = k[:, :, ctx.first_key:], v[:, :, ctx.first_key:]
        kernel = "eager" if ctx.output_attentions else ctx.attn_implementation
        out, weights = ATTENTION_FUNCTIONS[kernel](q, k, v, bias, self.scale, self.dropout, self.training,
                                                   plain_causal=ctx.plain_causal, ops=ctx.ops)
        out = out.reshape(b, t, self.num_heads * self.head_dim)  # [B, T, H*D]
        return self._modules[self.out_name](out), weights


class DecoderLayer(nn.Module):
    """One block. Parallel residual (phi) or sequential (phi3, phimoe):

        parallel:   x ──┬── ln ──┬── attn ──┐            sequential:  x ──┬── ln1 ── attn ──(+)──┬── ln2 ── mlp ──(+)── out
                        │        └── mlp ───(+)── out                     └───────────────────┘  └──────────────┘
                        └────────────────────┘
    """

    owns_dropout = True
    # Tensor parallelism (phikit/parallel) sets this: the sum over ranks of a residual branch's partial output (one
    # call per branch, so phi's parallel block reduces attention + MLP at once). None: the model is whole.
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, config, arch: Architecture, layer_idx: int) -> None:
        super().__init__()
        self.parallel = arch.parallel_residual
        self.self_attn = Attention(config, arch, layer_idx)
        self.input_layernorm = make_norm(arch.norm, config.hidden_size, arch.norm_eps)
        if not self.parallel:
            self.post_attention_layernorm = make_norm(arch.norm, config.hidden_size, arch.norm_eps)
        self.mlp_name = arch.mlp_name
        self.is_moe = arch.mlp == "moe"
        if arch.mlp == "fc":
            mlp: nn.Module = FcMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        elif arch.mlp == "gated":
            mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        else:
            mlp = SparseMoE(config.hidden_size, config.intermediate_size, config.num_local_experts,
                            config.hidden_act, config.router_jitter_noise, config.input_jitter_noise)
            # transformers 5 holds PhiMoE's experts stacked in memory (`mlp.experts.*`): load_state_dict reads both
            self._register_load_state_dict_pre_hook(stacked_experts_pre_hook)
        self.add_module(arch.mlp_name, mlp)
        self.resid_dropout = nn.Dropout(arch.resid_dropout)

    def forward(self, x: torch.Tensor, ctx: StepContext, keep_last: int | torch.Tensor = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x [B, T, hidden] -> (x' [B, T, hidden], attention weights or None, router logits [N, E] or None).
        keep_last > 0: x' of the last `keep_last` positions only, [B, keep_last, hidden] (the cache gets all T); an
        index tensor [K] (a packed forward): x' of those positions, [1, K, hidden]."""
        mlp = self._modules[self.mlp_name]
        h = self.input_layernorm(x)
        attn, weights = self.self_attn(h, ctx, keep_last)
        x, h = _kept(x, keep_last), _kept(h, keep_last)
        drop = self.resid_dropout if self.training and self.resid_dropout.p > 0 else _identity
        reduce = self.reduce
        if self.parallel:
            if reduce is not None:
                return x + reduce(drop(attn) + drop(mlp(h))), weights, None
            return x + drop(attn) + drop(mlp(h)), weights, None
        x = x + (drop(attn) if reduce is None else reduce(drop(attn)))
        h = self.post_attention_layernorm(x)
        router_logits = None
        if self.is_moe:
            h, router_logits = mlp(h)
        else:
            h = mlp(h)
        return x + (drop(h) if reduce is None else reduce(drop(h))), weights, router_logits


@dataclass
class TrunkOutput:
    last_hidden_state: torch.Tensor  # [B, T, hidden], or [B, keep_last, hidden] (Decoder.run)
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    router_logits: tuple[torch.Tensor, ...] | None
    kept: bool = False  # last_hidden_state holds only the positions of an index `keep_last` (a packed forward)


class Decoder(nn.Module):
    """Embedding -> layers -> final norm. The trunk every family shares (transformers' `XModel`)."""

    ops: Ops = REFERENCE

    def __init__(self, config) -> None:
        super().__init__()
        arch = config.architecture()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id
                                         if config.pad_token_id is not None and config.pad_token_id < config.vocab_size
                                         else None)
        self.embed_dropout = nn.Dropout(arch.embed_dropout)
        self.layers = nn.ModuleList(DecoderLayer(config, arch, i) for i in range(config.num_hidden_layers))
        self.final_norm_name = arch.final_norm
        self.add_module(arch.final_norm, make_norm(arch.norm, config.hidden_size, arch.norm_eps))
        self.rope: RopeSpec = rope_spec_from_config(config)
        self.gradient_checkpointing = False

    def run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
            position_ids: torch.Tensor | None, cache: CacheProtocol | None, start: int,
            output_attentions: bool, output_hidden_states: bool, output_router_logits: bool,
            long: torch.Tensor | None = None, keep_last: int = 0) -> TrunkOutput:
        """inputs_embeds [B, T, hidden] into slots [start, start + T) of `cache`; attention_mask [B, L] 1 = real.
        `long` [B] forces the LongRoPE regime of each row (default: chosen from the positions by the policy).
        keep_last > 0: the caller reads only the last `keep_last` positions of last_hidden_state, which is then
        [B, keep_last, hidden] where that saves work: the last layer projects and rotates every position (the cache
        needs the keys and values) but runs attention, output projection and MLP for those positions only, as
        llama.cpp does. A 512-token prefill that wants the next token's logits skips 3/4 of a layer."""
        b, t, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if getattr(cache, "packed", False):
            if output_attentions or output_hidden_states or output_router_logits or position_ids is None:
                raise ValueError("a packed forward takes position_ids and reports no attentions, hidden states or "
                                 "router logits")
            return self._run_packed(inputs_embeds, position_ids, cache, keep_last)
        if position_ids is None:
            position_ids = torch.arange(start, start + t, device=device)[None]  # [1, T]
        if long is None:
            long = choose_long(self.rope, position_ids, b)  # [B]
            pinned = getattr(cache, "pinned_long", None)  # [B] bool: rows whose regime was fixed at admission
            if pinned is not None:
                long = long | pinned
        if cache is not None:
            if cache.rope_long is not None and cache.get_seq_length() > 0:
                self._recompute_crossing_rows(cache, long, attention_mask)
            # Under the per-sequence policy a row may switch regime later (grow past the boundary, or be cropped
            # back below it): keep layer-0 inputs so its keys and values can be recomputed then.
            per_sequence = self.rope.original_max_positions is not None and self.rope.static_long is None
            cache.prepare(position_ids, start, b, inputs_embeds if per_sequence else None)
            cache.rope_long = long
            fused = self.ops.decode_step
            reported = output_attentions or output_hidden_states or output_router_logits
            if fused is not None and t == 1 and not reported:
                x = fused(self, inputs_embeds, attention_mask, position_ids, long, cache, start)
                if x is not None:  # every layer ran in one call of the backend's fused step
                    return TrunkOutput(self._modules[self.final_norm_name](x), None, None, None)
            if getattr(cache, "ragged", False) and not reported:
                return self._run_ragged(inputs_embeds, position_ids, long, cache)
        num_slots = cache.num_slots if cache is not None else t
        query_slots = torch.arange(start, start + t, device=device)
        window = self.config.sliding_window
        allowed = allowed_keys(query_slots, num_slots, attention_mask, window)
        unpadded = attention_mask is None or bool(attention_mask.all())
        plain_causal = unpadded and (window is None or start + t <= window) and num_slots == start + t
        bias = additive_bias(allowed, inputs_embeds.dtype)
        first_key = 0
        if unpadded and t == 1 and num_slots == start + 1 and not plain_causal and not output_attentions:
            # one new token past the sliding window: the keys it sees are the last `window` slots, so attention
            # reads just those, as a plain causal step (the same numbers as masking the others out)
            first_key, plain_causal = start + 1 - window, True
            bias = bias[..., first_key:]
        cos, sin = cos_sin(self.rope, position_ids, long, inputs_embeds.dtype)
        ctx = StepContext(RotaryTables.build(cos, sin, self.config.head_dim), bias, plain_causal, first_key, cache,
                          self.config._attn_implementation, output_attentions, self.ops)

        x = self.embed_dropout(inputs_embeds)
        if not 0 < keep_last < t or output_attentions or output_hidden_states or output_router_logits:
            keep_last = 0  # every position is wanted, or every layer's full output is reported
        all_hidden = [x] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        all_router = [] if output_router_logits else None
        for i, layer in enumerate(self.layers):
            rows = keep_last if i == len(self.layers) - 1 else 0
            if self.gradient_checkpointing and self.training:
                x, weights, router = torch.utils.checkpoint.checkpoint(layer, x, ctx, rows, use_reentrant=False)
            else:
                x, weights, router = layer(x, ctx, rows)
            if all_hidden is not None:
                all_hidden.append(x)
            if all_attn is not None:
                all_attn.append(weights)
            if all_router is not None and router is not None:
                all_router.append(router)
        x = self._modules[self.final_norm_name](x)
        if all_hidden is not None:
            all_hidden[-1] = x  # the reference reports the normed output in place of the last layer's
        return TrunkOutput(x, _tuple(all_hidden), _tuple(all_attn), _tuple(all_router))

    def _run_ragged(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, long: torch.Tensor,
                    cache: CacheProtocol) -> TrunkOutput:
        """One new token per row [B, 1, hidden], each row at its own cache length (a serving engine's decode batch,
        `cache.ragged`): the linears see all rows at once, attention runs row by row on the cache's views, so a
        row's numbers are those of the same step run alone wherever the linears' are."""
        if inputs_embeds.shape[1] != 1:
            raise ValueError(f"a ragged cache takes one new token per row, got {inputs_embeds.shape[1]}")
        cos, sin = cos_sin(self.rope, position_ids, long, inputs_embeds.dtype)
        ctx = StepContext(RotaryTables.build(cos, sin, self.config.head_dim), None, False, 0, cache,
                          self.config._attn_implementation, False, self.ops, True, self.config.sliding_window)
        x = self.embed_dropout(inputs_embeds)
        for layer in self.layers:
            x = layer(x, ctx)[0]
        return TrunkOutput(self._modules[self.final_norm_name](x), None, None, None)

    def _run_packed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache: CacheProtocol,
                    keep: int | torch.Tensor) -> TrunkOutput:
        """Several sequences' new tokens [1, T, hidden] one segment after another (`cache.packed`, `packed.py`): the
        linears see all T tokens, rope and attention run per segment on its own cache row. `keep` (an index tensor
        [K]): the last layer runs its output projection and MLP for those positions only, and the trunk returns
        them [1, K, hidden]."""
        long = segment_regimes(self.rope, position_ids, cache)  # [S]
        per_sequence = self.rope.original_max_positions is not None and self.rope.static_long is None
        cache.prepare(position_ids, 0, 1, inputs_embeds if per_sequence else None)
        cache.rope_long = long
        cos, sin = segment_cos_sin(self.rope, position_ids, long, cache, inputs_embeds.dtype)
        ctx = StepContext(RotaryTables.build(cos, sin, self.config.head_dim), None, False, 0, cache,
                          self.config._attn_implementation, False, self.ops, False, self.config.sliding_window,
                          packed=True)
        keep = keep if torch.is_tensor(keep) else 0
        x = self.embed_dropout(inputs_embeds)
        for i, layer in enumerate(self.layers):
            x = layer(x, ctx, keep if i == len(self.layers) - 1 else 0)[0]
        return TrunkOutput(self._modules[self.final_norm_name](x), None, None, None, kept=torch.is_tensor(keep))

    def _recompute_crossing_rows(self, cache: CacheProtocol, long: torch.Tensor, attention_mask: torch.Tensor | None
                                 ) -> None:
        """Rows whose LongRoPE regime changes (a sequence grew past original_max_position_embeddings) get their
        cached keys and values recomputed once in the new regime, exactly as an uncached forward would see them.
        Every layer's k/v depend on the regime through the layers below, so re-rotating keys alone is not enough."""
        changed = cache.rope_long != long  # [B]
        if not bool(changed.any()):
            return
        past = cache.get_seq_length()
        inputs, positions = cache.layer0_inputs()  # [B, past, hidden], [B, past]
        if inputs is None:
            raise RuntimeError("this cache was filled without the layer-0 inputs needed to switch LongRoPE regime; "
                               "build a fresh cache (or use longrope_policy='static')")
        rows = changed.nonzero().squeeze(1)  # [b]
        fresh = DynamicCache()
        mask = attention_mask[rows, :past] if attention_mask is not None else None
        self.run(inputs[rows], mask, positions[rows], fresh, 0, False, False, False, long=long[rows])
        cache.replace_rows(rows, fresh)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _kept(x: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at the positions `keep` names: the last `keep` (an int > 0), those of an index tensor, or all."""
    if torch.is_tensor(keep):
        return x[:, keep]
    return x[:, -keep:] if keep else x


def _tuple(items: list | None) -> tuple | None:
    return None if items is None else tuple(items)
