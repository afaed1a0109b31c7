"""`phikit export`: write a checkpoint in another format (GGUF for llama.cpp and ollama).

    phikit export --model ./Phi-3-mini-4k-instruct --format gguf --outtype q8_0 -o phi3-mini-q8_0.gguf

Wired into phikit/cli.py with `add_export_parser(sub)` and `COMMANDS["export"] = run_export`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

FORMATS = ("gguf",)
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # = gguf_export.OUTTYPES; repeated so `--help` never imports gguf


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `export` subcommand to the `phikit` parser's subparsers; returns it."""
    p = subparsers.add_parser(
        "export", help="convert a checkpoint to GGUF (llama.cpp, ollama)",
        description="Write a phi / phi3 checkpoint (float or phikit-quantized) and its tokenizer as one GGUF file. "
                    "Needs the gguf package: pip install 'phikit[gguf]'.")
    p.add_argument("--model", "-m", required=True, help="checkpoint folder (config.json, *.safetensors, tokenizer) or "
                                                        "hub id")
    p.add_argument("--format", default="gguf", choices=FORMATS, help="output format (default gguf)")
    p.add_argument("--outtype", default="f16", choices=OUTTYPES,
                   help="type of the weight matrices: f32, f16 (default), bf16, q8_0 or q4_0; norms and biases stay "
                        "f32")
    p.add_argument("--output", "-o", required=True, help="file to write, e.g. model-q8_0.gguf")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--no-tokenizer", action="store_true",
                   help="write the weights only (llama.cpp then needs a vocabulary from elsewhere)")
    return p


def _is_phikit_quantized(folder: str) -> bool:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        qc = json.load(f).get("quantization_config")
    return isinstance(qc, dict) and qc.get("quant_method") == "phikit"


def run_export(args: argparse.Namespace) -> int:
    """Load `args.model`, export it, print what was written to stderr; 0 on success (errors raise)."""
    from .hf.auto import AutoModelForCausalLM
    from .config import config_from_folder
    from .gguf_export import export_gguf
    from .hub import resolve_folder
    from .tokenizer.tokenization import AutoTokenizer

    if args.format != "gguf":
        raise ValueError(f"--format {args.format!r} is not supported; phikit exports {FORMATS}")
    start = time.perf_counter()
    print(f"phikit: loading {args.model} ...", file=sys.stderr, flush=True)
    folder = resolve_folder(args.model, args.revision, False)
    if _is_phikit_quantized(folder):
        from .hf.modeling import Phi3ForCausalLM, PhiForCausalLM, PhimoeForCausalLM
        from .weights.loading_quantized import load_quantized_model

        classes = {"phi": PhiForCausalLM, "phi3": Phi3ForCausalLM, "phimoe": PhimoeForCausalLM}
        model = load_quantized_model(classes[config_from_folder(folder).model_type], folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    tokenizer = None if args.no_tokenizer else AutoTokenizer.from_pretrained(folder)
    path = export_gguf(model, tokenizer, args.output, dtype=args.outtype)
    size = os.path.getsize(path) / 1e6
    print(f"phikit: wrote {path} ({args.outtype}, {size:.1f} MB) in {time.perf_counter() - start:.1f}s",
          file=sys.stderr, flush=True)
    return 0


__all__ = ["add_export_parser", "run_export"]
