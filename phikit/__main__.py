"""`python -m phikit`: a self-check that runs on any machine, offline, with no weights.

It builds a tiny random model of each family (phi-2, Phi-3-128k with LongRoPE, Phi-3.5-MoE), prefills a prompt,
decodes across the LongRoPE boundary with the KV cache, and prints how far the cached logits are from an uncached
forward at every step. It first prints what `phikit doctor` prints: the CPU level and the kernel of each operation.
"""

from __future__ import annotations

import time

import torch

from . import doctor
from . import Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM, PhimoeConfig, PhimoeForCausalLM, __version__

SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8)


def _longrope(rotary_dim: int, **extra) -> dict:
    half = rotary_dim // 2
    return {"type": "longrope", "short_factor": [1.0 + i / half for i in range(half)],
            "long_factor": [2.0 + 4 * i / half for i in range(half)], **extra}


def _models() -> dict[str, torch.nn.Module]:
    return {
        "phi-2 (partial rotary 0.4)": PhiForCausalLM(PhiConfig(**SHAPE, partial_rotary_factor=0.4)),
        "Phi-3-128k (LongRoPE)": Phi3ForCausalLM(Phi3Config(
            **SHAPE, num_key_value_heads=4, max_position_embeddings=1024, original_max_position_embeddings=64,
            rope_scaling=_longrope(16), pad_token_id=0)),
        "Phi-3.5-MoE (sparsemixer)": PhimoeForCausalLM(PhimoeConfig(
            **SHAPE, num_key_value_heads=4, num_local_experts=4, attention_bias=True, lm_head_bias=True,
            max_position_embeddings=1024, rope_scaling=_longrope(16, short_mscale=1.1, long_mscale=1.2,
                                                                   original_max_position_embeddings=64))),
    }


def main() -> int:
    torch.manual_seed(0)
    print(f"phikit {__version__} self-check on torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(doctor.report())
    prompt, steps = 48, 32  # 48 + 32 = 80 tokens: crosses the 64-token LongRoPE boundary while decoding
    worst_overall = 0.0
    for name, model in _models().items():
        model.eval()
        ids = torch.randint(1, 512, (1, prompt + steps))
        with torch.no_grad():
            start = time.perf_counter()
            out = model(ids[:, :prompt], use_cache=True)
            worst = 0.0
            for t in range(prompt, prompt + steps):
                out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
                full = model(ids[:, :t + 1]).logits[:, -1]
                worst = max(worst, float((out.logits[:, -1] - full).abs().max()))
            elapsed = time.perf_counter() - start
        worst_overall = max(worst_overall, worst)
        print(f"  {name:28s} {model.num_parameters() / 1e6:5.2f}M params  cached vs uncached max |dlogit| "
              f"{worst:.1e} over {steps} steps ({elapsed:.2f}s)")
    ok = worst_overall < 1e-4
    print("OK: cached decoding equals uncached forwards" if ok else "FAIL: cached and uncached logits differ")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
