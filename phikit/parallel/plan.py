"""The tensor-parallel sharding plan: for each parameter of a built model, which part of the full tensor a rank
holds. Computed from the config alone, so a rank can read just its slices of a checkpoint.

    qkv_proj   [q | k | v] rows: the rank's query heads' q rows, its kv heads' k and v rows (`heads.py`)
    q/k/v_proj the same parts of each (phi)
    dense / o_proj, fc2, down_proj, experts' w2     input columns of the rank's heads / intermediate part
    fc1, experts' w1 and w3                         rows of the rank's intermediate part
    gate_up_proj [gate | up] rows: the rank's part of each half
    lm_head    rows of the rank's vocabulary part (gathered for the logits); tied: a view of the embedding's rows
    the biases of the row-parallel projections (dense, fc2): rank 0 holds them, the others zeros, so the sum that
               the one all-reduce per block forms carries each bias once
    embedding, norms, qk layernorms, the MoE router, a classifier's score head: replicated

The partial sums of a block (attention's output projection, and the MLP's) meet in one all-reduce per residual
branch; phi's parallel block adds both branches first, so it needs one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..model.decoder import Attention, Decoder, DecoderLayer
from ..model.layers import FcMLP, GatedMLP
from ..model.moe import SparseMoE
from .heads import HeadShard, alignment, assign_heads, part

Piece = tuple[int, int]  # [start, stop) along the shard's dimension


@dataclass(frozen=True)
class Shard:
    """A rank's part of one parameter: pieces of the full tensor along `dim`, concatenated, or (`rank0_only`) the
    whole tensor on rank 0 and zeros elsewhere."""

    full_shape: tuple[int, ...]
    dim: int = 0
    pieces: tuple[Piece, ...] = ()
    rank0_only: bool = False
    rank: int = 0

    @property
    def local_shape(self) -> tuple[int, ...]:
        if self.rank0_only:
            return self.full_shape
        shape = list(self.full_shape)
        shape[self.dim] = sum(b - a for a, b in self.pieces)
        return tuple(shape)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """full [full_shape] -> this rank's part. One piece is a view (a checkpoint's mapped file pages are then
        read only for those rows or columns); several are concatenated."""
        if tuple(full.shape) != self.full_shape:
            raise ValueError(f"expected a tensor of shape {self.full_shape}, got {tuple(full.shape)}")
        if self.rank0_only:
            return full if self.rank == 0 else torch.zeros_like(full)
        parts = [full.narrow(self.dim, a, b - a) for a, b in self.pieces]
        return parts[0] if len(parts) == 1 else torch.cat(parts, self.dim)

    @property
    def reads(self) -> bool:
        """Whether this rank reads the tensor's bytes at all."""
        return not self.rank0_only or self.rank == 0


def _merge(pieces: list[Piece]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for a, b in pieces:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def _head_rows(heads, head_dim: int, offset: int = 0) -> list[Piece]:
    return [(offset + h * head_dim, offset + (h + 1) * head_dim) for h in heads]


def find_decoder(model: nn.Module) -> tuple[str, Decoder]:
    for name, module in model.named_modules():
        if isinstance(module, Decoder):
            return (name + "." if name else ""), module
    raise TypeError(f"{type(model).__name__} holds no phikit Decoder; tensor parallelism shards phikit's models")


def head_shard(config, tp: int, rank: int) -> HeadShard:
    return assign_heads(config.num_attention_heads, config.num_key_value_heads, tp, rank)


def shard_plan(model: nn.Module, tp: int, rank: int) -> dict[str, Shard]:
    """{parameter name: Shard} for every parameter a rank holds only part of (or, for biases, only on rank 0)."""
    prefix, decoder = find_decoder(model)
    config = decoder.config
    heads = head_shard(config, tp, rank)
    d = config.head_dim
    q_size, kv_size = config.num_attention_heads * d, config.num_key_value_heads * d
    q_rows = _head_rows(heads.q_heads, d)
    kv_rows = _head_rows(heads.kv_heads, d)
    plan: dict[str, Shard] = {}

    def rows(name: str, shape, pieces) -> None:
        plan[name] = Shard(tuple(shape), 0, _merge(pieces), rank=rank)

    def cols(name: str, shape, pieces) -> None:
        plan[name] = Shard(tuple(shape), 1, _merge(pieces), rank=rank)

    def once(name: str, shape) -> None:
        plan[name] = Shard(tuple(shape), rank0_only=True, rank=rank)

    inter = config.intermediate_size
    lo, hi = part(inter, tp, rank, alignment(inter, tp))
    for i, layer in enumerate(decoder.layers):
        p = f"{prefix}layers.{i}."
        attn: Attention = layer.self_attn
        a = p + "self_attn."
        if attn.fused:
            pieces = q_rows + _head_rows(heads.kv_heads, d, q_size) + _head_rows(heads.kv_heads, d, q_size + kv_size)
            for leaf, t in attn.qkv_proj.named_parameters():
                rows(f"{a}qkv_proj.{leaf}", t.shape, pieces)
        else:
            for proj, pieces in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                for leaf, t in getattr(attn, proj).named_parameters():
                    rows(f"{a}{proj}.{leaf}", t.shape, pieces)
        out = attn._modules[attn.out_name]
        cols(f"{a}{attn.out_name}.weight", out.weight.shape, q_rows)
        if out.bias is not None:
            once(f"{a}{attn.out_name}.bias", out.bias.shape)
        m = p + layer.mlp_name + "."
        mlp = layer._modules[layer.mlp_name]
        if isinstance(mlp, FcMLP):
            for leaf, t in mlp.fc1.named_parameters():
                rows(f"{m}fc1.{leaf}", t.shape, [(lo, hi)])
            cols(f"{m}fc2.weight", mlp.fc2.weight.shape, [(lo, hi)])
            if mlp.fc2.bias is not None:
                once(f"{m}fc2.bias", mlp.fc2.bias.shape)
        elif isinstance(mlp, GatedMLP):
            rows(f"{m}gate_up_proj.weight", mlp.gate_up_proj.weight.shape, [(lo, hi), (inter + lo, inter + hi)])
            cols(f"{m}down_proj.weight", mlp.down_proj.weight.shape, [(lo, hi)])
        elif isinstance(mlp, SparseMoE):
            for e, expert in enumerate(mlp.experts):
                rows(f"{m}experts.{e}.w1.weight", expert.w1.weight.shape, [(lo, hi)])
                rows(f"{m}experts.{e}.w3.weight", expert.w3.weight.shape, [(lo, hi)])
                cols(f"{m}experts.{e}.w2.weight", expert.w2.weight.shape, [(lo, hi)])
        else:
            raise TypeError(f"layer {i} has an MLP of type {type(mlp).__name__}, which the plan does not know")
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and not config.tie_word_embeddings:
        v_lo, v_hi = part(head.out_features, tp, rank)
        for leaf, t in head.named_parameters():
            rows(f"lm_head.{leaf}", t.shape, [(v_lo, v_hi)])
    elif isinstance(head, nn.Linear) and head.bias is not None:
        v_lo, v_hi = part(head.out_features, tp, rank)
        rows("lm_head.bias", head.bias.shape, [(v_lo, v_hi)])
    return plan


def localise(model: nn.Module, plan: dict[str, Shard], tp: int, rank: int) -> None:
    """Give every planned parameter its local shape (its rank's part of the current values; a `meta` parameter
    stays on `meta`, to be filled by the loader), and every attention module its local head counts."""
    for name, shard in plan.items():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = module._parameters[leaf]
        if old.is_meta:
            new = torch.empty(shard.local_shape, dtype=old.dtype, device="meta")
        else:
            new = shard.take(old.detach()).clone()
        module._parameters[leaf] = nn.Parameter(new, requires_grad=old.requires_grad)
        if isinstance(module, nn.Linear) and leaf == "weight":
            module.out_features, module.in_features = new.shape
    _, decoder = find_decoder(model)
    heads = head_shard(decoder.config, tp, rank)
    for layer in decoder.layers:
        assert isinstance(layer, DecoderLayer)
        layer.self_attn.num_heads = len(heads.q_heads)
        layer.self_attn.num_kv_heads = len(heads.kv_heads)
