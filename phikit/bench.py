"""`phikit bench`: prefill and decode speed, time to first token and peak memory, phikit next to its peers.

Random weights of a real model shape are written once as a safetensors checkpoint; every engine loads the very same
file in a fresh process. Engines run alternately, `--repeats` times each (this host's memory bandwidth drifts by
15-25% between minutes), and the report gives medians and the ratio of each engine to phikit measured in the same
run. Each measurement is one greedy generation of `--new-tokens` + 1 tokens after a warm-up: time to first token
(prefill) and the rate of the tokens after it (decode), timed as each token arrives. Engines: phikit (bf16 and, with
--weights, int8 / int4), transformers (if installed), and llama.cpp through llama-cpp-python (if installed; the same
weights exported with phikit's GGUF writer as bf16 / q8_0 / q4_0). llama.cpp is driven from Python
(`Llama.generate`, greedy), which adds a little per-token overhead to its column.

With --paired, phikit and one peer are loaded in one process and take turns, `--repeats` rounds: each round's ratio
is measured seconds apart rather than a minute or more, so the drift that moves a separate-process median by 20%
cancels out. An engine paired with itself gave median ratios within 3% of 1 (decode and prefill, 10 rounds; single
rounds 0.7-1.8): read a paired median within a few percent of 1 as level.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

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

_CHILD_COMMON = r"""
import importlib
class Clock:  # a streamer: generate() hands it the prompt, then each new token as it is chosen
    def __init__(self):
        self.times = []
    def put(self, value):
        self.times.append(time.perf_counter())
    def end(self):
        pass
def load_model(module, folder, weights):  # phikit or its peer, bf16 or (phikit only) quantized while loading
    kw = {} if module == "phikit" else {"attn_implementation": "sdpa"}
    if weights != "bf16":
        import phikit
        kw["quantization_config"] = {"int8": phikit.Int8WeightOnlyConfig(), "int4": phikit.Int4WeightOnlyConfig(group_size=128),
                                     "lossless": phikit.LosslessBf16Config()}[weights]
    return importlib.import_module(module).AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, **kw).eval()
"""

CHILD = r"""
import json, statistics, sys, time, torch
engine, folder, prompt_len, new_tokens, threads, weights = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss would carry over the parent's across exec)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
""" + _CHILD_COMMON + r"""
model = load_model(engine, folder, weights)
ids = torch.randint(100, 30000, (1, prompt_len), generator=torch.Generator().manual_seed(0))
def run(n):
    clock = Clock()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       streamer=clock)
    tokens = clock.times[1:]  # the first put is the prompt
    return tokens[0] - start, (len(tokens) - 1) / (tokens[-1] - tokens[0])
run(2)  # warm-up: kernels, allocator, page cache
ttft, decode = run(new_tokens + 1)
def streamed(module):  # bytes a decode step reads: every weight but the embedding table (one row of it per token)
    embed = module.get_input_embeddings().weight
    head = dict(module.named_parameters()).get("lm_head.weight")
    tied = head is not None and head.data_ptr() == embed.data_ptr()  # a tied head is read whole
    tensors = {t.data_ptr(): t for t in (*module.parameters(), *module.buffers())
               if tied or t.data_ptr() != embed.data_ptr()}
    return sum(t.numel() * t.element_size() for t in tensors.values())
print(json.dumps({"engine": engine, "ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode,
                  "peak_rss_gb": peak() / 1e9, "bytes_per_token": streamed(model)}))
"""


_LLAMA_COMMON = r"""
def llama_engine(path, ids, n_ctx, threads):  # llama.cpp through llama-cpp-python, greedy
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512, verbose=False,
                seed=0)
    def run(n):  # -> (start, the time each of the n tokens arrived)
        llm.reset()
        start, times = time.perf_counter(), []
        for _ in llm.generate(ids, temp=0.0, top_k=1):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        return start, times
    return run
"""

LLAMA_CHILD = r"""
import json, random, sys, time
path, prompt_len, new_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(0)
ids = [random.randint(100, 30000) for _ in range(prompt_len)]
""" + _LLAMA_COMMON + r"""
generate = llama_engine(path, ids, prompt_len + new_tokens + 8, threads)
def run(n):
    start, times = generate(n)
    return times[0] - start, (len(times) - 1) / (times[-1] - times[0])
run(2)
ttft, decode = run(new_tokens + 1)
from gguf import GGUFReader
streamed = sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")  # as phikit's
print(json.dumps({"engine": "llama.cpp", "ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode,
                  "peak_rss_gb": next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                                      if l.startswith("VmHWM:")) / 1e9, "bytes_per_token": streamed}))
"""

PAIRED_CHILD = r"""
import json, random, sys, time
import torch
specs, folder, prompt_len, new_tokens, threads, rounds = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
random.seed(0)
ids = [random.randint(100, 30000) for _ in range(prompt_len)]  # one prompt for every engine
""" + _CHILD_COMMON + r"""
def torch_engine(module, weights):
    model = load_model(module, folder, weights)
    x = torch.tensor([ids])
    def run(n):
        clock = Clock()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        return start, clock.times[1:]  # the first put is the prompt
    return run
""" + _LLAMA_COMMON + r"""
engines = [llama_engine(w, ids, prompt_len + new_tokens + 8, threads) if e == "llama.cpp" else torch_engine(e, w)
           for e, w in specs]
for run in engines:
    run(2)  # warm-up: kernels, allocator, page cache
out = [{"decode_tok_s": [], "prefill_tok_s": []} for _ in specs]
for r in range(rounds):
    for i in (range(len(specs)) if r % 2 == 0 else reversed(range(len(specs)))):  # alternate who goes first
        start, times = engines[i](new_tokens + 1)
        out[i]["prefill_tok_s"].append(prompt_len / (times[0] - start))
        out[i]["decode_tok_s"].append((len(times) - 1) / (times[-1] - times[0]))
        time.sleep(0.2)  # the other engine's threads go idle before this one starts
    print("  round %d: " % (r + 1) + "  ".join("%.2f" % o["decode_tok_s"][-1] for o in out) + " tok/s", file=sys.stderr, flush=True)
print(json.dumps(out))
"""


ROOFLINE_CHILD = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
data = torch.ones(400_000_000 // 4 * 4, dtype=torch.float32)  # 1.6 GB: far beyond every cache
times = []
for _ in range(7):
    start = time.perf_counter()
    data.sum()
    times.append(time.perf_counter() - start)
print(json.dumps({"read_gb_s": data.numel() * 4 / statistics.median(times[1:]) / 1e9}))
"""


# llama.cpp's format for each phikit weight format ("lossless": bf16 values in phikit's lossless 12-bit layout)
GGUF_TYPES = {"bf16": "bf16", "lossless": "bf16", "int8": "q8_0", "int4": "q4_0"}
BF16_FORMATS = ("bf16", "lossless")  # the formats holding exactly the checkpoint's bf16 values


def column_name(weights: str) -> str:
    return "phikit" if weights == "bf16" else f"phikit-{weights}"


def export_for_llama_cpp(folder: str, outtypes: tuple[str, ...]) -> dict[str, str]:
    """GGUF files of the bench checkpoint for llama.cpp (same weights), if llama-cpp-python and gguf are installed
    and a tokenizer for the shape is at hand (the shared fixtures' phi-2 / phi-3-mini vocabularies)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None:
        print("llama-cpp-python or gguf is not installed: no llama.cpp column (pip install llama-cpp-python gguf)",
              file=sys.stderr)
        return {}
    import torch

    from .auto import AutoModelForCausalLM
    from .gguf_export import export_gguf
    from .tokenization import AutoTokenizer

    model = None
    files = {}
    for outtype in outtypes:
        path = f"{folder.rstrip(os.sep)}-{outtype}.gguf"
        if not os.path.isfile(path):
            model = model or AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
            fixtures = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "tokenizers")
            name = "phi-2" if model.config.model_type == "phi" else "phi-3-mini"
            tokenizer_dir = os.environ.get("PHIKIT_BENCH_TOKENIZER", os.path.join(fixtures, name))
            if not os.path.isdir(tokenizer_dir):
                print(f"no tokenizer for the llama.cpp export at {tokenizer_dir} (set PHIKIT_BENCH_TOKENIZER)",
                      file=sys.stderr)
                return {}
            export_gguf(model, AutoTokenizer.from_pretrained(tokenizer_dir), path, dtype=outtype)
        files[outtype] = path
    return files


def measure_llama_cpp(path: str, prompt_len: int, new_tokens: int, threads: int) -> dict[str, Any] | None:
    out = subprocess.run([sys.executable, "-c", LLAMA_CHILD, path, str(prompt_len), str(new_tokens), str(threads)],
                         capture_output=True, text=True)
    if out.returncode:
        print(f"  llama.cpp: failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_checkpoint(shape: str, folder: str) -> str:
    """Random bf16 weights of `shape`, written once to `folder` (reused when present)."""
    import torch

    from .auto import config_from_dict
    from .loading import _skip_init
    from .modeling import PhiForCausalLM, Phi3ForCausalLM, PhimoeForCausalLM

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


def measure(engine: str, folder: str, prompt_len: int, new_tokens: int, threads: int,
            weights: str = "bf16") -> dict[str, Any] | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD, engine, folder, str(prompt_len), str(new_tokens),
                          str(threads), weights], capture_output=True, text=True, env=env)
    if out.returncode:
        print(f"  {engine}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}",
              file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_roofline(threads: int) -> float:
    """GB/s that reading one 1.6 GB tensor sustains with `threads` threads: what a decode step can stream at most."""
    out = subprocess.run([sys.executable, "-c", ROOFLINE_CHILD, str(threads)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["read_gb_s"]


def available_engines() -> list[str]:
    engines = ["phikit"]
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        engines.append("transformers")
    else:
        print("transformers is not installed: no transformers column (pip install transformers)", file=sys.stderr)
    return engines


def run_bench(shape: str, folder: str | None, prompt_len: int, new_tokens: int, threads: int, repeats: int,
              engines: list[str] | None = None, weights: tuple[str, ...] = ("bf16",)) -> dict[str, dict[str, float]]:
    """Medians per column; columns are engines, and phikit once per weight format (`phikit-int8`, ...)."""
    folder = folder or os.path.join(os.path.expanduser("~"), ".cache", "phikit", "bench", shape)
    print(f"writing/reusing random {shape} weights at {folder} ...", file=sys.stderr, flush=True)
    write_checkpoint(shape, folder)
    columns = [(column_name(w), "phikit", w) for w in weights]
    engines = engines or available_engines() + ["llama.cpp"]
    columns += [(e, e, "bf16") for e in engines if e not in ("phikit", "llama.cpp")]
    if "llama.cpp" in engines:
        gguf_types = tuple(GGUF_TYPES[w] for w in weights)
        columns += [(f"llama.cpp-{t}", "llama.cpp", path) for t, path in export_for_llama_cpp(folder, gguf_types).items()]
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c, _, _ in columns}
    roofline: list[float] = []
    for r in range(repeats):
        roofline.append(measure_roofline(threads))  # once per round: it drifts with the engines
        print(f"  run {r + 1}: memory read {roofline[-1]:.1f} GB/s", file=sys.stderr)
        for column, engine, w in columns if r % 2 == 0 else reversed(columns):  # alternate: bandwidth drifts
            if engine == "llama.cpp":
                result = measure_llama_cpp(w, prompt_len, new_tokens, threads)
            else:
                result = measure(engine, folder, prompt_len, new_tokens, threads, w)
            if result:
                samples[column].append(result)
                print(f"  run {r + 1}: {column:12s} decode {result['decode_tok_s']:6.2f} tok/s  prefill "
                      f"{result['prefill_tok_s']:7.1f} tok/s  ttft {result['ttft_s']:.2f}s", file=sys.stderr)
    medians = {e: {k: statistics.median(s[k] for s in runs) for k in runs[0] if k != "engine"}
               for e, runs in samples.items() if runs}
    for m in medians.values():  # fraction of the roofline: bytes a decoded token streams, at the decode rate
        m["roofline_fraction"] = m["decode_tok_s"] * m["bytes_per_token"] / (statistics.median(roofline) * 1e9)
    if medians:
        medians["memory read"] = {"read_gb_s": statistics.median(roofline)}
    return medians


def paired_specs(weights: tuple[str, ...], engines: list[str], gguf: dict[str, str]) -> list[tuple[str, str, list]]:
    """The pairs `--paired` measures: phikit in each weight format against llama.cpp in the same format (where its
    GGUF exists) and phikit bf16 against transformers bf16 -> [(label a, label b, [[engine, weights or path], ...])]."""
    pairs = []
    for w in weights:
        t = GGUF_TYPES[w]
        if "llama.cpp" in engines and t in gguf:
            pairs.append((column_name(w), f"llama.cpp-{t}", [["phikit", w], ["llama.cpp", gguf[t]]]))
    if "transformers" in engines:
        pairs += [(column_name(w), "transformers", [["phikit", w], ["transformers", "bf16"]]) for w in weights
                  if w in BF16_FORMATS]
    return pairs


def _pair_bytes(spec: list, folder: str) -> int:
    """Roughly the bytes one side of a pair holds: the GGUF file, or the checkpoint scaled to its weight format."""
    engine, what = spec
    if engine == "llama.cpp":
        return os.path.getsize(what)
    checkpoint = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
    return int(checkpoint * {"bf16": 1.0, "lossless": 0.77, "int8": 0.55, "int4": 0.3}[what])


def run_paired(shape: str, folder: str | None, prompt_len: int, new_tokens: int, threads: int, rounds: int,
               engines: list[str] | None = None, weights: tuple[str, ...] = ("bf16",)) -> list[dict[str, Any]]:
    """Each pair of engines loaded in one process, taking turns (`rounds` generations each, alternating who goes
    first, 0.2 s apart): the ratio of each round is measured seconds apart, so bandwidth drift between minutes
    cancels out. The report gives the median of those paired ratios and their range."""
    folder = folder or os.path.join(os.path.expanduser("~"), ".cache", "phikit", "bench", shape)
    print(f"writing/reusing random {shape} weights at {folder} ...", file=sys.stderr, flush=True)
    write_checkpoint(shape, folder)
    engines = engines or available_engines() + ["llama.cpp"]
    gguf = export_for_llama_cpp(folder, tuple(GGUF_TYPES[w] for w in weights)) if "llama.cpp" in engines else {}
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results = []
    for a, b, specs in paired_specs(weights, engines, gguf):
        need = sum(_pair_bytes(spec, folder) for spec in specs)
        if need > 0.8 * memory:
            print(f"  {a} / {b}: skipped: the two engines hold about {need / 1e9:.0f} GB together and this machine "
                  f"has {memory / 1e9:.0f} GB; compare them without --paired", file=sys.stderr)
            continue
        print(f"  {a} / {b}: {rounds} rounds, decode tok/s of each", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-c", PAIRED_CHILD, json.dumps(specs), folder, str(prompt_len),
                              str(new_tokens), str(threads), str(rounds)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if out.returncode:
            print(f"  {a} / {b}: failed (exit {out.returncode}, its error above)", file=sys.stderr)
            continue
        sa, sb = json.loads(out.stdout.strip().splitlines()[-1])
        result = {"a": a, "b": b}
        for key in ("decode_tok_s", "prefill_tok_s"):
            ratios = [x / y for x, y in zip(sa[key], sb[key])]
            result[key] = (statistics.median(sa[key]), statistics.median(sb[key]))
            result[key.split("_")[0] + "_ratio"] = (statistics.median(ratios), min(ratios), max(ratios))
        results.append(result)
    return results


def format_paired(shape: str, results: list[dict[str, Any]], prompt_len: int, new_tokens: int, threads: int,
                  rounds: int) -> str:
    lines = [f"{shape}, batch 1, {threads} threads, prompt {prompt_len}, {new_tokens} new tokens; each pair in one "
             f"process, {rounds} alternating rounds; tok/s: each side's median; ratio: the median of the per-round "
             "ratios [lowest, highest]", "",
             "| phikit | peer | decode tok/s (phikit, peer) | decode ratio | prefill tok/s (phikit, peer) | "
             "prefill ratio |", "|---|---|---|---|---|---|"]
    for r in results:
        (da, db), (dm, dlo, dhi) = r["decode_tok_s"], r["decode_ratio"]
        (pa, pb), (pm, plo, pup) = r["prefill_tok_s"], r["prefill_ratio"]
        lines.append(f"| {r['a']} | {r['b']} | {da:.2f}, {db:.2f} | {dm:.2f}x [{dlo:.2f}, {dhi:.2f}] | "
                     f"{pa:.1f}, {pb:.1f} | {pm:.2f}x [{plo:.2f}, {pup:.2f}] |")
    return "\n".join(lines)


def format_report(shape: str, medians: dict[str, dict[str, float]], prompt_len: int, new_tokens: int,
                  threads: int, repeats: int) -> str:
    base = medians.get("phikit")
    roofline = medians.get("memory read", {}).get("read_gb_s")
    lines = [f"{shape}, batch 1, {threads} threads, prompt {prompt_len}, {new_tokens} new tokens, "
             f"median of {repeats}; memory read roofline {roofline or 0:.1f} GB/s (median, measured between rounds)",
             "", "| engine | decode tok/s | weights read per token | of the roofline | prefill tok/s | "
             "time to first token | peak RSS | decode vs phikit |", "|---|---|---|---|---|---|---|---|"]
    for engine, m in medians.items():
        if engine == "memory read":
            continue
        ratio = f"{m['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"
        lines.append(f"| {engine} | {m['decode_tok_s']:.2f} | {m['bytes_per_token'] / 1e9:.2f} GB | "
                     f"{m['roofline_fraction']:.0%} | {m['prefill_tok_s']:.1f} | {m['ttft_s']:.2f} s | "
                     f"{m['peak_rss_gb']:.2f} GB | {ratio} |")
    same = [(column_name(w), f"llama.cpp-{t}") for w, t in GGUF_TYPES.items()]
    pairs = [f"{a} / {b} {medians[a]['decode_tok_s'] / medians[b]['decode_tok_s']:.2f}x" for a, b in same
             if a in medians and b in medians]
    if "transformers" in medians:
        pairs += [f"{column_name(w)} / transformers (bf16) {medians[column_name(w)]['decode_tok_s'] / medians['transformers']['decode_tok_s']:.2f}x"
                  for w in BF16_FORMATS if column_name(w) in medians]
    if pairs:
        lines += ["", "decode ratios, same weight format: " + "; ".join(pairs)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="phikit bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="phi-1.5", choices=sorted(SHAPES))
    p.add_argument("--folder", default=None, help="where the random checkpoint is written (default ~/.cache/phikit)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", default=None, help="comma-separated subset of phikit,transformers,llama.cpp")
    p.add_argument("--weights", default="bf16", help="phikit weight formats, comma-separated: bf16,lossless,int8,int4 "
                                                     "(lossless: the bf16 values in 12 bits, phikit.LosslessBf16Config)")
    p.add_argument("--paired", action="store_true",
                   help="load phikit and each peer in one process and let them take turns, --repeats rounds (10 or "
                        "more): ratios measured seconds apart; no peak RSS (see run_paired)")
    args = p.parse_args(argv)
    engines = args.engines.split(",") if args.engines else None
    start = time.perf_counter()
    weights = tuple(args.weights.split(","))
    bad = [w for w in weights if w not in GGUF_TYPES]
    if bad:
        raise SystemExit(f"phikit bench: error: --weights {bad[0]!r} is not one of {', '.join(GGUF_TYPES)}")
    if args.paired:
        results = run_paired(args.shape, args.folder, args.prompt_len, args.new_tokens, args.threads, args.repeats,
                             engines, weights)
        print(format_paired(args.shape, results, args.prompt_len, args.new_tokens, args.threads, args.repeats))
    else:
        medians = run_bench(args.shape, args.folder, args.prompt_len, args.new_tokens, args.threads, args.repeats,
                            engines, weights)
        print(format_report(args.shape, medians, args.prompt_len, args.new_tokens, args.threads, args.repeats))
    print(f"\n(measured in {time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
