"""Peak resident memory while loading a checkpoint, against the bytes of its weights as run, phikit vs transformers.

    python benchmarks/load_memory.py [--gb 1.0] [--dir /tmp/phikit-load-bench] [--weights bf16,lossless,int8,int4]

Writes a random Phi-3-shaped bf16 checkpoint of about --gb gigabytes (once), then loads it in fresh processes
(phikit in each --weights format, quantizing while loading; then transformers in bf16 if installed) and prints each
one's peak RSS (VmHWM) above its post-import baseline, as a ratio of the bytes of the weights as the loaded model
holds them (the quantized size when quantized), right after loading and after one 8-token forward (transformers maps
weights lazily, so its pages arrive with the first forward). The target (issue 6) is <= 1.1x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))
engine, folder, weights = sys.argv[1], sys.argv[2], sys.argv[3]
kw = {}
if engine == "phikit":
    import phikit
    from phikit import AutoModelForCausalLM
    if weights != "bf16":
        kw["quantization_config"] = {"int8": phikit.Int8WeightOnlyConfig(), "lossless": phikit.LosslessBf16Config(),
                                     "int4": phikit.Int4WeightOnlyConfig(group_size=128)}[weights]
else:
    from transformers import AutoModelForCausalLM
base = status("VmRSS")
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, **kw)
seconds = time.perf_counter() - t
peak = status("VmHWM")
with torch.no_grad():
    model(torch.ones(1, 8, dtype=torch.long))
peak_run = status("VmHWM")
tensors = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
print(json.dumps({"engine": engine, "base": base, "peak": peak, "peak_run": peak_run, "seconds": seconds,
                  "bytes": sum(tensors.values())}))
"""


def write_checkpoint(folder: str, gigabytes: float) -> int:
    import torch
    from safetensors.torch import save_file

    hidden, inter, vocab = 2048, 5632, 32064
    per_layer = hidden * 3 * hidden + hidden * hidden + hidden * 2 * inter + inter * hidden + 2 * hidden
    layers = max(1, int((gigabytes * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": vocab, "dtype": "bfloat16", "pad_token_id": 32000}
    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, "model.safetensors")
    if not os.path.exists(done):
        gen = torch.Generator().manual_seed(0)

        def rand(*shape):
            return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

        state = {"model.embed_tokens.weight": rand(vocab, hidden), "lm_head.weight": rand(vocab, hidden),
                 "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
        for i in range(layers):
            p = f"model.layers.{i}."
            state[p + "self_attn.qkv_proj.weight"] = rand(3 * hidden, hidden)
            state[p + "self_attn.o_proj.weight"] = rand(hidden, hidden)
            state[p + "mlp.gate_up_proj.weight"] = rand(2 * inter, hidden)
            state[p + "mlp.down_proj.weight"] = rand(hidden, inter)
            state[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
            state[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        save_file(state, done + ".tmp", metadata={"format": "pt"})
        os.replace(done + ".tmp", done)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    from safetensors import safe_open

    with safe_open(done, "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys()) * 2


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GB (default 1.0)")
    parser.add_argument("--dir", default="/tmp/phikit-load-bench", help="where to write the checkpoint")
    parser.add_argument("--weights", default="bf16", help="phikit formats, comma-separated: bf16,lossless,int8,int4")
    args = parser.parse_args()
    weight_bytes = write_checkpoint(args.dir, args.gb)
    print(f"checkpoint: {args.dir} ({weight_bytes / 1e9:.2f} GB of bf16 weights)")
    runs = [("phikit", w) for w in args.weights.split(",")]
    try:
        import transformers  # noqa: F401
        runs.append(("transformers", "bf16"))
    except ImportError:
        print("transformers not installed: no peer to compare with")
    for engine, weights in runs:
        out = subprocess.run([sys.executable, "-c", CHILD, engine, args.dir, weights], capture_output=True,
                             text=True)
        if out.returncode:
            print(f"{engine}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        load, run, held = r["peak"] - r["base"], r["peak_run"] - r["base"], r["bytes"]
        print(f"{engine + ' ' + weights:18s} weights as run {held / 1e9:.2f} GB; peak RSS above baseline: after load "
              f"{load / 1e9:.2f} GB = {load / held:.2f}x, after a first forward {run / 1e9:.2f} GB = "
              f"{run / held:.2f}x; load {r['seconds']:.1f}s")


if __name__ == "__main__":
    main()
