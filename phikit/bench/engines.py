"""The torch side of `phikit bench`: the model shapes, the random checkpoint built from one, and what a child process
needs to load and time phikit or transformers on it (a streamer that clocks each token, bytes read per token, peak
RSS)."""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Callable

import torch

import phikit

from ..config import config_from_dict
from ..weights.loading import _skip_init
from ..hf.modeling import Phi3ForCausalLM, PhiForCausalLM, PhimoeForCausalLM

SHAPES: dict[str, dict[str, Any]] = {
    "phi-1.5": dict(model_type="phi", vocab_size=51200, hidden_size=2048, intermediate_size=8192,
                    num_hidden_layers=24, num_attention_heads=32, partial_rotary_factor=0.5,
                    max_position_embeddings=2048),
    "phi-2": dict(model_type="phi", vocab_size=51200, hidden_size=2560, intermediate_size=10240,
                  num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=0.4,
                  max_position_embeddings=2048),
    "phi-3-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=4096,
                       pad_token_id=32000),
    "phi-3.5-moe": dict(model_type="phimoe", vocab_size=32064, hidden_size=4096, intermediate_size=6400,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, num_local_experts=16,
                        max_position_embeddings=4096),
}

# a child's run(n): one greedy generation of n tokens -> (its start, the time each of the n tokens arrived)
Run = Callable[[int], tuple[float, list[float]]]


def write_checkpoint(shape: str, folder: str) -> str:
    """Random bf16 weights of `shape`, written once to `folder` (reused when present)."""
    if os.path.isfile(os.path.join(folder, "model.safetensors")) or os.path.isfile(
            os.path.join(folder, "model.safetensors.index.json")):
        return folder
    config = config_from_dict(dict(SHAPES[shape]))
    cls = {"phi": PhiForCausalLM, "phi3": Phi3ForCausalLM, "phimoe": PhimoeForCausalLM}[config.model_type]
    with torch.device("meta"), _skip_init():
        model = cls(config)
    need = model.num_parameters() * 2
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.6 * have:
        raise ValueError(f"{shape} has {need / 1e9:.0f} GB of bf16 weights; this machine has {have / 1e9:.0f} GB of "
                         f"memory and each engine loads its own copy; pick a smaller --shape")
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            state[name] = torch.ones(p.shape, dtype=torch.bfloat16)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(p.shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16)
    model.load_state_dict(state, assign=True)
    model.save_pretrained(folder, max_shard_size="2GB")
    return folder


class Clock:
    """A streamer: generate() hands it the prompt, then each new token as it is chosen; it keeps the times."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def load_model(module: str, folder: str, weights: str) -> Any:
    """phikit or its peer (`module` "phikit" / "transformers"), bf16 or (phikit only) quantized while loading."""
    kw: dict[str, Any] = {} if module == "phikit" else {"attn_implementation": "sdpa"}
    if weights != "bf16":
        kw["quantization_config"] = {"int8": phikit.Int8WeightOnlyConfig(),
                                     "int4": phikit.Int4WeightOnlyConfig(group_size=128),
                                     "lossless": phikit.LosslessBf16Config()}[weights]
    # imported by name: transformers is optional, and a phikit child never loads it
    auto = importlib.import_module(module).AutoModelForCausalLM
    return auto.from_pretrained(folder, dtype=torch.bfloat16, **kw).eval()


def torch_engine(model: Any, ids: torch.Tensor) -> Run:
    """run(n) for a loaded phikit or transformers model and a prompt `ids` [1, T]."""
    def run(n: int) -> tuple[float, list[float]]:
        clock = Clock()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, streamer=clock)
        return start, clock.times[1:]  # the first put is the prompt
    return run


def streamed_bytes(module: torch.nn.Module) -> int:
    """Bytes a decode step reads: every weight but the embedding table (one row of it per token)."""
    embed = module.get_input_embeddings().weight
    head = dict(module.named_parameters()).get("lm_head.weight")
    tied = head is not None and head.data_ptr() == embed.data_ptr()  # a tied head is read whole
    tensors = {t.data_ptr(): t for t in (*module.parameters(), *module.buffers())
               if tied or t.data_ptr() != embed.data_ptr()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def peak_rss() -> int:
    """VmHWM in bytes: this process's own high-water mark (ru_maxrss would carry over the parent's across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
