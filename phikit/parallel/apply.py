"""Turn a model into its rank's shard: before loading (`shard_for_loading`: meta parameters get their local shapes,
the loader then reads only the rank's slices) or in memory (`parallelize`: the rank keeps its slices of the
weights it has), then `finish`: the head tied to its embedding rows, the collectives in place, the fused
one-call decode step (which runs every layer without a collective between them) switched off."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from ..ops import bind, bound, register
from .comm import BranchReduce, TensorParallel, VocabGather
from .group import resolve_group
from .heads import check_tp, part
from .plan import Shard, find_decoder, localise, shard_plan


def _setup(model: nn.Module, tp_size: Any, device_mesh: Any, device: torch.device
           ) -> tuple[TensorParallel, dict[str, Shard]]:
    _, decoder = find_decoder(model)
    config = decoder.config
    group, rank, tp = resolve_group(tp_size, device_mesh, device)
    check_tp(config.num_attention_heads, config.num_key_value_heads, tp)
    state = TensorParallel(group, rank, tp)
    state.choose_reducer(device)
    plan = shard_plan(model, tp, rank)
    localise(model, plan, tp, rank)
    model.tensor_parallel = state
    model.tp_size = tp
    model._tp_plan = "auto"
    model.device_mesh = device_mesh
    return state, plan


def shard_for_loading(model: nn.Module, tp_size: Any, device_mesh: Any, device: torch.device) -> dict[str, Shard]:
    """Before the loader fills `model` (on `meta`): local shapes; the plan tells the loader which slices to read."""
    return _setup(model, tp_size, device_mesh, device)[1]


def parallelize(model: nn.Module, tp_size: int | None = None, device_mesh: Any = None) -> nn.Module:
    """Shard a built model in place (every rank holding the same full weights, e.g. built from one seed): each rank
    keeps its slices. The process group must exist (or torchrun's environment name it)."""
    if getattr(model, "tensor_parallel", None) is not None:
        raise ValueError("this model is already sharded for tensor parallelism")
    device = next(model.parameters()).device
    _setup(model, tp_size, device_mesh, device)
    finish(model)
    return model


def tied_head_rows(embedding: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """The rank's vocabulary rows of a tied head: a view of the embedding (no copy)."""
    lo, hi = part(embedding.shape[0], tp.tp, tp.rank)
    return embedding[lo:hi]


def finish(model: nn.Module) -> None:
    state: TensorParallel = model.tensor_parallel
    _, decoder = find_decoder(model)
    if state.tp == 1:  # a one-rank group (tp_size=1): the whole model, nothing to reduce or gather
        return
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module):  # nn.Linear, FastLinear, or a quantized linear the loader swapped in
        vocab = decoder.config.vocab_size
        if decoder.config.tie_word_embeddings:
            model.tie_weights()  # PreTrainedMixin.tie_weights takes the rank's rows (tied_head_rows)
        if isinstance(head, nn.Linear):
            head.out_features = head.weight.shape[0]
        head.register_forward_hook(VocabGather(state, vocab))
    reduce = BranchReduce(state)
    for layer in decoder.layers:
        layer.reduce = reduce
    ops = bound(model)
    if ops.decode_step is not None or not ops.name.endswith("+tp"):
        name = ops.name if ops.name.endswith("+tp") else ops.name + "+tp"
        bind(model, register(dataclasses.replace(ops, name=name, decode_step=None)))
