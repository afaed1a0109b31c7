"""Which process group a `from_pretrained(..., tp_plan="auto")` shards over, as transformers reads its arguments:

* `device_mesh=` a 1-D `DeviceMesh` (or one with a "tp" dimension): its group;
* else the default group, initialised here from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT) where the caller has not: gloo on CPU, NCCL on CUDA;
* `tp_size=k` below the world size: consecutive ranks in groups of k (data-parallel replicas of a k-way model).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from .heads import TensorParallelError

_SUBGROUPS: dict[tuple[int, int], Any] = {}  # (world size, tp) -> this rank's subgroup (new_group runs once)


def wants_tp(tp_plan: Any, tp_size: Any, device_mesh: Any) -> bool:
    if tp_plan is None:
        if device_mesh is not None or tp_size is not None:
            raise TensorParallelError(f"device_mesh / tp_size (tp_size={tp_size!r}) shard a model only with "
                                      f"tp_plan='auto'; pass tp_plan='auto' as well")
        return False
    if tp_plan != "auto":
        raise TensorParallelError(f"tp_plan={tp_plan!r:.80}: phikit shards Phi models by its own plan (fused "
                                  f"q/k/v split by heads, gate_up by halves); pass tp_plan='auto'")
    return True


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def resolve_group(tp_size: Any, device_mesh: Any, device: torch.device) -> tuple[Any, int, int]:
    """(process group, this rank's index in it, its size)."""
    if device_mesh is not None:
        mesh = device_mesh
        names = getattr(mesh, "mesh_dim_names", None) or ()
        if "tp" in names:
            mesh = mesh["tp"]
        elif getattr(mesh, "ndim", 1) != 1:
            raise TensorParallelError(f"device_mesh has {mesh.ndim} dimensions {names or ''}; pass a 1-D mesh or "
                                      f"one with a dimension named 'tp'")
        group = mesh.get_group()
        return group, dist.get_rank(group), dist.get_world_size(group)
    if not dist.is_initialized():
        needed = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if needed:
            raise TensorParallelError(
                f"tp_plan='auto' needs a torch.distributed process group, and none is initialised ({', '.join(needed)} "
                f"not set); run under `torchrun --nproc-per-node N`, or call "
                f"torch.distributed.init_process_group('{backend_for(device)}', ...) first")
        dist.init_process_group(backend_for(device))
    world, rank = dist.get_world_size(), dist.get_rank()
    if tp_size is None or tp_size == world:
        return dist.group.WORLD, rank, world
    if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1 or world % tp_size:
        raise TensorParallelError(f"tp_size={tp_size!r} must divide the world size {world} (ranks are grouped "
                                  f"consecutively into world / tp_size replicas)")
    key = (world, tp_size)
    if key not in _SUBGROUPS:
        mine = None
        for first in range(0, world, tp_size):  # every rank creates every group, as new_group requires
            g = dist.new_group(list(range(first, first + tp_size)))
            if first <= rank < first + tp_size:
                mine = g
        _SUBGROUPS[key] = mine
    return _SUBGROUPS[key], rank % tp_size, tp_size


def device_for_rank(device: torch.device) -> torch.device:
    """A CUDA model under torchrun goes to its local rank's GPU (as transformers places it)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
