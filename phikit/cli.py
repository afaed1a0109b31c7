"""The `phikit` command: `run` (the seeds' `transformers run`), `generate` and an interactive `chat`.

    phikit generate "def fibonacci(n):"            # the bundled tiny Python model, offline
    echo "def fibonacci(n):" | phikit run --task text-generation --model ./phi-2
    phikit generate --model ./phi-2 "def fibonacci(n):" --max-new-tokens 64
    phikit chat --model ./Phi-3-mini-4k-instruct

    echo "I loved it" | phikit run --task text-classification --model ./classifier   # label + score per line

Bad input ends with one line on stderr, `phikit: error: ...`, and exit status 1 (2 for bad flags). Any other
exception is a bug in phikit: one line says so (exit status 3); PHIKIT_DEBUG=1 or --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

from .bundled import default_model_path

# The user's errors: phikit raises ValueError subclasses (ConfigError, CheckpointError, ...) for bad input, OSError
# for files and the hub, ImportError for a missing optional package, NotImplementedError for unsupported features.
USER_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)
TASKS = ("text-generation", "text-classification", "token-classification")
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
WEIGHT_FORMATS = ("auto", "plain", "lossless", "int8", "int4")


def quantization_for(weights: str) -> Any:
    """The `quantization_config` of a `--weights` choice."""
    from .formats.configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from .formats.lossless import LosslessBf16Config

    return {"auto": LosslessBf16Config(required=False), "plain": None, "lossless": LosslessBf16Config(),
            "int8": Int8WeightOnlyConfig(), "int4": Int4WeightOnlyConfig(group_size=128)}[weights]


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="folder of a Hugging Face checkpoint (config.json, *.safetensors, tokenizer files) or hub id "
                        "(default: the small Python model bundled with phikit)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: as saved)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, or auto")
    p.add_argument("--weights", default="auto", choices=sorted(WEIGHT_FORMATS),
                   help="how weights are held: lossless (bf16 values in 12 bits: the fastest exact decode on CPUs with "
                        "AVX512-BF16), plain (as loaded), int8 / int4 (weight-only quantization); default auto: "
                        "lossless where it applies, else plain")
    p.add_argument("--attn-implementation", default=None, choices=["eager", "sdpa", "flash_attention_2"])
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--typical-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--no-repeat-ngram-size", type=int, default=None)
    g.add_argument("--num-beams", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the output ends with TEXT (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible outputs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phikit", description="Run Microsoft's Phi models locally.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{run,generate,chat,serve,finetune,export,eval,bench,doctor}")
    run = sub.add_parser("run", help="read a prompt from stdin, print the generated text",
                         description="Read the whole of stdin as one prompt and print the generated text "
                                     "(like `transformers run`).")
    run.add_argument("--task", default="text-generation", choices=[*TASKS, *TASK_ALIASES],
                     help="text-generation (stdin is one prompt), or text-classification / token-classification "
                          "(one input per line of stdin; prints one JSON result per line, as transformers' "
                          "pipeline returns it); default text-generation")
    _add_model_flags(run)
    _add_generation_flags(run)
    gen = sub.add_parser("generate", help="continue a prompt given on the command line",
                         description="Generate a continuation of PROMPT and stream it to stdout.")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument("--no-stream", action="store_true", help="print the text only when it is complete")
    _add_model_flags(gen)
    _add_generation_flags(gen)
    chat = sub.add_parser("chat", help="interactive multi-turn chat with the model's chat template",
                          description="Chat with streaming replies. Commands: /reset (new conversation), "
                                      "/system TEXT (set the system prompt and reset), /exit (or Ctrl-D).")
    chat.add_argument("--system", default=None, help="system prompt")
    _add_model_flags(chat)
    _add_generation_flags(chat)
    from .eval_cli import add_eval_parser
    from .export_cli import add_export_parser
    from .finetune_cli import add_finetune_parser

    add_finetune_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    sub.add_parser("doctor", help="what runs on this machine: CPU features and level, the kernel of each operation, "
                   "and why a fast path is not taken", description="Print the CPU's features, the CPU level in use, "
                   "the kernel behind each operation and each weight format, and the reason for every fast path not "
                   "taken. PHIKIT_CPU_LEVEL=<level> forces a lower level.")
    bench = sub.add_parser("bench", add_help=False, help="prefill/decode speed and memory next to transformers "
                           "(phikit bench --help)")
    sub.add_parser("serve", add_help=False, help="OpenAI-compatible server (phikit serve --help)")
    return parser


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
             "no_repeat_ngram_size", "num_beams")
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    kwargs["do_sample"] = bool(args.do_sample)
    if args.stop:
        kwargs["stop_strings"] = args.stop
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    return kwargs



def read_stdin() -> str:
    """All of stdin as UTF-8 text; other bytes are the user's error, named with where they are."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    return decode_stdin(data)


def decode_stdin(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"stdin is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} cannot be "
                         f"decoded as utf-8; convert it first, e.g. iconv -f latin1 -t utf-8") from None


def read_stdin_line() -> str:
    """One line of stdin ("" at the end), decoded as UTF-8."""
    if not hasattr(sys.stdin, "buffer"):
        return sys.stdin.readline()
    return decode_stdin(sys.stdin.buffer.readline())


def _load(args: argparse.Namespace, auto: Any = None):
    from .hf.auto import AutoModelForCausalLM
    from .tokenizer.tokenization import AutoTokenizer

    auto = auto or AutoModelForCausalLM

    if args.model is None:
        args.model = default_model_path()
    start = time.perf_counter()
    print(f"phikit: loading {args.model} ...", file=sys.stderr, flush=True)
    model = auto.from_pretrained(args.model, dtype=args.dtype, device_map=args.device,
                                 attn_implementation=args.attn_implementation, revision=args.revision,
                                 show_progress=True, quantization_config=quantization_for(args.weights))
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
    print(f"phikit: loaded {type(model).__name__} ({model.num_parameters() / 1e6:.1f}M parameters, "
          f"{_weights_held(model)}) in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    fresh = (getattr(model, "loading_info", None) or {}).get("newly_initialized_keys") or []
    if fresh:  # e.g. a classification head on a causal-LM checkpoint, as transformers does: say so, loudly
        print(f"phikit: note: {', '.join(fresh)} not in the checkpoint, newly initialised at random: its outputs "
              f"mean nothing until the model is fine-tuned for this task", file=sys.stderr, flush=True)
    return model, tokenizer


def _weights_held(model: Any) -> str:
    """How the linear layers hold their weights, e.g. "weights: lossless 12-bit bf16" or "weights: int4, int8"."""
    names = {"LosslessBf16Linear": "lossless 12-bit bf16", "Int8Linear": "int8", "Int4Linear": "int4"}
    kinds = sorted({names[type(m).__name__] for m in model.modules() if type(m).__name__ in names})
    return "weights: " + (", ".join(kinds) if kinds else str(model.dtype).replace("torch.", ""))


def _cmd_classify(args: argparse.Namespace, task: str) -> int:
    from .hf.auto import AutoModelForSequenceClassification, AutoModelForTokenClassification
    from .pipelines import TextClassificationPipeline, TokenClassificationPipeline

    lines = [line for line in read_stdin().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"no input on stdin; pipe one text per line, e.g. echo 'I loved it' | phikit run --task "
                         f"{task} --model M")
    if task == "text-classification":
        model, tokenizer = _load(args, AutoModelForSequenceClassification)
        pipe: Any = TextClassificationPipeline(model, tokenizer)
    else:
        model, tokenizer = _load(args, AutoModelForTokenClassification)
        pipe = TokenClassificationPipeline(model, tokenizer)
    for line in lines:  # text-classification: {"label", "score"}; token-classification: the list of entities
        result = pipe(line)
        print(json.dumps(result[0] if task == "text-classification" else result, ensure_ascii=False), flush=True)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipelines import TextGenerationPipeline

    task = TASK_ALIASES.get(args.task, args.task)
    if task != "text-generation":
        return _cmd_classify(args, task)
    prompt = read_stdin()
    if not prompt.strip():
        raise ValueError("no prompt on stdin; pipe one in, e.g. echo 'def f(x):' | phikit run --model M")
    model, tokenizer = _load(args)
    out = TextGenerationPipeline(model, tokenizer)(prompt, **_generation_kwargs(args))
    print(out[0]["generated_text"])
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generation.streamers import TextStreamer

    model, tokenizer = _load(args)
    enc = tokenizer(args.prompt, return_tensors="pt")
    kwargs = _generation_kwargs(args)
    streamer = None if args.no_stream or kwargs.get("num_beams", 1) > 1 else TextStreamer(tokenizer, skip_prompt=True,
                                                                                           skip_special_tokens=True)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    out = model.generate(enc["input_ids"].to(model.device), attention_mask=enc["attention_mask"].to(model.device),
                         tokenizer=tokenizer, streamer=streamer, **kwargs)
    if streamer is None:
        print(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .generation.streamers import TextStreamer

    model, tokenizer = _load(args)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{args.model} has no chat template; use `phikit generate` for plain text")
    system = args.system
    kwargs = _generation_kwargs(args)
    messages: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    print("phikit chat: /reset to start over, /system TEXT to set the system prompt, /exit to quit",
          file=sys.stderr, flush=True)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = read_stdin_line()
        if not line:
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = []
            print("(conversation reset)", file=sys.stderr, flush=True)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            messages = []
            print("(system prompt set; conversation reset)", file=sys.stderr, flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; use /reset, /system TEXT or /exit", file=sys.stderr,
                  flush=True)
            continue
        messages.append({"role": "user", "content": line})
        convo = ([{"role": "system", "content": system}] if system else []) + messages
        enc = tokenizer.apply_chat_template(convo, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = model.generate(enc["input_ids"].to(model.device), attention_mask=enc["attention_mask"].to(model.device),
                             tokenizer=tokenizer, streamer=streamer, **kwargs)
        reply = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply.strip()})


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune_cli import run_finetune

    return run_finetune(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export_cli import run_export

    return run_export(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval_cli import run_eval  # imports lm-eval: only when asked

    return run_eval(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main  # builds the native kernels: only when asked

    return doctor_main()


COMMANDS = {"run": _cmd_run, "generate": _cmd_generate, "chat": _cmd_chat, "finetune": _cmd_finetune,
            "export": _cmd_export, "eval": _cmd_eval, "doctor": _cmd_doctor}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser: `phikit bench --help` lists its flags
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["serve"]:  # its own parser and errors: phikit/serve_cli.py
        from .serve_cli import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("PHIKIT_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"phikit: error: {message}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else is phikit's fault, not the user's
        if debug:
            raise
        message = " ".join(str(e).split())[:300]
        print(f"phikit: error: internal error (a bug in phikit, not in your input): {type(e).__name__}: {message}; "
              f"rerun with PHIKIT_DEBUG=1 (or phikit --debug ...) to see the traceback, and please report it",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
