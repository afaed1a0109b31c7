"""Tiny random models of every shape tensor parallelism must get right, saved as real checkpoints."""

from __future__ import annotations

import os

import torch

import phikit

# name -> (model class, config keywords)
MODELS = {
    # phi-2-like: parallel attention + MLP block, biases everywhere, partial rotary, qk layernorm, odd vocabulary
    "phi2": (phikit.PhiForCausalLM, dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, partial_rotary_factor=0.5, qk_layernorm=True)),
    # Phi-3-like: fused qkv_proj and gate_up_proj, RMSNorm, SiLU, no biases, sliding window
    "phi3": (phikit.Phi3ForCausalLM, dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, sliding_window=24,
                                           pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # Phi-4-mini-like: GQA 6 / 2, partial rotary, tied head
    "phi4mini": (phikit.Phi3ForCausalLM, dict(vocab_size=96, hidden_size=96, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                               partial_rotary_factor=0.75, tie_word_embeddings=True,
                                               pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # kv groups that do not divide the ranks: 6 query / 3 kv heads at tp=2 (rank 0 needs kv 0, 0, 1)
    "uneven_kv": (phikit.Phi3ForCausalLM, dict(vocab_size=96, hidden_size=96, intermediate_size=100,
                                                num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                                                pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # PhiMoE: sparsemixer top-2 over 4 experts, LayerNorm, biased attention
    "phimoe": (phikit.PhimoeForCausalLM, dict(vocab_size=96, hidden_size=64, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               num_local_experts=4, num_experts_per_tok=2,
                                               pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}

PROMPT = [[5, 17, 33, 8, 41, 60, 12, 3, 77, 25, 9]]  # [1, T]
NEW_TOKENS = 16


def build(name: str, seed: int = 0):
    cls, kwargs = MODELS[name]
    torch.manual_seed(seed)
    config = cls.config_class(**kwargs)
    model = cls(config).eval()
    with torch.no_grad():  # wider weights than the default init, so greedy tokens are not all one id
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def save_all(folder: str) -> dict[str, str]:
    """Every model saved under folder/<name>; returns {name: path}."""
    paths = {}
    for name in MODELS:
        path = os.path.join(folder, name)
        build(name).save_pretrained(path)
        paths[name] = path
    return paths
