"""LoRA as a pass over a built model: wrap chosen `nn.Linear` layers, train the adapters, merge or save them.

    y = x W^T + b + scaling * dropout(x) A^T (B * mask)^T        A [R, in], B [out, R], scaling = alpha / r

The base weight stays frozen (the wrapper holds the very same Parameter, so `state_dict()` keys of the base are
unchanged). Adapters are saved and read in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<module>.lora_A.weight`), so PEFT loads a phikit adapter onto the transformers model and phikit
loads PEFT's.

Split adapters onto fused layers. phikit (like the Phi-3 checkpoints) has one `qkv_proj` and one `gate_up_proj`;
adapters trained on a Llama-style copy target `q_proj`/`k_proj`/`v_proj` and `gate_proj`/`up_proj`. These load as one
fused LoRA whose delta equals the split ones exactly, PEFT's own convention for fused weights
(`peft.utils.transformers_weight_conversion.PeftConcatenate`): A is the concatenation of the parts' A along the rank,
B is block-diagonal (part p's B sits in p's output rows and p's rank columns), so the rank is the sum of the parts'
ranks and alpha is scaled with it to keep alpha / r. A fixed 0/1 mask on B keeps the off-diagonal blocks exactly zero
while training, so the structure survives fine-tuning; parts the adapter leaves out (e.g. only q and v) are zero rows.
Saving writes the fused module (with `rank_pattern`/`alpha_pattern`), which PEFT loads onto the fused transformers
model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights.rollback import Rollback
from .weights.adapter_files import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, AdapterError, pattern_value,
                                    read_adapter)

PEFT_PREFIX = "base_model.model."
# fused phikit module -> the split names adapters for Llama-style copies use, in row order
FUSED_PARTS: dict[str, tuple[str, ...]] = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                           "gate_up_proj": ("gate_proj", "up_proj")}
SPLIT_TO_FUSED = {part: fused for fused, parts in FUSED_PARTS.items() for part in parts}


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """Every dense projection of the decoder layers: phi3 fused, phi split, phimoe attention (its experts are opt-in:
    16 experts x 3 matrices per layer, and PEFT on transformers 5.x sees them as stacked parameters, not modules)."""
    arch = model.config.architecture()
    attention = ("qkv_proj",) if arch.fused_qkv else ("q_proj", "k_proj", "v_proj")
    mlp = {"fc": ("fc1", "fc2"), "gated": ("gate_up_proj", "down_proj"), "moe": ()}[arch.mlp]
    return attention + (arch.out_proj,) + mlp


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (PEFT's `lora.Linear`, one adapter).

    x [..., in] -> [..., out]. `blocks` [(row_start, row_stop, rank), ...] builds a block-diagonal B for fused layers
    loaded from split adapters; None means one dense B. Adapter weights are kept in fp32 when the base is fp16/bf16
    (PEFT's `autocast_adapter_dtype`): the base is frozen, the adapters are what AdamW updates.
    """

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 use_rslora: bool = False, blocks: Sequence[tuple[int, int, int]] | None = None) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r={r} must be a positive integer (typical: 8 or 16)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dtype = base.weight.dtype if base.weight.dtype == torch.float32 else torch.float32
        factory = dict(device=base.weight.device, dtype=dtype)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.r, self.lora_alpha, self.use_rslora = r, float(lora_alpha), use_rslora
        self.scaling = self.lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.blocks = tuple(blocks) if blocks is not None else None
        mask = None
        if self.blocks is not None:
            if sum(rank for _, _, rank in self.blocks) != r:
                raise ValueError(f"blocks {self.blocks} have ranks summing to something other than r={r}")
            mask = torch.zeros(self.out_features, r, **factory)
            col = 0
            for start, stop, rank in self.blocks:
                mask[start:stop, col:col + rank] = 1.0
                col += rank
        self.register_buffer("lora_mask", mask, persistent=False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self, init: bool | str = True) -> None:
        """PEFT's initialisations: True = kaiming-uniform A and zero B (the layer starts equal to the base);
        "gaussian" = A ~ N(0, 1/r); False = both random (tests: a non-trivial adapter)."""
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(self.lora_A.weight, std=1 / self.r)
            else:
                nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            if init is False:
                nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5))
            else:
                nn.init.zeros_(self.lora_B.weight)
            self._apply_mask()

    def _apply_mask(self) -> None:
        if self.lora_mask is not None:
            with torch.no_grad():
                self.lora_B.weight.mul_(self.lora_mask)

    def _b(self) -> torch.Tensor:
        b = self.lora_B.weight  # [out, R]
        return b if self.lora_mask is None else b * self.lora_mask

    def delta_weight(self) -> torch.Tensor:
        """scaling * (B * mask) @ A: [out, in] in fp32, what merging adds to the base weight."""
        return (self._b().float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)  # [..., out]
        h = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # [..., R]
        return result + (F.linear(h, self._b()) * self.scaling).to(result.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the adapter folded into the weight (computed in fp32, cast to the base dtype)."""
        merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        return merged

    def extra_repr(self) -> str:
        fused = f", blocks={list(self.blocks)}" if self.blocks is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha:g}{fused}")


@dataclass
class LoRAConfig:
    """What `apply_lora` was asked for; written to adapter_config.json with PEFT's field names."""

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ()
    use_rslora: bool = False
    base_model_name_or_path: str | None = None


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> LoRALinear, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, targets: Sequence[str] | str) -> bool:
    # PEFT's rule: a string is a regex over the full module name; a list matches the name or any ".suffix" of it
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _check_not_tied(model: nn.Module, name: str) -> None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(model.config, "tie_word_embeddings", False) and \
            model.get_submodule(name) is head:
        raise ValueError(f"{name} shares its weight with the input embedding (tie_word_embeddings=True); a LoRA on "
                         f"it cannot be merged or saved as a tied checkpoint. Leave it out of target_modules")


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: Sequence[str] | str | None = None, use_rslora: bool = False,
               init_lora_weights: bool | str = True) -> nn.Module:
    """Wrap the targeted nn.Linear layers in LoRALinear and freeze everything else; returns `model` (changed in place).

    target_modules: names matched as PEFT does (a list matches a module name or its last components, a string is a
    regex over the full name); default `default_target_modules(model)`. Only the adapters require gradients after.
    """
    if lora_modules(model):
        raise ValueError("this model already has LoRA adapters; merge_lora(model) first, or load_adapter to replace "
                         "their weights")
    _check_settings(r, alpha, dropout, use_rslora, init_lora_weights)
    targets = default_target_modules(model) if target_modules is None else target_modules
    if not isinstance(targets, str):
        targets = tuple(targets)
    chosen = [(n, m) for n, m in model.named_modules() if n and _matches(n, targets)]
    wrong = [n for n, m in chosen if not isinstance(m, nn.Linear)]
    if wrong:
        raise ValueError(f"target_modules={targets!r} matches {wrong[:4]}, which are not nn.Linear layers; "
                         f"name linear layers such as {_linear_leaf_names(model)}")
    if not chosen:
        raise ValueError(f"target_modules={targets!r} matches no layer of this {type(model).__name__}; its linear "
                         f"layers are named {_linear_leaf_names(model)}")
    for name, _ in chosen:
        _check_not_tied(model, name)
    state = Rollback(model, attrs=("lora_config", "_lora_frozen"))
    try:
        frozen = [n for n, p in model.named_parameters() if p.requires_grad]
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in chosen:
            wrapped = LoRALinear(module, r, alpha, dropout, use_rslora).train(module.training)  # eval stays eval
            wrapped.reset_lora_parameters(init_lora_weights)
            _set_module(model, name, wrapped)
        model.lora_config = LoRAConfig(r, alpha, dropout, targets, use_rslora,
                                       getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path",
                                                                                        None))
        model._lora_frozen = frozen  # parameters apply_lora froze; merge_lora gives them their gradients back
    except BaseException:
        state.restore()
        raise
    return model


def _check_settings(r: object, alpha: object, dropout: object, use_rslora: object, init: object) -> None:
    """apply_lora's numbers, checked before anything changes."""
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r={r!r} must be a positive integer (typical: 8 or 16)")
    if not number(alpha):
        raise ValueError(f"alpha={alpha!r} must be a finite number (typical: 2 * r)")
    if not number(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1)")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora={use_rslora!r} must be True or False")
    if not any(init is m or (isinstance(init, str) and init == m) for m in (True, False, "gaussian")):
        raise ValueError(f"init_lora_weights={init!r} must be True (B = 0), False (random) or 'gaussian'")


def _linear_leaf_names(model: nn.Module) -> list[str]:
    return sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))})


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, leaving plain nn.Linear layers; returns `model` (changed in place).
    Parameters that apply_lora froze require gradients again."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("this model has no LoRA adapters to merge; apply_lora or load_adapter first")
    for name, module in modules.items():
        _set_module(model, name, module.to_linear())
    params = dict(model.named_parameters())
    for name in getattr(model, "_lora_frozen", []):
        if name in params:
            params[name].requires_grad_(True)
    for attr in ("lora_config", "_lora_frozen"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters in PEFT's saved naming: base_model.model.<module>.lora_A.weight [R, in], .lora_B.weight [out, R]."""
    state = {}
    for name, m in lora_modules(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m._b().detach()
    return state


def _most_common(values: Iterable) -> object:
    values = list(values)
    return max(values, key=values.count)  # ties: the first in model order


def _saved_targets(model: nn.Module, wrapped: dict[str, LoRALinear]) -> list[str]:
    """Leaf names where every linear layer of that name has an adapter (PEFT matches them as suffixes); the full
    module names otherwise, so PEFT puts adapters exactly where they were (e.g. a regex that chose some layers)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))]
    out: list[str] = []
    for leaf in sorted({n.rpartition(".")[2] for n in wrapped}):
        same = [n for n in linear if n.rpartition(".")[2] == leaf]
        out += [leaf] if all(n in wrapped for n in same) else [n for n in same if n in wrapped]
    return out


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)  # PEFT writes lora_alpha: 16, not 16.0


def save_adapter(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> None:
    """Write adapter_config.json and adapter_model.safetensors as PEFT's `save_pretrained` does (task CAUSAL_LM).
    Modules whose rank or alpha differ from the common one (fused from split adapters) get rank/alpha patterns."""
    from safetensors.torch import save_file

    modules = lora_modules(model)
    if not modules:
        raise ValueError("this model has no LoRA adapters to save; apply_lora(model) first")
    settings = getattr(model, "lora_config", None) or LoRAConfig()
    r = _most_common(m.r for m in modules.values())
    alpha = _most_common(m.lora_alpha for m in modules.values())
    rank_pattern = {re.escape(n): m.r for n, m in modules.items() if m.r != r}
    alpha_pattern = {re.escape(n): _number(m.lora_alpha) for n, m in modules.items() if m.lora_alpha != alpha}
    alpha = _number(alpha)
    dropouts = [m.lora_dropout.p for m in modules.values() if isinstance(m.lora_dropout, nn.Dropout)]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or settings.base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": max(dropouts, default=0.0),
        "target_modules": _saved_targets(model, modules),
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "use_rslora": settings.use_rslora,
        "bias": "none", "fan_in_fan_out": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None, "inference_mode": True,
        "revision": None,
    }
    os.makedirs(folder, exist_ok=True)
    state = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    tmp = os.path.join(folder, ADAPTER_WEIGHTS_NAME + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(folder, ADAPTER_WEIGHTS_NAME))
    with open(os.path.join(folder, ADAPTER_CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def _part_rows(model: nn.Module, fused_name: str, out_features: int) -> list[tuple[int, int]]:
    """Row ranges of each part of a fused layer: q [H*D], k and v [KV*D] for qkv_proj; two halves for gate_up_proj."""
    leaf = fused_name.rpartition(".")[2]
    parent = model.get_submodule(fused_name.rpartition(".")[0])
    if leaf == "qkv_proj" and hasattr(parent, "num_kv_heads"):
        sizes = [parent.num_heads * parent.head_dim] + [parent.num_kv_heads * parent.head_dim] * 2
    else:
        n = len(FUSED_PARTS[leaf])
        sizes = [out_features // n] * n
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def _install(model: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor, alpha: float, dropout: float,
             rslora: bool, blocks: list[tuple[int, int, int]] | None) -> LoRALinear:
    """Put A [R, in] and B [out, R] (shapes already checked) on module `name`: into its LoRALinear when the rank and
    blocks agree (keeps the Parameters, so an optimizer holding them resumes), else a fresh LoRALinear around the
    base weight."""
    current = model.get_submodule(name)
    r = a.shape[0]
    keep = isinstance(current, LoRALinear) and current.r == r and current.blocks == (tuple(blocks) if blocks else None)
    if not keep:
        current = LoRALinear(current, r, alpha, dropout, rslora, blocks).train(current.training)  # eval stays eval
        _set_module(model, name, current)
    current.lora_alpha, current.use_rslora = float(alpha), rslora
    current.scaling = current.lora_alpha / (math.sqrt(r) if rslora else r)
    with torch.no_grad():
        current.lora_A.weight.copy_(a)
        current.lora_B.weight.copy_(b)
        current._apply_mask()
    return current


def _pairs(folder: str, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """module -> {"A": (tensor name, A), "B": (tensor name, B)}; every tensor must be a lora_A / lora_B weight."""
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    bad = []
    for key, tensor in tensors.items():
        # saved keys are base_model.model.<module>.lora_A.weight; state dicts may carry an adapter name too
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            bad.append(key)
        else:
            pairs.setdefault(match.group(1), {})[match.group(2)] = (key, tensor)
    if bad:
        raise AdapterError(f"{folder} holds tensors phikit cannot load: {bad[:4]} ({len(bad)} in all); only "
                           f"lora_A / lora_B weights of linear layers are supported")
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{folder}: module {name} has lora_{''.join(ab)} but not both lora_A and lora_B")
        (ka, a), (kb, b) = ab["A"], ab["B"]
        if b.shape[1] != a.shape[0]:
            raise AdapterError(f"{folder}: {ka} has shape {tuple(a.shape)} and {kb} {tuple(b.shape)}; lora_B's "
                               f"columns must equal lora_A's rows (the rank)")
    return pairs


def _check_rank(folder: str, config: dict, module: str, key: str, a: torch.Tensor) -> None:
    """The rank adapter_config.json gives `module` (rank_pattern, else r) must be the tensors' (PEFT refuses
    others; loading them would scale by the wrong alpha / r)."""
    r = pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
    if a.shape[0] != r:
        source = "r" if r == config.get("r", 8) and pattern_value(config.get("rank_pattern"), module, None) is None \
            else "rank_pattern"
        raise AdapterError(f"{folder}: {key} has shape {tuple(a.shape)} (rank {a.shape[0]}) but {ADAPTER_CONFIG_NAME} "
                           f"gives {module} {source}={r}; the config does not describe these weights (re-save the "
                           f"adapter)")


def _plan(model: nn.Module, folder: str, config: dict, tensors: dict[str, torch.Tensor]) -> list[tuple]:
    """Every check, no change: [(module name, A, B, alpha, blocks or None)] to install."""
    pairs = _pairs(folder, tensors)
    modules = dict(model.named_modules())
    direct, fused, unused = {}, {}, []
    for name, ab in pairs.items():
        parent, _, leaf = name.rpartition(".")
        if isinstance(modules.get(name), (nn.Linear, LoRALinear)):
            direct[name] = ab
        elif leaf in SPLIT_TO_FUSED and isinstance(modules.get(f"{parent}.{SPLIT_TO_FUSED[leaf]}"),
                                                   (nn.Linear, LoRALinear)):
            fused.setdefault(f"{parent}.{SPLIT_TO_FUSED[leaf]}", {})[leaf] = ab
        else:
            unused.append(name)
    if unused:
        raise AdapterError(f"{folder} has adapters for {len(unused)} layers this {type(model).__name__} does not "
                           f"have: {sorted(unused)[:4]}; the adapter was trained for another architecture")
    stale = sorted(set(lora_modules(model)) - set(direct) - set(fused))
    if stale:
        raise AdapterError(f"this model already has LoRA adapters on {stale[:4]} ({len(stale)} layers), which the "
                           f"adapter in {folder} does not cover; merge_lora(model) or load onto a fresh model")
    for name, ab in pairs.items():
        _check_rank(folder, config, name, *ab["A"])
    lora_alpha, rslora = config.get("lora_alpha", 8), bool(config.get("use_rslora", False))

    def scaling_of(name: str, r: int) -> float:
        alpha = pattern_value(config.get("alpha_pattern"), name, lora_alpha)
        return float(alpha) / (math.sqrt(r) if rslora else r)

    def alpha_for(scaling: float, r: int) -> float:
        return scaling * (math.sqrt(r) if rslora else r)

    plan = []
    for name, ab in direct.items():
        (ka, a), (kb, b) = ab["A"], ab["B"]
        layer = modules[name]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise AdapterError(f"{folder}: {ka} {tuple(a.shape)} and {kb} {tuple(b.shape)} do not fit {name}, a "
                               f"[{layer.out_features}, {layer.in_features}] layer; the adapter was trained for a "
                               f"different model size")
        plan.append((name, a, b, alpha_for(scaling_of(name, a.shape[0]), a.shape[0]), None))
    for name, parts in fused.items():
        base = modules[name]
        leaf, parent = name.rpartition(".")[2], name.rpartition(".")[0]
        rows = dict(zip(FUSED_PARTS[leaf], _part_rows(model, name, base.out_features)))
        present = [p for p in FUSED_PARTS[leaf] if p in parts]
        for p in present:
            (ka, a), (kb, b) = parts[p]["A"], parts[p]["B"]
            start, stop = rows[p]
            if a.shape[1] != base.in_features or b.shape[0] != stop - start:
                raise AdapterError(f"{folder}: {ka} {tuple(a.shape)} and {kb} {tuple(b.shape)} do not fit "
                                   f"{parent}.{p}, rows [{start}, {stop}) of {name} ([{base.out_features}, "
                                   f"{base.in_features}]); the adapter was trained for a different model size")
        scales = {p: scaling_of(f"{parent}.{p}", parts[p]["A"][1].shape[0]) for p in present}
        r = sum(parts[p]["A"][1].shape[0] for p in present)
        a = torch.cat([parts[p]["A"][1] for p in present])  # [R, in]
        b = torch.zeros(base.out_features, r, dtype=a.dtype)  # [out, R], block-diagonal
        blocks, col = [], 0
        for p in present:
            (start, stop), rank = rows[p], parts[p]["A"][1].shape[0]
            # one scaling per fused layer: fold each part's own alpha/r into its block of B
            b[start:stop, col:col + rank] = parts[p]["B"][1].float() * (scales[p] / scales[present[0]])
            blocks.append((start, stop, rank))
            col += rank
        plan.append((name, a, b, alpha_for(scales[present[0]], r), blocks))
    return plan


def load_adapter(model: nn.Module, folder: str | os.PathLike, is_trainable: bool = False) -> nn.Module:
    """Load a PEFT LoRA adapter folder onto `model` (in place; returns it). Adapters for split q_proj/k_proj/v_proj
    or gate_proj/up_proj become one fused LoRA on qkv_proj / gate_up_proj with the same delta (module docstring).

    Transactional: the config, every tensor's name, rank and shape, and every target layer are checked before the
    model is touched (`AdapterError` names the file, tensor and config value), and a failure while installing puts
    the model back as it was. The base stays frozen; the adapters require gradients only with is_trainable=True (as
    PEFT's `PeftModel.from_pretrained`)."""
    if not isinstance(is_trainable, bool):
        raise ValueError(f"is_trainable={is_trainable!r} must be True or False")
    config, tensors = read_adapter(folder)
    folder = os.fspath(folder)
    plan = _plan(model, folder, config, tensors)
    rslora, dropout = bool(config.get("use_rslora", False)), float(config.get("lora_dropout") or 0.0)
    state = Rollback(model, keep=lora_modules(model).values(), attrs=("lora_config", "_lora_frozen"))
    try:
        frozen = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
        for p in model.parameters():
            p.requires_grad_(False)
        for name, a, b, alpha, blocks in plan:
            _install(model, name, a, b, alpha, dropout, rslora, blocks)
        for m in lora_modules(model).values():
            for p in (m.lora_A.weight, m.lora_B.weight):
                p.requires_grad_(is_trainable)
        if not hasattr(model, "lora_config"):
            targets = config.get("target_modules")
            model.lora_config = LoRAConfig(config.get("r", 8), config.get("lora_alpha", 8), dropout,
                                           targets if isinstance(targets, str) else tuple(targets or ()), rslora,
                                           config.get("base_model_name_or_path"))
            model._lora_frozen = frozen
    except BaseException:
        state.restore()
        raise
    return model


__all__ = ["LoRALinear", "LoRAConfig", "AdapterError", "apply_lora", "merge_lora", "save_adapter", "load_adapter",
           "read_adapter",
           "lora_modules", "lora_state_dict", "default_target_modules", "FUSED_PARTS"]
