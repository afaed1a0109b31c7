"""`pipeline("text-generation", model=...)`: text or chat messages in, generated text out."""

from __future__ import annotations

import os
from typing import Any

import torch

Chat = list[dict[str, Any]]


def _is_chat(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(m, dict) and "role" in m for m in x)


class TextGenerationPipeline:
    """Call with a string, a list of strings, a chat (list of {"role", "content"}) or a list of chats.

    Returns, per input, a list of {"generated_text": ...}: the prompt plus the continuation for text (only the
    continuation with `return_full_text=False`), or the chat with the assistant's reply appended for chats.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __call__(self, inputs: str | list, return_full_text: bool = True, batch_size: int | None = None,
                 **generate_kwargs: Any) -> list:
        single = isinstance(inputs, str) or _is_chat(inputs)
        items = [inputs] if single else list(inputs)
        if not items or not all(isinstance(x, str) or _is_chat(x) for x in items):
            raise ValueError("text-generation takes a string, a chat (a list of {'role': ..., 'content': ...} "
                             "messages), or a list of either")
        size = batch_size or self.batch_size
        results = []
        for start in range(0, len(items), size):
            results.extend(self._run(items[start:start + size], return_full_text, generate_kwargs))
        return results[0] if single else results

    def _run(self, items: list, return_full_text: bool, generate_kwargs: dict[str, Any]) -> list:
        tok = self.tokenizer
        prompts = [tok.apply_chat_template(x, add_generation_prompt=True, tokenize=False) if _is_chat(x) else x
                   for x in items]
        chat_rendered = any(_is_chat(x) for x in items)
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=len(prompts) > 1,
                      add_special_tokens=not chat_rendered)
        finally:
            tok.padding_side = side
        generate_kwargs.setdefault("max_new_tokens", 256)
        out = self.model.generate(enc["input_ids"].to(self.model.device),
                                  attention_mask=enc["attention_mask"].to(self.model.device), tokenizer=tok,
                                  **generate_kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        per_prompt = sequences.shape[0] // len(items)
        width = enc["input_ids"].shape[1]
        results = []
        for i, item in enumerate(items):
            group = []
            for seq in sequences[i * per_prompt:(i + 1) * per_prompt]:
                text = tok.decode(seq[width:], skip_special_tokens=True)
                if _is_chat(item):
                    group.append({"generated_text": [*item, {"role": "assistant", "content": text}]})
                else:
                    group.append({"generated_text": item + text if return_full_text else text})
            results.append(group)
        return results


def pipeline(task: str = "text-generation", model: Any = None, tokenizer: Any = None, dtype: Any = "auto",
             device: Any = None, device_map: Any = None, batch_size: int = 1, torch_dtype: Any = None,
             **model_kwargs: Any) -> TextGenerationPipeline:
    """Build a text-generation pipeline from a model path / hub id (or a loaded model and tokenizer)."""
    if task != "text-generation":
        raise ValueError(f"task={task!r} is not supported; phikit pipelines do 'text-generation'")
    from .hf.auto import AutoModelForCausalLM
    from .tokenizer.tokenization import AutoTokenizer

    if model is None:
        raise ValueError("pipeline needs model=: a folder or hub id of a Phi checkpoint, or a loaded model")
    if isinstance(device, int):
        device = f"cuda:{device}" if device >= 0 else "cpu"
    if isinstance(model, (str, os.PathLike)):
        path = model
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype if torch_dtype is not None else dtype,
                                                     device_map=device_map or device, **model_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    elif device is not None:
        model = model.to(torch.device(device))
    if tokenizer is None:
        raise ValueError("pass tokenizer= along with a loaded model (or pass the model's folder as model=)")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return TextGenerationPipeline(model, tokenizer, batch_size)
