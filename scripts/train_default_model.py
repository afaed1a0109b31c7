"""Train phikit's bundled default model: a tiny Phi-3-architecture model of Python, in the spirit of phi-1.

    python scripts/train_default_model.py --minutes 25 --out phikit/default_model

Corpus: the `.py` files of the running Python's standard library (present offline on every machine), minus its
test suites; files whose path hashes into the last 5% are held out for evaluation. Tokenizer: a byte-level BPE
trained here with the `tokenizers` library. Model: phikit.Phi3ForCausalLM (RMSNorm, SiLU, fused qkv/gate_up, RoPE,
tied embeddings), trained by phikit from random weights, saved in the ordinary Hugging Face folder layout (bf16).
Prints the held-out loss and perplexity and a unigram baseline measured on the same held-out tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import random
import sysconfig
import time

import torch

import phikit

EOS = "<|endoftext|>"


def corpus_files() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    held = [p for p in files if int(hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20 == 0]
    held_set = set(held)
    return [p for p in files if p not in held_set], held


def read(paths: list[pathlib.Path]) -> list[str]:
    out = []
    for p in paths:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def train_tokenizer(texts: list[str], vocab_size: int, folder: pathlib.Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "pad_token": EOS,
        "unk_token": None, "model_max_length": 512, "add_bos_token": False, "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")


def encode_all(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t, add_special_tokens=False))
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model, data: torch.Tensor, block: int, max_blocks: int = 200) -> float:
    model.eval()
    n = min(max_blocks, (len(data) - 1) // block)
    losses = []
    for i in range(0, n, 8):
        rows = torch.stack([data[j * block:(j + 1) * block] for j in range(i, min(n, i + 8))])
        losses.append(float(model(rows, labels=rows, use_cache=False).loss) * rows.shape[0])
    model.train()
    return sum(losses) / n


def unigram_loss(train: torch.Tensor, held: torch.Tensor, vocab: int) -> float:
    """Cross entropy (nats/token) of a unigram model fit on the training tokens (add-one smoothing), on held-out
    tokens — the baseline the trained model must beat. Held-out tokens are scored as the model scores them:
    every token but each block's first."""
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[held].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="phikit/default_model")
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out = pathlib.Path(args.out)
    train_files, held_files = corpus_files()
    train_texts, held_texts = read(train_files), read(held_files)
    print(f"corpus: {len(train_texts)} training files, {len(held_texts)} held-out files "
          f"({sum(map(len, train_texts)) / 1e6:.1f} MB / {sum(map(len, held_texts)) / 1e6:.1f} MB)")
    train_tokenizer(train_texts, args.vocab, out)
    tokenizer = phikit.AutoTokenizer.from_pretrained(out)
    train, held = encode_all(tokenizer, train_texts), encode_all(tokenizer, held_texts)
    print(f"tokens: {len(train) / 1e6:.2f}M train, {len(held) / 1e6:.2f}M held out; vocab {len(tokenizer)}")

    config = phikit.Phi3Config(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=args.block * 2, original_max_position_embeddings=args.block * 2,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, rope_theta=10000.0, sliding_window=None)
    model = phikit.Phi3ForCausalLM(config)
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = args.minutes * 60
    start = time.perf_counter()
    step, seen = 0, 0
    model.train()
    warmup = 100
    while time.perf_counter() - start < budget:
        frac = (time.perf_counter() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - args.block - 1, (args.batch,))
        rows = torch.stack([train[s:s + args.block] for s in starts.tolist()])
        loss = model(rows, labels=rows, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        seen += rows.numel()
        if step % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {step} loss {float(loss.detach()):.3f} lr {lr:.2e} {seen / elapsed:.0f} tok/s "
                  f"{elapsed / 60:.1f} min", flush=True)
    held_loss = evaluate(model, held, args.block)
    base = unigram_loss(train, held, len(tokenizer))
    print(f"held-out loss {held_loss:.3f} nats/token = perplexity {math.exp(held_loss):.1f}; unigram baseline "
          f"{base:.3f} = perplexity {math.exp(base):.1f} ({seen / 1e6:.1f}M tokens seen, {step} steps)")
    model.to(torch.bfloat16)
    model.generation_config = phikit.GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                      pad_token_id=tokenizer.eos_token_id, max_new_tokens=64)
    model.save_pretrained(out)
    (out / "TRAINING.json").write_text(json.dumps({
        "command": f"python scripts/train_default_model.py --minutes {args.minutes} --out {args.out}",
        "python": sysconfig.get_python_version(), "torch": torch.__version__, "steps": step, "tokens_seen": seen,
        "held_out_loss": round(held_loss, 4), "held_out_perplexity": round(math.exp(held_loss), 2),
        "unigram_loss": round(base, 4), "unigram_perplexity": round(math.exp(base), 2),
        "parameters": model.num_parameters(), "minutes": args.minutes,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
