"""Rotary position embeddings as pure functions: frequency tables, the short/long LongRoPE choice, rotation.

Notation used in shape comments throughout phikit:
    B batch, T new tokens, S cache slots, H query heads, KV key/value heads, D head dim, R rotary dims (R <= D),
    E experts, N tokens flattened (B*T), V vocabulary.

LongRoPE (Phi-3-128k, Phi-3.5, Phi-4-mini, Phi-3.5-MoE) has two frequency sets: `short_factor` for sequences that
fit the pretraining length `original_max_position_embeddings`, `long_factor` beyond it, and an output scale
(`attention_factor` on Phi-3; `short_mscale` / `long_mscale` on PhiMoE). The choice is made per sequence: a row is
"long" when its largest position + 1 exceeds the pretraining length (the reference rule, applied row by row instead
of to the whole batch). Under `longrope_policy="static"` every row uses the set chosen once from
`longrope_static_length` (default `max_position_embeddings`), as vLLM and llama.cpp do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import REFERENCE, Ops


@dataclass(frozen=True)
class RopeSpec:
    """Everything needed to build cos/sin tables; built once per model from its config."""

    rotary_dim: int  # R
    short_inv_freq: torch.Tensor  # [R/2] float32
    long_inv_freq: torch.Tensor  # [R/2] float32 (== short for plain RoPE)
    short_scale: float
    long_scale: float
    original_max_positions: int | None  # None: plain RoPE, one regime only
    static_long: bool | None  # None: choose per sequence; True/False: fixed by the static policy


def inverse_frequencies(theta: float, rotary_dim: int, factors: list[float] | None = None) -> torch.Tensor:
    """[R/2] float32: 1 / (factor_i * theta^(2i/R)), the LongRoPE form; factors=None is plain RoPE."""
    # Explicitly on the CPU: models are built under `torch.device("meta")` when loading, and tables must be real.
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim
    if factors is None:
        return 1.0 / (theta**exponents)
    return 1.0 / (torch.tensor(factors, dtype=torch.float32, device="cpu") * theta**exponents)


def longrope_attention_factor(rope_parameters: dict, max_positions: int) -> float:
    """Phi-3's cos/sin scale: sqrt(1 + ln(s) / ln(L0)) with s = max_positions / L0, unless the config fixes it."""
    if rope_parameters.get("attention_factor") is not None:
        return float(rope_parameters["attention_factor"])
    original = rope_parameters["original_max_position_embeddings"]
    factor = rope_parameters.get("factor") or max_positions / original
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))


def rope_spec_from_config(config) -> RopeSpec:
    """Build the frequency tables for a validated phikit config."""
    rp = config.rope_parameters
    dim = config.rotary_dim
    theta = rp["rope_theta"]
    if rp["rope_type"] != "longrope":
        inv = inverse_frequencies(theta, dim)
        return RopeSpec(dim, inv, inv, 1.0, 1.0, None, None)
    short_inv = inverse_frequencies(theta, dim, rp["short_factor"])
    long_inv = inverse_frequencies(theta, dim, rp["long_factor"])
    if config.longrope_mscales:  # PhiMoE: one scale per regime (Phi-3 ignores mscale keys, as the reference)
        short_scale, long_scale = float(rp["short_mscale"]), float(rp["long_mscale"])
    else:
        short_scale = long_scale = longrope_attention_factor(rp, config.max_position_embeddings)
    original = rp["original_max_position_embeddings"]
    static_long = None
    if config.longrope_policy == "static":
        static_long = (config.longrope_static_length or config.max_position_embeddings) > original
    return RopeSpec(dim, short_inv, long_inv, short_scale, long_scale, original, static_long)


def choose_long(spec: RopeSpec, position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """[B] bool: which rows use the long factors for this forward (position_ids [B or 1, T])."""
    if spec.original_max_positions is None:
        return torch.zeros(batch, dtype=torch.bool, device=position_ids.device)
    if spec.static_long is not None:
        return torch.full((batch,), spec.static_long, dtype=torch.bool, device=position_ids.device)
    longest = position_ids.amax(dim=-1) + 1  # [B or 1]
    return (longest > spec.original_max_positions).expand(batch)


def cos_sin(spec: RopeSpec, position_ids: torch.Tensor, long: torch.Tensor,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, T, R] for positions [B or 1, T], each row in its own regime `long` [B]."""
    device = position_ids.device
    short_inv = spec.short_inv_freq.to(device)
    long_inv = spec.long_inv_freq.to(device)
    inv_freq = torch.where(long[:, None], long_inv, short_inv)  # [B, R/2]
    scale = torch.where(long, spec.long_scale, spec.short_scale).to(torch.float32)[:, None, None]  # [B, 1, 1]
    freqs = position_ids[..., None].float() * inv_freq[:, None, :]  # [B, T, R/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, R]
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim, the pairing Hugging Face checkpoints are trained with."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of x [B, heads, T, D] by cos/sin [B, T, R]; the other D - R dims pass through."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, R]
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


@dataclass
class RotaryTables:
    """`apply_rotary` in four tensor ops per call, for the many calls of one forward (every layer's q and k):

        x * cos_full + x[..., partner] * sin_signed

    cos_full [B, 1, T, D] is cos on the rotary dims and 1 on the pass-through dims; sin_signed is -sin on the first
    half of the rotary dims, +sin on the second and 0 on the pass-through dims; `partner` [D] maps dim i to the dim
    rotate_half pairs it with. Each rotary dim sees the same two products and one sum as `apply_rotary` (a sign
    flip is exact), and a pass-through dim is x * 1 + y * 0 = x, so the results are the same numbers."""

    cos_full: torch.Tensor
    sin_signed: torch.Tensor
    partner: torch.Tensor
    rotary: int  # R

    @classmethod
    def build(cls, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> "RotaryTables":
        """cos, sin [B, T, R] -> tables for heads of `head_dim` (R <= head_dim)."""
        rotary, half = cos.shape[-1], cos.shape[-1] // 2
        passing = head_dim - rotary
        cos_full = torch.cat((cos, cos.new_ones(*cos.shape[:-1], passing)), dim=-1)[:, None]
        sin_signed = torch.cat((-sin[..., :half], sin[..., half:], sin.new_zeros(*sin.shape[:-1], passing)),
                               dim=-1)[:, None]
        index = torch.arange(head_dim, device=cos.device)
        partner = torch.where(index < rotary, (index + half) % max(rotary, 1), index)
        return cls(cos_full, sin_signed, partner, rotary)

    def apply(self, x: torch.Tensor, ops: Ops = REFERENCE) -> torch.Tensor:
        """x [B, heads, T, D] -> rotated x, equal to `apply_rotary(x, cos, sin)` (`ops.rotary`)."""
        return ops.rotary(x, self.cos_full, self.sin_signed, self.rotary)
