"""Tensor parallelism (`from_pretrained(..., tp_plan="auto")`): the head assignment, the sharding plan, the
collectives. See docs/ARCHITECTURE.md, "Tensor parallelism"."""

from .apply import finish, parallelize, shard_for_loading, tied_head_rows
from .comm import CommStats, TensorParallel
from .group import wants_tp
from .heads import HeadShard, TensorParallelError, assign_heads, valid_tp_values
from .plan import Shard, shard_plan

__all__ = ["CommStats", "HeadShard", "Shard", "TensorParallel", "TensorParallelError", "assign_heads", "finish",
           "parallelize", "shard_for_loading", "shard_plan", "tied_head_rows", "valid_tp_values", "wants_tp"]
