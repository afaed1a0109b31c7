"""Configs: the forms real checkpoints use are normalised; malformed ones raise an error naming the field."""

from __future__ import annotations

import json

import pytest
import torch

import phikit
from phikit import ConfigError, Phi3Config, PhiConfig, PhimoeConfig

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
MOE_SMALL = dict(SMALL, num_key_value_heads=2)


def _longrope(n: int, **extra) -> dict:
    return {"type": "longrope", "short_factor": [1.0] * n, "long_factor": [2.0] * n, **extra}


def test_seed_defaults() -> None:
    phi, phi3, moe = PhiConfig(), Phi3Config(), PhimoeConfig()
    assert (phi.vocab_size, phi.hidden_size, phi.hidden_act, phi.partial_rotary_factor) == (51200, 2048, "gelu_new", 0.5)
    assert (phi.max_position_embeddings, phi.layer_norm_eps, phi.qk_layernorm, phi.eos_token_id) == (2048, 1e-5, False, 2)
    assert (phi3.vocab_size, phi3.hidden_size, phi3.intermediate_size, phi3.num_hidden_layers) == (32064, 3072, 8192, 32)
    assert (phi3.original_max_position_embeddings, phi3.pad_token_id, phi3.rope_theta, phi3.sliding_window) == \
        (4096, 32000, 10000.0, None)
    assert phi3.num_key_value_heads == phi3.num_attention_heads == 32
    assert (moe.num_local_experts, moe.num_experts_per_tok, moe.num_key_value_heads, moe.rope_theta) == \
        (16, 2, 8, 1e6)
    assert (moe.router_aux_loss_coef, moe.router_jitter_noise, moe.max_position_embeddings) == (0.001, 0.01, 131072)


@pytest.mark.parametrize("rope_type", ["su", "yarn", "longrope"])
def test_legacy_rope_scaling_types_read_as_longrope(rope_type: str) -> None:
    config = Phi3Config(**SMALL, max_position_embeddings=131072, rope_theta=500.0,
                        rope_scaling={"type": rope_type, "short_factor": [1.0] * 4, "long_factor": [3.0] * 4})
    rp = config.rope_parameters
    assert rp["rope_type"] == "longrope" and rp["rope_theta"] == 500.0
    assert rp["original_max_position_embeddings"] == 4096  # Phi-3 keeps it at the top level


def test_rope_parameters_form_and_top_level_partial_factor() -> None:
    config = Phi3Config(**SMALL, partial_rotary_factor=0.75,
                        rope_parameters={"rope_type": "longrope", "rope_theta": 250000.0, "short_factor": [1.0] * 3,
                                         "long_factor": [2.0] * 3})
    assert config.rotary_dim == 6 and config.rope_theta == 250000.0 and config.partial_rotary_factor == 0.75


def test_phimoe_reads_original_length_and_mscales_from_the_rope_dict() -> None:
    config = PhimoeConfig(**MOE_SMALL, rope_scaling=_longrope(4, short_mscale=1.1, long_mscale=1.24,
                                                           original_max_position_embeddings=4096))
    assert config.original_max_position_embeddings == 4096
    assert config.rope_parameters["long_mscale"] == 1.24


def test_round_trip_through_config_json(tmp_path) -> None:
    config = Phi3Config(**SMALL, sliding_window=2047, tie_word_embeddings=True, max_position_embeddings=131072,
                        rope_scaling=_longrope(4), architectures=["Phi3ForCausalLM"], torch_dtype="bfloat16")
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "phi3" and data["rope_parameters"]["rope_type"] == "longrope"
    again = Phi3Config.from_pretrained(tmp_path)
    assert again == config
    assert again.architectures == ["Phi3ForCausalLM"] and again.dtype == torch.bfloat16  # a torch.dtype, as transformers


def test_reference_reads_what_phikit_writes_from_a_su_config() -> None:
    """transformers 5.x cannot read a legacy `su` config itself; the dict phikit writes back it can."""
    transformers = pytest.importorskip("transformers")
    legacy = dict(**SMALL, max_position_embeddings=256, original_max_position_embeddings=32,
                  rope_scaling={"type": "su", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4})
    with pytest.raises(KeyError):
        transformers.Phi3Config(**legacy)
    data = Phi3Config(**legacy).to_dict()
    assert transformers.Phi3Config(**data).rope_parameters["rope_type"] == "longrope"


MALFORMED = [
    # (config class, kwargs, the field the message must name)
    (Phi3Config, dict(SMALL, hidden_size=30), "hidden_size=30"),
    (Phi3Config, dict(SMALL, num_key_value_heads=3), "num_key_value_heads=3"),
    (Phi3Config, dict(SMALL, rope_scaling=_longrope(4) | {"short_factor": [1.0] * 3}), "short_factor"),
    (Phi3Config, dict(SMALL, rope_scaling=_longrope(4) | {"long_factor": [1.0] * 5}), "long_factor"),
    (Phi3Config, dict(SMALL, rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_type='dynamic'"),
    (Phi3Config, dict(SMALL, rope_scaling={"type": "longrope", "short_factor": [1.0] * 4}), "long_factor"),
    (Phi3Config, dict(SMALL, rope_scaling=_longrope(4) | {"long_factor": [1.0, "x", 1.0, 1.0]}), "long_factor"),
    (Phi3Config, dict(SMALL, rope_scaling="longrope"), "rope_scaling"),
    (Phi3Config, dict(SMALL, partial_rotary_factor=1.5), "partial_rotary_factor=1.5"),
    (PhiConfig, dict(SMALL, partial_rotary_factor=0.1), "partial_rotary_factor=0.1"),
    (Phi3Config, dict(SMALL, rope_theta=-1.0), "rope_theta=-1.0"),
    (Phi3Config, dict(SMALL, num_hidden_layers=0), "num_hidden_layers=0"),
    (Phi3Config, dict(SMALL, vocab_size="32064"), "vocab_size='32064'"),
    (Phi3Config, dict(SMALL, hidden_act="gelu_newer"), "hidden_act='gelu_newer'"),
    (Phi3Config, dict(SMALL, sliding_window=0), "sliding_window=0"),
    (Phi3Config, dict(SMALL, attention_dropout=1.5), "attention_dropout=1.5"),
    (Phi3Config, dict(SMALL, rms_norm_eps=0), "rms_norm_eps=0"),
    (Phi3Config, dict(SMALL, tie_word_embeddings="yes"), "tie_word_embeddings='yes'"),
    (Phi3Config, dict(SMALL, eos_token_id=[32000, "<|end|>"]), "eos_token_id"),
    (Phi3Config, dict(SMALL, head_dim=16), "head_dim=16"),
    (Phi3Config, dict(SMALL, attn_implementation="flash"), "attn_implementation='flash'"),
    (PhimoeConfig, dict(MOE_SMALL, num_experts_per_tok=1), "num_experts_per_tok=1"),
    (PhimoeConfig, dict(MOE_SMALL, rope_scaling=_longrope(4, short_mscale=1.0)), "long_mscale"),
    (PhimoeConfig, dict(MOE_SMALL, partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
    (Phi3Config, dict(SMALL, longrope_policy="always_long"), "longrope_policy='always_long'"),
]


@pytest.mark.parametrize("cls,kwargs,field", MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_config_names_the_field(cls, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert field in str(err.value)


def test_from_dict_rejects_another_model_type() -> None:
    with pytest.raises(ConfigError, match="model_type='phi3'.*PhiConfig"):
        PhiConfig.from_dict({"model_type": "phi3", **SMALL})


def test_model_rejects_config_of_another_family() -> None:
    with pytest.raises(TypeError, match="Phi3Config"):
        phikit.Phi3ForCausalLM(PhiConfig(**SMALL))


def test_flash_attention_without_package_or_gpu_is_a_clear_error() -> None:
    config = Phi3Config(**SMALL, attn_implementation="flash_attention_2")
    with pytest.raises((ImportError, ValueError), match="attn_implementation='sdpa'"):
        phikit.Phi3ForCausalLM(config)
