"""`phikit eval`: run lm-evaluation-harness tasks on phikit's own model and tokenizer (the `eval` extra).

    phikit eval --model ./Phi-3-mini-4k-instruct --tasks hellaswag,arc_easy --limit 100 --batch-size 8
    phikit eval --model DIR --tasks my_task --include-path ./my_tasks      # tasks defined by local YAML files

It calls lm-eval's `simple_evaluate` with `phikit.integrations.lm_eval.PhikitLM` and prints lm-eval's results
table; `--output FILE` writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXTRA_HINT = "phikit eval needs lm-evaluation-harness: pip install 'phikit[eval]'"


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate with lm-evaluation-harness tasks",
                              description="Run lm-evaluation-harness tasks on phikit's model and tokenizer. Needs "
                                          "the eval extra: pip install 'phikit[eval]'.")
    p.add_argument("--model", "-m", required=True, help="checkpoint folder or hub id")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task (or group) names")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: the task's)")
    p.add_argument("--limit", type=float, default=None, help="examples per task (a fraction below 1)")
    p.add_argument("--batch-size", type=int, default=1, help="requests per forward (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--max-gen-toks", type=int, default=256, help="tokens generate_until may produce (default 256)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: as saved)")
    p.add_argument("--apply-chat-template", action="store_true", help="render prompts with the chat template")
    p.add_argument("--system-instruction", default=None, help="system prompt with --apply-chat-template")
    p.add_argument("--include-path", default=None, help="folder of extra task YAML files")
    p.add_argument("--seed", type=int, default=0, help="random seed for lm-eval and sampling (default 0)")
    p.add_argument("--output", "-o", default=None, help="write the results here as JSON")
    return p


def run_eval(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r} names no task; pass lm-eval task names, e.g. --tasks hellaswag")
    if args.limit is not None and not args.limit > 0:
        raise ValueError(f"--limit {args.limit} must be positive")
    for flag in ("batch_size", "max_gen_toks"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise ValueError(f"--include-path {args.include_path} is not a folder")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from .integrations.lm_eval import PhikitLM
    except ImportError as e:
        raise ImportError(f"{EXTRA_HINT} ({e})") from e
    model = PhikitLM(pretrained=args.model, batch_size=args.batch_size, max_length=args.max_length,
                     max_gen_toks=args.max_gen_toks, dtype=args.dtype)
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval knows no task {', '.join(unknown)}; see `lm-eval ls tasks`, or pass "
                         f"--include-path with the task's YAML")
    results = lm_eval.simple_evaluate(model=model, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=manager, apply_chat_template=args.apply_chat_template,
                                      system_instruction=args.system_instruction, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed, log_samples=False)
    print(make_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({k: results[k] for k in ("results", "versions", "n-shot", "configs") if k in results}, f,
                      indent=2, default=str)
        print(f"results written to {args.output}", file=sys.stderr)
    return 0
