"""The handful of flags that tell the three Phi families apart. The model reads these, never a model name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    parallel_residual: bool  # phi: attention and MLP read the same normed input and are summed
    fused_qkv: bool  # phi3: one qkv_proj; otherwise q_proj / k_proj / v_proj
    attention_bias: bool
    out_proj: str  # checkpoint name of the attention output projection: "dense" | "o_proj"
    qk_layernorm: bool  # phi option: LayerNorm over each head of q and k before rotation
    mlp: str  # "fc" (fc1 -> act -> fc2) | "gated" (gate_up_proj, down_proj) | "moe" (sparsemixer experts)
    mlp_name: str  # checkpoint name of the MLP module: "mlp" | "block_sparse_moe"
    final_norm: str  # checkpoint name of the last norm: "final_layernorm" | "norm"
    lm_head_bias: bool
    embed_dropout: float
    resid_dropout: float
