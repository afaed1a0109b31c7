"""Reading the many spellings of a Phi rope config into one dict, and checking it.

Real checkpoints say the same thing several ways: `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x);
`type` or `rope_type`; `su` (early Phi-3-128k), `yarn` and `longrope` for the same LongRoPE math; `rope_theta` and
`partial_rotary_factor` at the top level or inside the dict. All of them become:

    {"rope_type": "default" | "longrope", "rope_theta": float, "partial_rotary_factor": float,
     # longrope only:
     "short_factor": [...], "long_factor": [...], "original_max_position_embeddings": int,
     "attention_factor": float | None, "factor": float | None,
     # PhiMoE longrope only:
     "short_mscale": float, "long_mscale": float}
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from . import config_checks as check
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import PhiKitConfig

# `su` and `yarn` are the names early Phi-3 checkpoints used for what is now `longrope` (transformers maps them too).
ROPE_TYPE_ALIASES = {"su": "longrope", "yarn": "longrope", "longrope": "longrope", "default": "default"}


def _error(message: str) -> Exception:
    return ConfigError(message)


def normalize_rope_parameters(config: "PhiKitConfig", legacy: dict[str, Any]) -> dict[str, Any]:
    """Merge `rope_parameters`, legacy `rope_scaling` and top-level rope keys into the normalised dict."""
    params = config.rope_parameters
    scaling = legacy.get("rope_scaling")
    for name, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, dict):
            raise _error(f"{name}={value!r} must be a dict (e.g. {{'rope_type': 'longrope', 'short_factor': [...], "
                         f"'long_factor': [...]}}) or null")
    out: dict[str, Any] = {**copy.deepcopy(params or {}), **copy.deepcopy(scaling or {})}
    raw_type = out.pop("type", None)
    raw_type = out.get("rope_type", raw_type) or "default"
    if not isinstance(raw_type, str) or raw_type not in ROPE_TYPE_ALIASES:
        raise _error(f"rope_parameters.rope_type={raw_type!r} is not supported; Phi models use one of "
                     f"{sorted(ROPE_TYPE_ALIASES)} (su and yarn are read as longrope)")
    out["rope_type"] = ROPE_TYPE_ALIASES[raw_type]
    for key in ("rope_theta", "partial_rotary_factor"):  # said twice: the two must agree (never pick one silently)
        if key in out and legacy.get(key) is not None and out[key] is not legacy[key] and out[key] != legacy[key]:
            raise _error(f"{key}={legacy[key]!r} disagrees with rope_parameters.{key}={out[key]!r}; give it once")
    out.setdefault("rope_theta", legacy.get("rope_theta", config.default_rope_theta))
    if out["rope_theta"] is None:
        out["rope_theta"] = config.default_rope_theta
    out.setdefault("partial_rotary_factor", legacy.get("partial_rotary_factor", config.default_partial_rotary_factor))
    if out["rope_type"] == "longrope":
        # Phi-3 keeps the pretraining length at the top level and it wins; PhiMoE keeps it inside the dict.
        top_level = getattr(config, "original_max_position_embeddings", None)
        original = top_level if top_level is not None else out.get("original_max_position_embeddings")
        if original is None:
            original = config.max_position_embeddings
        out["original_max_position_embeddings"] = original
        config.original_max_position_embeddings = original
        out.setdefault("attention_factor", None)
        out.setdefault("factor", None)
    return out


def validate_rope_parameters(config: "PhiKitConfig") -> None:
    """Check the normalised rope dict against the model shape; raise naming the field, the value and the fix."""
    rp = config.rope_parameters
    check.positive_number("rope_theta", rp["rope_theta"], "10000.0 (most Phi checkpoints)")
    partial = rp["partial_rotary_factor"]
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0.0 < partial <= 1.0:
        raise _error(f"partial_rotary_factor={partial!r} must be in (0, 1] (0.5 on phi-1.5, 0.4 on phi-2, "
                     f"0.75 on Phi-4-mini)")
    if not config.uses_partial_rotary and partial != 1.0:
        raise _error(f"partial_rotary_factor={partial!r}: {config.model_type} rotates whole heads; remove it")
    rotary_dim = config.rotary_dim
    if rotary_dim < 2 or rotary_dim % 2:
        raise _error(f"partial_rotary_factor={partial!r} gives {rotary_dim} rotary dims of head_dim="
                     f"{config.head_dim}; the rotary dims must be a positive even number")
    if rp["rope_type"] != "longrope":
        return
    for name in ("short_factor", "long_factor"):
        factor = rp.get(name)
        if factor is None:
            raise _error(f"rope_parameters.{name} is missing; a longrope config needs short_factor and long_factor, "
                         f"each a list of rotary_dim/2 = {rotary_dim // 2} numbers")
        check.number_list(f"rope_parameters.{name}", factor, rotary_dim // 2,
                          f"rotary_dim/2 (head_dim {config.head_dim} x partial_rotary_factor {partial} / 2)")
    original = rp["original_max_position_embeddings"]
    if isinstance(original, bool) or not isinstance(original, int) or not 0 < original <= check.MAX_INT:
        raise _error(f"original_max_position_embeddings={original!r} must be a positive integer (4096 on Phi-3)")
    for name in ("attention_factor", "factor"):
        if rp.get(name) is not None:
            check.positive_number(f"rope_parameters.{name}", rp[name], "1.19, or null to derive it")
    if config.longrope_mscales:  # PhiMoE scales cos/sin per regime
        for name in ("short_mscale", "long_mscale"):
            value = rp.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _error(f"rope_parameters.{name}={value!r}: a PhiMoE longrope config needs short_mscale and "
                             f"long_mscale numbers (1.243 on Phi-3.5-MoE)")
            check.positive_number(f"rope_parameters.{name}", value, "1.243 (Phi-3.5-MoE)")
