"""A small, resumable training loop for phikit causal LMs: full fine-tuning or LoRA.

AdamW with linear warmup and linear decay, gradient accumulation, gradient clipping, optional gradient
checkpointing, fp32 or bf16 autocast (fp32 master weights), evaluation loss and perplexity, a progress bar with loss
and tokens/s, and checkpoints written atomically to output_dir/checkpoint-N.

Exact accumulation: the loss of an optimizer step is the sum of token losses over all its micro-batches divided by
the number of labelled tokens in the whole step (transformers' `num_items_in_batch`), so accumulating k batches of
size b gives the gradient of one batch of size k*b however the labels fall.

Reproducible order without dataloader state: micro-batch m of the run is batch m % n of epoch m // n, where epoch e
visits the examples in a permutation seeded by (seed + e). A resumed run restores weights, optimizer, scheduler and
RNG and starts at micro-batch step * grad_accum, so its losses equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..hf.losses import IGNORE_INDEX, causal_lm_loss
from ..lora import load_adapter, lora_modules, merge_lora, save_adapter
from .data import DataCollator

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.pt"


@dataclass
class TrainingConfig:
    """Hyper-parameters of `Trainer` (names follow transformers' TrainingArguments where there is one)."""

    output_dir: str
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; weights stay as they are)
    save_steps: int = 0  # 0: a checkpoint at the end only
    save_total_limit: int | None = None
    eval_steps: int = 0  # 0: evaluate at the end only
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0 (typical: 2e-4 LoRA, 2e-5 full)")
        if self.max_steps <= 0 and not self.num_epochs > 0:
            raise ValueError(f"num_epochs={self.num_epochs} and max_steps={self.max_steps}: give a positive one")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}; use 'fp32' or 'bf16'")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must lie in [0, 1)")


@dataclass
class TrainResult:
    step: int
    losses: dict[int, float]  # optimizer step -> training loss of that step
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor: 0 -> 1 over `warmup` steps, then 1 -> 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _checkpoint_step(path: str) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else -1


def latest_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint-N with the largest N in output_dir, or None."""
    found = [p for p in glob.glob(os.path.join(output_dir, "checkpoint-*"))
             if _checkpoint_step(p) >= 0 and os.path.isfile(os.path.join(p, STATE_FILE))]
    return max(found, key=_checkpoint_step) if found else None


class Trainer:
    """Trains `model` (a phikit causal LM, LoRA-wrapped or not) on `train_dataset` (examples of input_ids/labels).

    Only parameters with requires_grad are optimised, so after `apply_lora` only the adapters train.
    """

    def __init__(self, model: torch.nn.Module, config: TrainingConfig, train_dataset, eval_dataset=None,
                 collator: Callable | None = None, tokenizer=None) -> None:
        config.validate()
        if len(train_dataset) == 0:
            raise ValueError("the training dataset is empty; give more data or a smaller --block-size")
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.collator = collator or DataCollator(pad)
        self.is_lora = bool(lora_modules(model))
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters; call apply_lora or unfreeze some parameters")
        self.batches_per_epoch = math.ceil(len(train_dataset) / config.batch_size)
        steps = config.max_steps if config.max_steps > 0 else \
            math.ceil(config.num_epochs * self.batches_per_epoch / config.grad_accum)
        self.total_steps = max(1, steps)
        warmup = config.warmup_steps or int(config.warmup_ratio * self.total_steps)
        decay = [p for n, p in self.params if p.dim() >= 2]  # no decay on biases and norm weights
        rest = [p for n, p in self.params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                                           betas=config.adam_betas, eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))
        self.step = 0
        self.log_history: list[dict[str, Any]] = []
        self._perms: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ data

    def _micro_batch(self, m: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(m, self.batches_per_epoch)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(len(self.train_dataset),
                                                 generator=torch.Generator().manual_seed(self.config.seed + epoch))}
        idx = self._perms[epoch][i * self.config.batch_size:(i + 1) * self.config.batch_size]
        return self.collator([self.train_dataset[int(j)] for j in idx])

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward_loss(self, batch: dict[str, torch.Tensor], num_items: int | torch.Tensor) -> torch.Tensor:
        """Sum of token losses of `batch` / num_items (+ PhiMoE's router loss when the config asks for it)."""
        device = self.model.device
        with self._autocast():
            out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             use_cache=False)
            loss = causal_lm_loss(out.logits, batch["labels"].to(device), num_items)
            aux = getattr(out, "aux_loss", None)
            if aux is not None:
                loss = loss + self.model.config.router_aux_loss_coef * aux / self.config.grad_accum
        return loss

    # ------------------------------------------------------------------ training

    def train(self, resume_from: str | None = None) -> TrainResult:
        """Run to total_steps; resume_from = a checkpoint folder or "latest" (the newest in output_dir)."""
        config, model = self.config, self.model
        if resume_from:
            self.load_checkpoint(resume_from)
        else:
            torch.manual_seed(config.seed)
            random.seed(config.seed)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        losses: dict[int, float] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not config.progress, dynamic_ncols=True)
        trainable = [p for _, p in self.params]
        while self.step < self.total_steps:
            started = time.perf_counter()
            accum = config.grad_accum
            batches = [self._micro_batch(m) for m in range(self.step * accum, (self.step + 1) * accum)]
            num_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            total = torch.zeros((), device=model.device)
            if num_items > 0:  # a step whose batches carry no label (truncated chats) only advances the schedule
                for batch in batches:
                    loss = self._forward_loss(batch, num_items)
                    loss.backward()
                    total += loss.detach().float()
            grad_norm = None
            if config.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            value = float(total)
            losses[self.step] = value
            speed = tokens / max(time.perf_counter() - started, 1e-9)
            self.log_history.append({"step": self.step, "loss": value, "lr": lr, "grad_norm": grad_norm,
                                     "tokens_per_second": round(speed, 1),
                                     "epoch": round(self.step * accum / self.batches_per_epoch, 4)})
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
            bar.update(1)
            if config.eval_steps and self.eval_dataset is not None and self.step % config.eval_steps == 0 \
                    and self.step < self.total_steps:
                self._log_eval(bar)
            if config.save_steps and self.step % config.save_steps == 0:
                self.save_checkpoint()
        bar.close()
        metrics = self._log_eval(bar) if self.eval_dataset is not None else {}
        if not config.save_steps or self.step % config.save_steps:
            self.save_checkpoint()
        return TrainResult(self.step, losses, metrics.get("eval_loss"), metrics.get("eval_perplexity"),
                           self.log_history)

    def _log_eval(self, bar) -> dict[str, float]:
        metrics = self.evaluate()
        self.log_history.append({"step": self.step, **metrics})
        bar.write(f"step {self.step}: eval loss {metrics['eval_loss']:.4f}, "
                  f"perplexity {metrics['eval_perplexity']:.2f}", file=sys.stderr)
        return metrics

    @torch.no_grad()
    def evaluate(self, dataset=None) -> dict[str, float]:
        """Mean token loss over the held-out set and its perplexity exp(loss): {"eval_loss", "eval_perplexity"}."""
        dataset = self.eval_dataset if dataset is None else dataset
        if dataset is None or len(dataset) == 0:
            raise ValueError("no evaluation data; pass eval_dataset (--eval-data)")
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(dataset), self.config.batch_size):
            batch = self.collator([dataset[i] for i in range(start, min(start + self.config.batch_size,
                                                                         len(dataset)))])
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if n:
                total += float(self._eval_ce(batch))  # summed over the batch's labelled tokens
                count += n
        self.model.train(was_training)
        if count == 0:
            raise ValueError("the evaluation data has no labelled tokens")
        loss = total / count
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}

    def _eval_ce(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # cross entropy only: the router's auxiliary loss is a training regulariser, not part of perplexity
        device = self.model.device
        with self._autocast():
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
        return causal_lm_loss(logits, batch["labels"].to(device), 1)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> str:
        """Write output_dir/checkpoint-N (weights or adapter, optimizer, scheduler, RNG, step) atomically: into a
        temporary folder first, renamed into place, so an interrupted save never leaves a half checkpoint."""
        out = self.config.output_dir
        final = os.path.join(out, f"checkpoint-{self.step}")
        tmp = os.path.join(out, f".tmp-checkpoint-{self.step}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if self.is_lora:
            save_adapter(self.model, tmp)
        else:
            self.model.save_pretrained(tmp)
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng},
                   os.path.join(tmp, TENSORS_FILE))
        state = {"step": self.step, "total_steps": self.total_steps, "is_lora": self.is_lora,
                 "config": dataclasses.asdict(self.config), "log_history": self.log_history}
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)
        if os.path.exists(final):
            old = f"{final}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        done = sorted((p for p in glob.glob(os.path.join(self.config.output_dir, "checkpoint-*"))
                       if _checkpoint_step(p) >= 0), key=_checkpoint_step)
        for path in done[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, path: str) -> None:
        """Restore weights (or adapter), optimizer, scheduler, RNG and step from a checkpoint folder or "latest"."""
        if path == "latest":
            found = latest_checkpoint(self.config.output_dir)
            if found is None:
                raise ValueError(f"no checkpoint-N in {self.config.output_dir} to resume from; drop --resume to "
                                 f"start afresh")
            path = found
        if not os.path.isfile(os.path.join(path, STATE_FILE)):
            raise OSError(f"{path} is not a complete phikit checkpoint (no {STATE_FILE}); give a checkpoint-N folder "
                          f"or 'latest'")
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        if state["is_lora"] != self.is_lora:
            kind = "a LoRA adapter" if state["is_lora"] else "full weights"
            raise ValueError(f"{path} holds {kind} but this run is {'LoRA' if self.is_lora else 'full'} fine-tuning; "
                             f"resume with the same --lora setting")
        if self.is_lora:
            load_adapter(self.model, path, is_trainable=True)  # copies into the existing adapter Parameters
        else:
            self._load_full_weights(path)
        tensors = torch.load(os.path.join(path, TENSORS_FILE), map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        self.step = int(state["step"])
        # the schedule of this run (its max_steps may extend the old one) sets the next step's learning rate
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.step)
        torch.set_rng_state(tensors["rng"]["torch"])
        random.setstate(tensors["rng"]["python"])
        if "cuda" in tensors["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["rng"]["cuda"])
        self.log_history = list(state.get("log_history", []))

    def _load_full_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            state.update(load_file(file))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise ValueError(f"{path} does not match this model: missing {sorted(set(missing) - tied)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}; resume with the same --model")

    def save_model(self, output_dir: str | None = None, merge: bool = False, dtype: torch.dtype | None = None) -> str:
        """Final save: the adapter (PEFT format), or the full model via save_pretrained. merge=True folds a LoRA into
        the weights first (the adapter itself also goes to output_dir/adapter). The tokenizer is saved alongside."""
        out = output_dir or self.config.output_dir
        if self.is_lora:
            if merge:
                save_adapter(self.model, os.path.join(out, "adapter"))
                merge_lora(self.model)
                self.is_lora = False
            else:
                save_adapter(self.model, out)
        if not self.is_lora:
            if dtype is not None:
                self.model.to(dtype)
            self.model.save_pretrained(out)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(out)
        return out
