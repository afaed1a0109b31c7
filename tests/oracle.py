"""The reference side of the parity tests: tiny random configs of every real Phi variant, and the same weights
loaded into transformers' implementation (test-only dependency) and into phikit's."""

from __future__ import annotations

import random

import pytest
import torch

import phikit

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")

PHIKIT_ONLY_KEYS = ("longrope_policy", "longrope_static_length", "attn_implementation")


def _factors(n: int, seed: int, low: float, high: float) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 4) for _ in range(n)]


def _longrope(rotary_dim: int, original: int, seed: int, **extra) -> dict:
    return {"type": "longrope", "short_factor": _factors(rotary_dim // 2, seed, 1.0, 1.5),
            "long_factor": _factors(rotary_dim // 2, seed + 1, 1.5, 8.0), "original_max_position_embeddings": original,
            **extra}


# Each variant switches on the numeric features the real checkpoint family uses.
VARIANTS: dict[str, tuple[type, dict]] = {
    "phi-1.5": (phikit.PhiConfig, dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, partial_rotary_factor=0.5, pad_token_id=0)),
    "phi-2": (phikit.PhiConfig, dict(vocab_size=96, hidden_size=80, intermediate_size=160, num_hidden_layers=3,
                                     num_attention_heads=4, partial_rotary_factor=0.4, pad_token_id=0)),
    "phi-qk-layernorm": (phikit.PhiConfig, dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=2, num_attention_heads=4, qk_layernorm=True,
                                                pad_token_id=0)),
    "phi-3-mini-4k": (phikit.Phi3Config, dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, sliding_window=7,
                                              pad_token_id=0, eos_token_id=1, bos_token_id=2)),
    "phi-3-128k": (phikit.Phi3Config, dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                                           original_max_position_embeddings=24, rope_scaling=_longrope(16, 24, 1),
                                           pad_token_id=0, eos_token_id=1, bos_token_id=2)),
    "phi-4-mini": (phikit.Phi3Config, dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                           partial_rotary_factor=0.75, tie_word_embeddings=True,
                                           max_position_embeddings=256, original_max_position_embeddings=24,
                                           rope_scaling=_longrope(12, 24, 3), pad_token_id=0, eos_token_id=1,
                                           bos_token_id=2)),
    "phi-3.5-moe": (phikit.PhimoeConfig, dict(vocab_size=96, hidden_size=64, intermediate_size=96,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              num_local_experts=4, attention_bias=True, lm_head_bias=True,
                                              max_position_embeddings=256, rope_theta=10000.0,
                                              rope_scaling=_longrope(16, 24, 5, short_mscale=1.1, long_mscale=1.3),
                                              pad_token_id=0, eos_token_id=1, bos_token_id=2)),
}

LONGROPE_VARIANTS = ("phi-3-128k", "phi-4-mini", "phi-3.5-moe")


def make_config(name: str, **overrides) -> phikit.PhiKitConfig:
    cls, kwargs = VARIANTS[name]
    return cls(**{**kwargs, **overrides})


def hf_config(config: phikit.PhiKitConfig, attn: str = "eager"):
    data = {k: v for k, v in config.to_dict().items() if k not in PHIKIT_ONLY_KEYS}
    hf = transformers.AutoConfig.for_model(**data)
    hf._attn_implementation = attn
    return hf


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that every path matters (router spread, attention not uniform); norms near one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("gate.weight"):
                p.copy_(noise)
            else:
                p.copy_(0.15 * noise)


def to_hf_state_dict(config: phikit.PhiKitConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """phikit (= checkpoint) names -> transformers 5.x module names (PhiMoE experts are stacked there)."""
    if config.model_type != "phimoe":
        return dict(state)
    out = {}
    root = "model." if any(k.startswith("model.") for k in state) else ""  # a head class, or the bare model
    for i in range(config.num_hidden_layers):
        prefix = f"{root}layers.{i}.block_sparse_moe."
        experts = range(config.num_local_experts)
        target = f"{root}layers.{i}.mlp."
        out[target + "router.weight"] = state[prefix + "gate.weight"]
        out[target + "experts.gate_up_proj"] = torch.stack(
            [torch.cat((state[f"{prefix}experts.{e}.w1.weight"], state[f"{prefix}experts.{e}.w3.weight"]))
             for e in experts])
        out[target + "experts.down_proj"] = torch.stack([state[f"{prefix}experts.{e}.w2.weight"] for e in experts])
    for k, v in state.items():
        if ".block_sparse_moe." not in k:
            out[k] = v
    return out


HF_CLASSES = {
    ("phi", "causal"): "PhiForCausalLM", ("phi", "base"): "PhiModel", ("phi", "seq"): "PhiForSequenceClassification",
    ("phi", "tok"): "PhiForTokenClassification",
    ("phi3", "causal"): "Phi3ForCausalLM", ("phi3", "base"): "Phi3Model",
    ("phi3", "seq"): "Phi3ForSequenceClassification", ("phi3", "tok"): "Phi3ForTokenClassification",
    ("phimoe", "causal"): "PhimoeForCausalLM", ("phimoe", "base"): "PhimoeModel",
    ("phimoe", "seq"): "PhimoeForSequenceClassification",
}


def pair(name: str, head: str = "causal", attn: str = "eager", seed: int = 0, **overrides):
    """(phikit model, transformers model) with identical random weights, both in eval mode, fp32."""
    config = make_config(name, attn_implementation=attn, **overrides)
    cls_name = HF_CLASSES[(config.model_type, head)]
    ours = getattr(phikit, cls_name)(config)
    randomize(ours, seed)
    ref = getattr(transformers, cls_name)(hf_config(config, attn))
    missing, unexpected = ref.load_state_dict(to_hf_state_dict(config, ours.state_dict()), strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" and config.tie_word_embeddings for k in missing), missing
    return ours.eval(), ref.eval()


def left_padded_batch(vocab: int, lengths: list[int], seed: int = 0, pad_id: int = 0):
    """input_ids [B, T] left-padded with pad_id, attention_mask [B, T] and position_ids [B, T] counted from each
    row's first real token (what generate() passes), plus the unpadded rows."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    rows = [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, rows


def hub_free(monkeypatch, tmp_path) -> None:
    """No network and an empty hub cache, as on a fresh offline machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
