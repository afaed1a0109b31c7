"""Configs for the three Phi families: one validated object per family, read from and written to `config.json`.

Each family is a table of documented defaults (`FIELDS`) on top of a shared base. Construction normalises the
forms real checkpoints use (`rope_scaling` / `rope_parameters`, rope types `su` / `yarn` / `longrope`, top-level
`rope_theta` and `partial_rotary_factor`, PhiMoE mscales) into one `rope_parameters` dict, then validates every
field; a bad value raises `ConfigError` naming the field, the value and the fix.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterator

import torch

from . import config_checks as check
from .arch import Architecture
from .config_files import MSFT_TYPES, normalize_model_type, read_config_dict
from .errors import ConfigError
from .ops.activations import ACTIVATIONS  # the registries the model runs: one name list each
from .ops.attention import ATTENTION_FUNCTIONS as ATTN_IMPLEMENTATIONS
from .rope_config import normalize_rope_parameters, validate_rope_parameters

LONGROPE_POLICIES = ("per_sequence", "static")


# Fields every family shares, with their defaults (the seeds' PretrainedConfig conventions).
COMMON_FIELDS: dict[str, Any] = {
    "num_key_value_heads": None,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "sliding_window": None,
    "bos_token_id": 1,
    "pad_token_id": None,
    "num_labels": 2,
    "id2label": None,
    "label2id": None,
    "problem_type": None,
    "classifier_dropout": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "is_encoder_decoder": False,
    "chunk_size_feed_forward": 0,
    "architectures": None,
    "dtype": None,
    "return_dict": True,
    "attn_implementation": None,
    # phikit's own: how LongRoPE picks short/long factors (see docs/ARCHITECTURE.md, "LongRoPE policy").
    "longrope_policy": "per_sequence",
    "longrope_static_length": None,
}

POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "original_max_position_embeddings",
                 "num_local_experts", "num_experts_per_tok", "num_labels")
PROBABILITIES = ("attention_dropout", "resid_pdrop", "embd_pdrop", "router_jitter_noise", "input_jitter_noise")
POSITIVE_FLOATS = {"layer_norm_eps": "1e-5", "rms_norm_eps": "1e-5", "initializer_range": "0.02"}
FINITE_FLOATS = {"router_aux_loss_coef": "0.001"}
BOOLS = ("use_cache", "tie_word_embeddings", "qk_layernorm", "attention_bias", "lm_head_bias",
         "output_attentions", "output_hidden_states", "return_dict", "output_router_logits")
# The floating dtypes a checkpoint's `dtype` / `torch_dtype` may name.
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}


class PhiKitConfig:
    """Base of the family configs. Attributes are the `config.json` keys; unknown keys are kept and written back.

    Build with keyword arguments (`Phi3Config(hidden_size=64, ...)`) or from a dict (`Phi3Config.from_dict(d)`);
    `to_dict()` gives back a `config.json` dict that transformers and phikit both read.
    """

    model_type: str = ""
    FIELDS: dict[str, Any] = {}
    default_partial_rotary_factor: float = 1.0
    default_rope_theta: float = 10000.0
    uses_partial_rotary: bool = True
    longrope_mscales: bool = False  # LongRoPE scales cos/sin by short_mscale / long_mscale (PhiMoE)

    def __init__(self, **kwargs: Any) -> None:
        kwargs = copy.deepcopy(kwargs)
        kwargs.pop("model_type", None)
        kwargs.pop("transformers_version", None)
        head_dim = kwargs.pop("head_dim", None)
        rotary_dim = kwargs.pop("rotary_dim", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs.get("dtype") is None and torch_dtype is not None:
            kwargs["dtype"] = _normalize_dtype(torch_dtype, "torch_dtype")
        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        if "_attn_implementation" in kwargs:
            kwargs.setdefault("attn_implementation", kwargs.pop("_attn_implementation"))
        for name, default in {**COMMON_FIELDS, **self.FIELDS}.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        # Legacy rope keys are folded into `rope_parameters`; everything else unknown is kept verbatim.
        legacy = {k: kwargs.pop(k) for k in ("rope_scaling", "rope_theta", "partial_rotary_factor") if k in kwargs}
        self._check_keys(kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or not isinstance(
                self.hidden_size, int) or not isinstance(
                self.num_attention_heads, int) or head_dim * self.num_attention_heads != self.hidden_size):
            raise ConfigError(f"head_dim={head_dim!r} must equal hidden_size / num_attention_heads "
                              f"({self.hidden_size} / {self.num_attention_heads}); drop head_dim from the config")
        self.rope_parameters = normalize_rope_parameters(self, legacy)
        self.dtype = _normalize_dtype(self.dtype)
        self._fix_label_maps()
        self.validate()
        if rotary_dim is not None and rotary_dim != self.rotary_dim:
            raise ConfigError(f"rotary_dim={rotary_dim!r} disagrees with head_dim x partial_rotary_factor = "
                              f"{self.head_dim} x {self.partial_rotary_factor} = {self.rotary_dim}; drop rotary_dim "
                              f"or set partial_rotary_factor to rotary_dim / head_dim")

    @classmethod
    def _check_keys(cls, kwargs: dict[str, Any]) -> None:
        """Unknown keys become attributes, but never ones that would shadow a method or property of the config."""
        for name in kwargs:
            if not isinstance(name, str) or not name or name.startswith("__") or hasattr(cls, name):
                raise ConfigError(f"config key {name!r} would replace {cls.__name__}'s attribute of that name (a "
                                  f"method, a derived value or a class setting); remove it from config.json")

    # ----- construction helpers -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "PhiKitConfig":
        """Build from a `config.json` dict; `overrides` win over the dict."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"config must be a dict (the parsed config.json), got {type(config_dict).__name__}")
        model_type = config_dict.get("model_type")
        if model_type is not None and cls.model_type and model_type != cls.model_type:
            raise ConfigError(
                f"model_type={model_type!r} cannot be read by {cls.__name__} (expects {cls.model_type!r}); "
                f"use phikit.AutoConfig or the {model_type!r} config class")
        merged = {**config_dict, **overrides}
        if "num_labels" in overrides and "id2label" not in overrides:  # a new label count: LABEL_0.. as transformers
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        rope = merged.get("rope_parameters")
        if isinstance(rope, dict):  # an override of a rope value wins over the dict's own copy of it
            merged["rope_parameters"] = {**rope, **{k: overrides[k] for k in ("rope_theta", "partial_rotary_factor")
                                                    if k in overrides}}
        return cls(**merged)

    def with_overrides(self, **overrides: Any) -> "PhiKitConfig":
        """A new, validated config: this one with `overrides` applied the way `from_dict` applies them (rope keys
        such as `rope_theta` fold into `rope_parameters`, unknown keys become attributes); this one is unchanged."""
        if not overrides:
            return copy.deepcopy(self)
        return type(self).from_dict(self.to_dict(), **overrides)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PhiKitConfig":
        return cls.from_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "PhiKitConfig":
        """Read `config.json` from a local folder (or the file itself), through the one reader
        (`config_files.read_config_dict`)."""
        return cls.from_dict(read_config_dict(path), **overrides)

    def __iter__(self) -> Iterator[str]:
        """The attribute names, as transformers' configs iterate (so `"text_config" in config` works, as PEFT asks)."""
        return iter([k for k in self.__dict__ if not k.startswith("_")])

    def to_dict(self) -> dict[str, Any]:
        """The `config.json` dict: every field, `rope_parameters` in normalised form, plus `model_type` and (as
        transformers' `to_dict`) `_name_or_path`; `to_json_string` / `save_pretrained` leave the path out."""
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}
        out["_name_or_path"] = self._name_or_path
        out["model_type"] = self.model_type
        for key in ("longrope_policy", "longrope_static_length", "attn_implementation"):  # phikit-only, if default
            if out.get(key) == COMMON_FIELDS[key]:
                out.pop(key)
        if out.get("dtype") is not None:
            out["dtype"] = str(out["dtype"]).replace("torch.", "")
        return out

    def to_json_string(self) -> str:
        out = self.to_dict()
        out.pop("_name_or_path")
        return json.dumps(out, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhiKitConfig) and self.to_dict() == other.to_dict()

    # ----- derived values -------------------------------------------------------------------------------------
    def architecture(self) -> Architecture:
        """The family's structural flags (see phikit/arch.py)."""
        raise NotImplementedError

    @property
    def name_or_path(self) -> str:
        """The path or hub id the config (or its model) was loaded from, "" if built in code (as transformers)."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters["rope_theta"]

    @property
    def partial_rotary_factor(self) -> float:
        return self.rope_parameters["partial_rotary_factor"]

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        """The legacy view: None for plain RoPE, else the rope dict."""
        return None if self.rope_parameters["rope_type"] == "default" else self.rope_parameters

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head are rotated."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def _attn_implementation(self) -> str:
        return self.attn_implementation or "sdpa"

    @_attn_implementation.setter
    def _attn_implementation(self, value: str) -> None:
        self.attn_implementation = value

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    # ----- validation -----------------------------------------------------------------------------------------
    def _fix_label_maps(self) -> None:
        check.positive_int("num_labels", self.num_labels, limit=1_000_000)
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        else:
            self.id2label = _label_map("id2label", self.id2label, _label_id, _label_name)
            self.num_labels = len(self.id2label)
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = _label_map("label2id", self.label2id, _label_name, _label_id)

    def validate(self) -> None:
        """Raise `ConfigError` for the first field phikit cannot run, naming the field, its value and the fix."""
        for name in POSITIVE_INTS:
            if hasattr(self, name):
                check.positive_int(name, getattr(self, name))
        for name in PROBABILITIES:
            check.probability(name, getattr(self, name, 0.0))
        for name, example in POSITIVE_FLOATS.items():
            if hasattr(self, name):
                check.positive_number(name, getattr(self, name), example)
        for name, example in FINITE_FLOATS.items():
            if hasattr(self, name):
                check.finite_number(name, getattr(self, name), example)
        for name in BOOLS:
            value = getattr(self, name, False)
            if not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} must be true or false")
        if self.is_encoder_decoder is not False:
            raise ConfigError(f"is_encoder_decoder={self.is_encoder_decoder!r}: Phi models are decoder-only; set it "
                              f"to false or remove it")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                f"pick num_attention_heads among the divisors of hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}; each kv head must serve a whole group of query heads")
        check.one_of("hidden_act", self.hidden_act, ACTIVATIONS)
        if self.sliding_window is not None:
            check.positive_int("sliding_window", self.sliding_window)
        if self.attn_implementation is not None:
            check.one_of("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check.one_of("longrope_policy", self.longrope_policy, LONGROPE_POLICIES)
        if self.longrope_static_length is not None:
            check.positive_int("longrope_static_length", self.longrope_static_length)
        for name in ("bos_token_id", "pad_token_id"):
            check.token_id(name, getattr(self, name))
        eos = self.eos_token_id
        if isinstance(eos, list) and eos:
            for i, e in enumerate(eos):
                check.token_id(f"eos_token_id[{i}]", e)
        elif not isinstance(eos, list):
            check.token_id("eos_token_id", eos)
        else:
            raise ConfigError("eos_token_id=[] names no token; give an id, a list of ids, or null")
        _normalize_dtype(self.dtype)  # a value set after construction: a dtype or its name, checked
        if self.problem_type is not None and not (isinstance(self.problem_type, str) and self.problem_type in (
                "regression", "single_label_classification", "multi_label_classification")):
            raise ConfigError(f"problem_type={self.problem_type!r} must be regression, single_label_classification "
                              f"or multi_label_classification")
        validate_rope_parameters(self)


def _normalize_dtype(value: Any, name: str = "dtype") -> torch.dtype | None:
    """`dtype` / `torch_dtype` as transformers holds it: a torch.dtype (config.json spells it "bfloat16")."""
    if value is None or isinstance(value, torch.dtype) and value in DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[value.removeprefix("torch.")]
    raise ConfigError(f"{name}={value!r} is not a floating dtype phikit loads; use one of {list(DTYPE_NAMES)} "
                      f"(or a torch.dtype), or null")


def _label_id(name: str, key: Any) -> int:
    """A label id: an int, or the decimal string JSON object keys make of one."""
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise ConfigError(f"{name} has the id {key!r}; label ids must be integers >= 0 (e.g. {{\"0\": \"NEGATIVE\"}})")
    return key


def _label_name(name: str, label: Any) -> str:
    if not isinstance(label, str):
        raise ConfigError(f"{name} has the label {label!r}; labels must be strings")
    return label


def _label_map(name: str, value: Any, key, value_check) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r:.80} must be an object mapping ids to labels (or labels to ids), or null")
    return {key(name, k): value_check(name, v) for k, v in value.items()}


class PhiConfig(PhiKitConfig):
    """phi-1 / phi-1.5 / phi-2: parallel attention+MLP sharing one LayerNorm, partial rotary, gelu_new, biases."""

    model_type = "phi"
    default_partial_rotary_factor = 0.5
    FIELDS = {
        "vocab_size": 51200,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "qk_layernorm": False,
        "eos_token_id": 2,
    }

    def architecture(self) -> Architecture:
        return Architecture(norm="layernorm", norm_eps=self.layer_norm_eps, parallel_residual=True, fused_qkv=False,
                            attention_bias=True, out_proj="dense", qk_layernorm=self.qk_layernorm, mlp="fc",
                            mlp_name="mlp", final_norm="final_layernorm", lm_head_bias=True,
                            embed_dropout=self.embd_pdrop, resid_dropout=self.resid_pdrop)


class Phi3Config(PhiKitConfig):
    """Phi-3 / 3.5 / Phi-4(-mini): fused qkv and gate_up, RMSNorm, SiLU, GQA, LongRoPE, sliding window."""

    model_type = "phi3"
    FIELDS = {
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
    }

    def architecture(self) -> Architecture:
        return Architecture(norm="rmsnorm", norm_eps=self.rms_norm_eps, parallel_residual=False, fused_qkv=True,
                            attention_bias=False, out_proj="o_proj", qk_layernorm=False, mlp="gated",
                            mlp_name="mlp", final_norm="norm", lm_head_bias=False, embed_dropout=self.embd_pdrop,
                            resid_dropout=self.resid_pdrop)


class PhimoeConfig(PhiKitConfig):
    """Phi-3.5-MoE: sparsemixer top-2 routing over experts, LayerNorm, biased attention and lm_head."""

    model_type = "phimoe"
    default_rope_theta = 1e6
    uses_partial_rotary = False
    longrope_mscales = True
    FIELDS = {
        "vocab_size": 32064,
        "hidden_size": 4096,
        "intermediate_size": 6400,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 4096 * 32,
        "rms_norm_eps": 1e-5,
        "eos_token_id": 2,
        "num_experts_per_tok": 2,
        "num_local_experts": 16,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.01,
        "input_jitter_noise": 0.0,
        "attention_bias": False,
        "lm_head_bias": False,
    }

    def architecture(self) -> Architecture:
        # PhiMoE normalises with LayerNorm although its config calls the epsilon `rms_norm_eps`.
        return Architecture(norm="layernorm", norm_eps=self.rms_norm_eps, parallel_residual=False, fused_qkv=False,
                            attention_bias=self.attention_bias, out_proj="o_proj", qk_layernorm=False, mlp="moe",
                            mlp_name="block_sparse_moe", final_norm="norm", lm_head_bias=self.lm_head_bias,
                            embed_dropout=0.0, resid_dropout=0.0)

    def validate(self) -> None:
        super().validate()
        if self.num_experts_per_tok != 2:
            raise ConfigError(
                f"num_experts_per_tok={self.num_experts_per_tok}: PhiMoE's sparsemixer router always picks exactly "
                f"2 experts; set num_experts_per_tok=2")
        if self.num_local_experts < 2:
            raise ConfigError(f"num_local_experts={self.num_local_experts} must be at least 2 for top-2 routing")


CONFIG_CLASSES: dict[str, type[PhiKitConfig]] = {c.model_type: c for c in (PhiConfig, Phi3Config, PhimoeConfig)}


def config_from_dict(data: dict[str, Any]) -> PhiKitConfig:
    """The right config class for a config.json dict; unknown model types raise naming the supported ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object (dict), got a {type(data).__name__}; pass the parsed "
                          f"config.json")
    data = normalize_model_type(data)
    model_type = data.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(f"model_type={model_type!r} is not a Phi family phikit runs; supported: "
                          f"{sorted(CONFIG_CLASSES) + list(MSFT_TYPES)}")
    return CONFIG_CLASSES[model_type].from_dict(data)


def config_from_folder(folder: str | os.PathLike) -> PhiKitConfig:
    """The config a checkpoint folder's `config.json` describes, in its family's class."""
    return config_from_dict(read_config_dict(folder))
