"""PEFT LoRA adapter folders: `adapter_config.json` and `adapter_model.safetensors`, read and checked before a model
is touched (`phikit.lora.load_adapter` plans and applies them).

Every option of PEFT's `LoraConfig` is classified: honoured (r, lora_alpha, lora_dropout, use_rslora, rank_pattern,
alpha_pattern, target_modules), without effect on a loaded adapter's numbers (bookkeeping, initialisation of a *new*
adapter, which layers were targeted: the tensors say where adapters are), or refused unless off (DoRA, biases,
modules_to_save, ...: phikit would compute other numbers). An option phikit does not know is accepted only at an
"off" value (None, False, empty), so a newer PEFT's new switches cannot change numbers silently.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import torch

from .checkpoint import CheckpointReader

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter folder is corrupt, uses an option phikit does not run, or does not fit the model; the message
    names the file, field or tensor."""


# Options that change nothing about a loaded adapter's numbers.
NO_EFFECT = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
             "inference_mode", "exclude_modules", "layers_to_transform", "layers_pattern", "megatron_core",
             "qalora_group_size", "runtime_config", "ensure_weight_tying", "loftq_config", "eva_config",
             "corda_config", "lora_ga_config"}
HONOURED = {"r", "lora_alpha", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules",
            "init_lora_weights"}
# option -> (its "off" values, why phikit refuses it otherwise)
REFUSED: dict[str, tuple[tuple, str]] = {
    "use_dora": ((False, None), "DoRA rescales the weight's column norms"),
    "fan_in_fan_out": ((False, None), "fan_in_fan_out is for Conv1D layers (GPT-2), which Phi models do not have"),
    "lora_bias": ((False, None), "it trains a bias on lora_B"),
    "bias": (("none", None), "it trains the base layers' biases"),
    "modules_to_save": ((None, []), "it replaces whole modules (e.g. the head) with trained copies"),
    "target_parameters": ((None, []), "it adapts raw parameters (stacked experts), not linear layers"),
    "trainable_token_indices": ((None, [], {}), "it trains embedding rows"),
    "use_qalora": ((False, None), "QA-LoRA pools the input for quantized bases"),
    "alora_invocation_tokens": ((None, []), "activated LoRA switches on at invocation tokens"),
    "layer_replication": ((None, []), "it duplicates decoder layers"),
    "megatron_config": ((None, {}), "it targets Megatron parallel layers"),
    "velora_config": ((None, {}), "VeLoRA changes the adapter's computation"),
    "monteclora_config": ((None, {}), "MonteCLoRA samples the adapter"),
    "arrow_config": ((None, {}), "Arrow routes between several adapters"),
    "kasa_config": ((None, {}), "KaSA changes the adapter's computation"),
    "use_bdlora": ((None, False), "BD-LoRA changes the adapter's structure"),
}
INIT_METHODS = (True, False, "gaussian")  # others (pissa, olora, corda, loftq, eva) also rewrite the base weights


def _off(value: Any, offs: tuple) -> bool:
    return any(value is o or (type(value) is type(o) and value == o) for o in offs)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _regex(path: str, field: str, pattern: Any) -> None:
    if not isinstance(pattern, str):
        raise AdapterError(f"{path}: {field} key {pattern!r} must be a string (a module name or regex)")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise AdapterError(f"{path}: {field} {pattern!r:.100} is not a valid regular expression ({e})") from None


def check_adapter_config(path: str, config: Any) -> dict:
    """`config` (the parsed adapter_config.json at `path`) checked field by field; returns it."""
    if not isinstance(config, dict):
        raise AdapterError(f"{path} holds a JSON {type(config).__name__}, not an object; re-save the adapter")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} has peft_type={config.get('peft_type')!r}; phikit reads LORA adapters only")
    for key, value in config.items():
        if key in REFUSED:
            offs, why = REFUSED[key]
            if not _off(value, offs):
                raise AdapterError(f"{path} sets {key}={value!r:.100}, which phikit does not support ({why}); "
                                   f"phikit loads plain LoRA and rsLoRA on linear layers. Train or convert the "
                                   f"adapter without it")
        elif key not in NO_EFFECT and key not in HONOURED and value not in (None, False, "", [], {}):
            raise AdapterError(f"{path} sets {key}={value!r:.100}, an option phikit does not know; it cannot tell "
                               f"whether it changes the adapter's numbers. Remove it if it does not")
    r = config.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise AdapterError(f"{path}: r={r!r} must be a positive integer (the LoRA rank, e.g. 8)")
    if not _number(config.get("lora_alpha", 8)):
        raise AdapterError(f"{path}: lora_alpha={config.get('lora_alpha')!r} must be a finite number (e.g. 16)")
    dropout = config.get("lora_dropout") or 0.0
    if not _number(dropout) or not 0.0 <= dropout < 1.0:
        raise AdapterError(f"{path}: lora_dropout={dropout!r} must be a probability in [0, 1)")
    if not isinstance(config.get("use_rslora", False), bool):
        raise AdapterError(f"{path}: use_rslora={config.get('use_rslora')!r} must be true or false")
    init = config.get("init_lora_weights", True)
    if not any(init is m or init == m and type(init) is type(m) for m in INIT_METHODS):
        raise AdapterError(f"{path}: init_lora_weights={init!r} adapters are relative to base weights that their "
                           f"initialisation changed; convert it with PEFT (save_pretrained(..., "
                           f"path_initial_model_for_weight_conversion=...)) first")
    for field, valid, what in (("rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                                "a positive integer rank"), ("alpha_pattern", _number, "a finite number")):
        patterns = config.get(field)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise AdapterError(f"{path}: {field}={patterns!r:.100} must be an object of module pattern -> value")
        for key, value in patterns.items():
            _regex(path, field, key)
            if not valid(value):
                raise AdapterError(f"{path}: {field}[{key!r}]={value!r} must be {what}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _regex(path, "target_modules", targets)
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterError(f"{path}: target_modules={targets!r:.100} must be a list of module names or a regex")
    return config


def pattern_value(patterns: dict | None, module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the first key whose regex matches the end of the module name (at a "." boundary)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a checked dict, tensors of adapter_model.safetensors) of a PEFT LoRA folder."""
    if not isinstance(folder, (str, os.PathLike)):
        raise AdapterError(f"an adapter folder is a path (str or os.PathLike), got {type(folder).__name__}")
    folder = os.fspath(folder)
    config_path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise OSError(f"no {ADAPTER_CONFIG_NAME} in {folder}; an adapter folder is what PEFT's save_pretrained or "
                      f"phikit's save_adapter writes")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise AdapterError(f"{config_path} could not be read ({type(e).__name__}: {str(e)[:200]}); re-save the "
                           f"adapter") from None
    check_adapter_config(config_path, config)
    weights = os.path.join(folder, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        hint = (" (only adapter_model.bin, a pickle phikit does not load: re-save it with PEFT's "
                "save_pretrained(safe_serialization=True))" if os.path.isfile(os.path.join(folder, "adapter_model.bin"))
                else "")
        raise OSError(f"no {ADAPTER_WEIGHTS_NAME} in {folder}{hint}")
    with CheckpointReader([weights]) as reader:  # CheckpointError (a ValueError) names the file and tensor
        tensors = {name: reader.get(name).clone() for name in reader.refs}
    for name, t in tensors.items():
        if not t.is_floating_point() or t.dim() != 2:
            raise AdapterError(f"{weights}: tensor {name!r} is {t.dtype} of shape {tuple(t.shape)}; LoRA matrices "
                               f"are 2-D floating-point tensors")
        if not torch.isfinite(t).all():
            raise AdapterError(f"{weights}: tensor {name!r} holds NaN or infinite values; the adapter is corrupt "
                               f"(re-train or re-save it)")
    return config, tensors
