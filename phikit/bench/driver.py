"""The parent process of `phikit bench`: which columns and pairs to measure, the GGUF files for llama.cpp, each
measurement in a child process (`python -m phikit.bench.<child> ARGS`), and the medians and ratios of their
results."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from typing import Any

import torch

from ..cpu import features
from ..hf.auto import AutoModelForCausalLM
from ..gguf_export import export_gguf
from ..tokenizer.tokenization import AutoTokenizer
from .engines import write_checkpoint

# llama.cpp's format for each phikit weight format ("lossless": bf16 values in phikit's lossless 12-bit layout)
GGUF_TYPES = {"bf16": "bf16", "lossless": "bf16", "int8": "q8_0", "int4": "q4_0"}
BF16_FORMATS = ("bf16", "lossless")  # the formats holding exactly the checkpoint's bf16 values


def column_name(weights: str) -> str:
    return "phikit" if weights == "bf16" else f"phikit-{weights}"


def child_command(child: str, *args: Any) -> list[str]:
    """The command line of a child process: `python -m phikit.bench.<child> ARGS`."""
    return [sys.executable, "-m", f"{__package__}.{child}", *map(str, args)]


def default_folder(shape: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "phikit", "bench", shape)


def export_for_llama_cpp(folder: str, outtypes: tuple[str, ...]) -> dict[str, str]:
    """GGUF files of the bench checkpoint for llama.cpp (same weights), if llama-cpp-python and gguf are installed
    and a tokenizer for the shape is at hand (the shared fixtures' phi-2 / phi-3-mini vocabularies)."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None:
        print("llama-cpp-python or gguf is not installed: no llama.cpp column (pip install llama-cpp-python gguf)",
              file=sys.stderr)
        return {}
    model = None
    files = {}
    for outtype in outtypes:
        path = f"{folder.rstrip(os.sep)}-{outtype}.gguf"
        if not os.path.isfile(path):
            model = model or AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
            fixtures = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures", "tokenizers")
            name = "phi-2" if model.config.model_type == "phi" else "phi-3-mini"
            tokenizer_dir = os.environ.get("PHIKIT_BENCH_TOKENIZER", os.path.join(fixtures, name))
            if not os.path.isdir(tokenizer_dir):
                print(f"no tokenizer for the llama.cpp export at {tokenizer_dir} (set PHIKIT_BENCH_TOKENIZER)",
                      file=sys.stderr)
                return {}
            export_gguf(model, AutoTokenizer.from_pretrained(tokenizer_dir), path, dtype=outtype)
        files[outtype] = path
    return files


def llama_crash_hint(returncode: int, gguf_type: str) -> str:
    """A sentence on a llama.cpp child killed by a signal, where the likely cause is known: llama.cpp's AMX kernels
    (which a GGML_NATIVE build takes on a CPU with AMX) segfaulted on quantized files on an AMX Xeon host with
    llama-cpp-python 0.3.36 (ggml-org/llama.cpp#20824 reports the same crash); its bf16 files do not use them."""
    amx = {"amx_int8", "amx_tile"} & features.cpu_info().flags
    if returncode >= 0 or not amx or gguf_type == "bf16":
        return ""
    return (f" llama.cpp died from signal {-returncode} on a {gguf_type} file on a CPU with AMX: its AMX kernels crashed "
            "so on an AMX Xeon with llama-cpp-python 0.3.36, as ggml-org/llama.cpp#20824 reports. Build llama-cpp-python without them, CMAKE_ARGS="
            "\"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
            "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON "
            "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF\" pip install "
            "--no-cache-dir --no-binary llama-cpp-python --target DIR llama-cpp-python, and pass --llama-cpp DIR.")


def measure_llama_cpp(path: str, prompt_len: int, new_tokens: int, threads: int) -> dict[str, Any] | None:
    out = subprocess.run(child_command("llama", path, prompt_len, new_tokens, threads), capture_output=True, text=True)
    if out.returncode:
        gguf_type = next((t for t in GGUF_TYPES.values() if path.endswith(f"-{t}.gguf")), "")
        print(f"  llama.cpp: failed (exit {out.returncode}): {out.stderr.strip()[-300:]}"
              f"{llama_crash_hint(out.returncode, gguf_type)}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(engine: str, folder: str, prompt_len: int, new_tokens: int, threads: int,
            weights: str = "bf16") -> dict[str, Any] | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(child_command("child", engine, folder, prompt_len, new_tokens, threads, weights),
                         capture_output=True, text=True, env=env)
    if out.returncode:
        print(f"  {engine}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}",
              file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_roofline(threads: int) -> float:
    """GB/s that reading one 1.6 GB tensor sustains with `threads` threads: what a decode step can stream at most."""
    out = subprocess.run(child_command("roofline", threads), capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["read_gb_s"]


def available_engines() -> list[str]:
    engines = ["phikit"]
    if importlib.util.find_spec("transformers") is not None:
        engines.append("transformers")
    else:
        print("transformers is not installed: no transformers column (pip install transformers)", file=sys.stderr)
    return engines


def run_bench(shape: str, folder: str | None, prompt_len: int, new_tokens: int, threads: int, repeats: int,
              engines: list[str] | None = None, weights: tuple[str, ...] = ("bf16",)) -> dict[str, dict[str, float]]:
    """Medians per column; columns are engines, and phikit once per weight format (`phikit-int8`, ...)."""
    folder = folder or default_folder(shape)
    print(f"writing/reusing random {shape} weights at {folder} ...", file=sys.stderr, flush=True)
    write_checkpoint(shape, folder)
    columns = [(column_name(w), "phikit", w) for w in weights]
    engines = engines or available_engines() + ["llama.cpp"]
    columns += [(e, e, "bf16") for e in engines if e not in ("phikit", "llama.cpp")]
    if "llama.cpp" in engines:
        gguf_types = tuple(GGUF_TYPES[w] for w in weights)
        columns += [(f"llama.cpp-{t}", "llama.cpp", path)
                    for t, path in export_for_llama_cpp(folder, gguf_types).items()]
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
    GGUF exists) and phikit bf16 against transformers bf16 -> [(label a, label b, [[engine, weights or path], ...])].
    With phikit the only engine, each other format against phikit's own bf16 (e.g. "is int4 prefill as fast as bf16
    prefill?")."""
    if engines == ["phikit"]:
        return [(column_name(w), column_name("bf16"), [["phikit", w], ["phikit", "bf16"]]) for w in weights
                if w != "bf16"]
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
    folder = folder or default_folder(shape)
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
        out = subprocess.run(child_command("paired", json.dumps(specs), folder, prompt_len, new_tokens, threads,
                                           rounds), stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if out.returncode:
            hint = llama_crash_hint(out.returncode, b.split("-", 1)[1]) if b.startswith("llama.cpp-") else ""
            print(f"  {a} / {b}: failed (exit {out.returncode}, its error above).{hint}", file=sys.stderr)
            continue
        sa, sb = json.loads(out.stdout.strip().splitlines()[-1])
        result = {"a": a, "b": b}
        for key in ("decode_tok_s", "prefill_tok_s"):
            ratios = [x / y for x, y in zip(sa[key], sb[key])]
            result[key] = (statistics.median(sa[key]), statistics.median(sb[key]))
            result[key.split("_")[0] + "_ratio"] = (statistics.median(ratios), min(ratios), max(ratios))
        results.append(result)
    return results
