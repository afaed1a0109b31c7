"""Checkpoint tensor names -> phikit parameter names: a declarative plan, computed from names and shapes alone.

Most checkpoints need no mapping (phikit's parameter names are the Hugging Face names). The exceptions:

* the legacy `phi-msft` layout of phi-1/1.5/2 (`transformer.h.N.mixer.Wqkv`, `lm_head.linear`, ...), whose fused
  Wqkv rows are split into q_proj / k_proj / v_proj;
* PhiMoE experts stacked as transformers 5.x holds them in memory (`mlp.experts.gate_up_proj` [E, 2I, H],
  `mlp.experts.down_proj` [E, H, I], `mlp.router.weight`), split back into per-expert w1 / w3 / w2;
* a bare-model checkpoint loaded into a model with a head (or the reverse): the `model.` prefix is added/removed.

`plan_sources` returns, for each parameter, which checkpoint tensors it is built from and how.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

Build = Callable[[list[torch.Tensor]], torch.Tensor]

# Checkpoint tensors that carry no weights (recomputed buffers of older implementations).
IGNORABLE = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"), re.compile(r"\.attn\.(masked_)?bias$"))


def _take(x: list[torch.Tensor]) -> torch.Tensor:
    return x[0]


@dataclass
class Source:
    names: tuple[str, ...]  # checkpoint tensors consumed
    build: Build = _take
    shape: tuple[int, ...] | None = None  # shape after build, when it is known from the names' shapes


@dataclass
class Plan:
    sources: dict[str, Source] = field(default_factory=dict)  # parameter name -> where it comes from
    unused: list[str] = field(default_factory=list)  # checkpoint tensors nothing consumed (and not ignorable)


def _rows(start: int, stop: int) -> Build:
    return lambda x: x[0][start:stop]


def _msft_renames(name: str, num_layers: int) -> str:
    """Rename one phi-msft tensor (both of its historical spellings) to the Hugging Face name."""
    m = re.match(r"layers\.(\d+)\.(.*)$", name)  # oldest spelling: layers.0 = embedding, layers.N+1 = head
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx == 0:
            name = "transformer.embd." + rest
        elif idx == num_layers + 1:
            name = "lm_head." + rest
        else:
            name = f"transformer.h.{idx - 1}.{rest}"
    name = name.replace("transformer.embd.wte.", "model.embed_tokens.")
    name = name.replace("lm_head.ln.", "model.final_layernorm.").replace("lm_head.linear.", "lm_head.")
    m = re.match(r"transformer\.h\.(\d+)\.(.*)$", name)
    if m:
        rest = m.group(2).replace("ln.", "input_layernorm.", 1) if m.group(2).startswith("ln.") else m.group(2)
        rest = rest.replace("mixer.out_proj.", "self_attn.dense.").replace("mixer.Wqkv.", "self_attn.Wqkv.")
        name = f"model.layers.{m.group(1)}.{rest}"
    return name


def is_msft_layout(names: list[str]) -> bool:
    return any(n.startswith("transformer.") or n.startswith("layers.0.wte") for n in names)


def plan_sources(config, checkpoint: dict[str, tuple[int, ...]], params: dict[str, tuple[int, ...]]) -> Plan:
    """Match checkpoint tensors {name: shape} to model parameters {name: shape}."""
    plan = Plan()
    renamed: dict[str, str] = {}  # HF-style name -> checkpoint name
    msft = is_msft_layout(list(checkpoint))
    for name in checkpoint:
        renamed[_msft_renames(name, config.num_hidden_layers) if msft else name] = name
    has_prefix = any(p.startswith("model.") for p in params)
    consumed: set[str] = set()

    def lookup(param: str) -> str | None:
        for candidate in (param, param[len("model."):] if param.startswith("model.") else "model." + param):
            if candidate in renamed:
                return renamed[candidate]
        return None

    for param, shape in params.items():
        src = lookup(param)
        if src is not None:
            plan.sources[param] = Source((src,), shape=checkpoint[src])
            consumed.add(src)
            continue
        source = _split_source(config, param, lookup, checkpoint, has_prefix)
        if source is not None:
            plan.sources[param] = source
            consumed.update(source.names)
    plan.unused = [n for n in checkpoint if n not in consumed and not any(p.search(n) for p in IGNORABLE)]
    return plan


def _split_source(config, param: str, lookup, checkpoint: dict[str, tuple[int, ...]],
                  has_prefix: bool) -> Source | None:
    """Parameters built from a slice of a fused or stacked checkpoint tensor."""
    m = re.match(r"(.*self_attn\.)([qkv])_proj\.(weight|bias)$", param)
    if m:  # phi-msft Wqkv: rows [q | k | v]
        src = lookup(f"{m.group(1)}Wqkv.{m.group(3)}")
        if src is None:
            return None
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        start, stop = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[m.group(2)]
        rest = checkpoint[src][1:]
        return Source((src,), _rows(start, stop), (stop - start, *rest))
    m = re.match(r"(.*)block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w[123])\.weight)$", param)
    if m:  # PhiMoE experts stacked as transformers 5.x holds them
        prefix = m.group(1) + "mlp."
        if m.group(2) == "gate.weight":
            src = lookup(prefix + "router.weight")
            return None if src is None else Source((src,), shape=checkpoint[src])
        e, which = int(m.group(3)), m.group(4)
        inter = config.intermediate_size
        if which == "w2":
            src = lookup(prefix + "experts.down_proj")
            return None if src is None else Source((src,), lambda x: x[0][e], checkpoint[src][1:])
        src = lookup(prefix + "experts.gate_up_proj")
        if src is None:
            return None
        start = 0 if which == "w1" else inter  # gate rows first, then up rows
        return Source((src,), lambda x: x[0][e, start:start + inter], (inter, checkpoint[src][2]))
    return None
