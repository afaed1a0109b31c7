"""`phikit finetune`: full fine-tuning or LoRA of a Phi checkpoint on text files or JSONL chat records.

    phikit finetune --model ./Phi-3-mini-4k-instruct --data chats.jsonl --eval-data held_out.jsonl \\
        --output-dir ./my-adapter --lora --epochs 2 --batch-size 4 --grad-accum 4 --dtype bfloat16
    phikit finetune --model ./phi-2 --data corpus.txt --output-dir ./phi-2-tuned --max-steps 500

Text files (.txt, .md, .py, ...) are concatenated and cut into --block-size blocks; .jsonl files hold one
{"messages": [...]} record per line, rendered with the model's chat template, with the loss on assistant turns only.
Checkpoints go to OUTPUT_DIR/checkpoint-N; `--resume` continues from the newest. The result is a PEFT adapter
(--lora), a merged model (--lora --merge) or a full model, next to the tokenizer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DTYPES = ("float32", "bfloat16")


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `finetune` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("finetune", help="fine-tune a model (full or LoRA) on text or chat data",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", required=True, help="folder of a Hugging Face checkpoint or hub id")
    p.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="training file: .txt/.md/.py text or .jsonl chat records (repeatable)")
    p.add_argument("--eval-data", action="append", default=None, metavar="FILE",
                   help="held-out file(s) for evaluation loss and perplexity (repeatable)")
    p.add_argument("--output-dir", "-o", required=True, help="where checkpoints and the result are written")
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    lora.add_argument("--lora-r", type=int, default=8, help="adapter rank (default 8)")
    lora.add_argument("--lora-alpha", type=float, default=16, help="adapter scale alpha; scaling = alpha/r (16)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapter input (0.05)")
    lora.add_argument("--lora-targets", default=None, metavar="NAMES",
                      help="comma-separated layer names (default: qkv_proj,o_proj,gate_up_proj,down_proj on Phi-3; "
                           "q_proj,k_proj,v_proj,dense,fc1,fc2 on phi)")
    lora.add_argument("--merge", action="store_true", help="fold the adapters into the weights and save a full "
                                                           "model (the adapter goes to OUTPUT_DIR/adapter)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    t.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; overrides --epochs when > 0")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 LoRA, 2e-5 full)")
    t.add_argument("--batch-size", type=int, default=4, help="examples per micro-batch (default 4)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--block-size", type=int, default=1024, help="tokens per text block / most tokens per chat "
                                                                "record (default 1024)")
    t.add_argument("--warmup-ratio", type=float, default=0.03, help="fraction of steps with rising lr (0.03)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory, "
                                                                         "~30%% slower")
    t.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="float32, or bfloat16: autocast with fp32 master weights (full) / a bf16 frozen base with "
                        "fp32 adapters (LoRA); the result is saved in this dtype")
    t.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    t.add_argument("--save-total-limit", type=int, default=None, help="keep only the newest N checkpoints")
    t.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (default: at the end)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from OUTPUT_DIR's newest checkpoint, or the checkpoint-N folder given")
    t.add_argument("--seed", type=int, default=0, help="seed for adapter init, data order and dropout")
    t.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, or auto")
    t.add_argument("--attn-implementation", default=None, choices=["eager", "sdpa", "flash_attention_2"])
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.merge and not args.lora:
        raise ValueError("--merge folds LoRA adapters into the weights; add --lora (full fine-tuning saves a full "
                         "model anyway)")
    for flag in ("lora_r", "batch_size", "grad_accum", "block_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be a positive integer")
    for path in args.data + (args.eval_data or []):  # before minutes of model loading
        if not os.path.isfile(path):
            raise OSError(f"data file {path} does not exist")
    if args.resume is None and os.path.isdir(args.output_dir):
        from .training.trainer import latest_checkpoint

        if latest_checkpoint(args.output_dir):
            raise ValueError(f"{args.output_dir} already holds checkpoints; pass --resume to continue that run or "
                             f"choose another --output-dir")


def _info(message: str) -> None:
    print(f"phikit: {message}", file=sys.stderr, flush=True)


def run_finetune(args: argparse.Namespace) -> int:
    """Run `phikit finetune` with parsed arguments; returns the exit status. User errors raise ValueError/OSError."""
    _check_args(args)
    import torch

    from .hf.auto import AutoModelForCausalLM
    from .lora import apply_lora
    from .tokenizer.tokenization import AutoTokenizer
    from .training import Trainer, TrainingConfig, load_dataset

    torch.manual_seed(args.seed)
    bf16 = args.dtype == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # full fine-tuning keeps fp32 master weights (bf16 AdamW updates round away); a frozen LoRA base may be bf16
    load_dtype = torch.bfloat16 if bf16 and args.lora else torch.float32
    _info(f"loading {args.model} ...")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=load_dtype, device_map=args.device,
                                                 attn_implementation=args.attn_implementation)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and args.block_size > limit:
        raise ValueError(f"--block-size={args.block_size} exceeds the model's max_position_embeddings={limit}; "
                         f"use --block-size {limit} or less")
    train = load_dataset(args.data, tokenizer, args.block_size)
    evaluation = load_dataset(args.eval_data, tokenizer, args.block_size) if args.eval_data else None
    if args.lora:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()] if args.lora_targets else None
        apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets)
        model.lora_config.base_model_name_or_path = args.model
    trainable = model.num_parameters(only_trainable=True)
    skipped = f", {train.skipped} chat records skipped: no assistant token within --block-size" if train.skipped \
        else ""
    _info(f"{len(train)} training examples ({train.num_tokens} tokens{skipped}); training {trainable / 1e6:.2f}M of "
          f"{model.num_parameters() / 1e6:.1f}M parameters")
    config = TrainingConfig(
        output_dir=args.output_dir, learning_rate=args.lr or (2e-4 if args.lora else 2e-5),
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, num_epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm or None, gradient_checkpointing=args.gradient_checkpointing,
        precision="bf16" if bf16 else "fp32", save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        eval_steps=args.eval_steps, seed=args.seed, progress=not args.no_progress)
    trainer = Trainer(model, config, train, evaluation, tokenizer=tokenizer)
    result = trainer.train(resume_from=args.resume)
    out = trainer.save_model(merge=args.merge, dtype=torch.bfloat16 if bf16 else None)
    last = result.losses[max(result.losses)] if result.losses else float("nan")
    summary = f"trained {result.step} steps, last training loss {last:.4f}"
    if result.eval_loss is not None:
        summary += f", eval loss {result.eval_loss:.4f}, perplexity {result.eval_perplexity:.2f}"
    _info(summary)
    kind = "merged model" if args.merge else "LoRA adapter (PEFT format)" if args.lora else "model"
    print(f"saved {kind} to {out}")
    return 0
