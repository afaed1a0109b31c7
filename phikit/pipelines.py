"""`pipeline(task, model=...)`: the seeds' tasks with transformers 5's inputs, defaults and output format.

- "text-generation": text or chat messages in, generated text out. Decoding follows the model's generation config;
  what neither it nor the call sets gets transformers' pipeline defaults (max_new_tokens=256, do_sample=True,
  temperature=0.7, the tokenizer's pad id), the sampling ones only when sampling.
- "text-classification" (alias "sentiment-analysis"): [{"label", "score"}] per text, with `top_k` and
  `function_to_apply` ("softmax", "sigmoid", "none"; default by problem_type / num_labels).
- "token-classification" (alias "ner"): per text, one {"entity", "score", "index", "word"} per token whose label is
  not in `ignore_labels` (default ["O"]), special tokens skipped (aggregation_strategy "none" only).
"""

from __future__ import annotations

import os
from typing import Any

import torch

Chat = list[dict[str, Any]]
TASKS = ("text-generation", "text-classification", "token-classification")
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
# transformers 5's TextGenerationPipeline._default_generation_config, and the options it sets only when sampling.
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
SAMPLING_OPTIONS = {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}


class PipelineError(ValueError):
    """A pipeline got an input or option it cannot run; the message names it and the fix."""


def _is_chat(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(m, dict) and "role" in m for m in x)


def _is_chat_list(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(_is_chat(c) for c in x)


class TextGenerationPipeline:
    """Call with a string, a list of strings, a chat (list of {"role", "content"}) or a list of chats.

    Returns, per input, a list of {"generated_text": ...} (one per returned sequence): the prompt plus the
    continuation for text, the chat with the assistant's reply appended for chats (a chat ending in an assistant
    message is continued in place); only the new text with `return_full_text=False`.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __call__(self, inputs: str | list, return_full_text: bool = True, batch_size: int | None = None,
                 continue_final_message: bool | None = None, **generate_kwargs: Any) -> list:
        single = isinstance(inputs, str) or _is_chat(inputs)
        items = [inputs] if single else list(inputs) if isinstance(inputs, (list, tuple)) else []
        if not items or not all(isinstance(x, str) or _is_chat(x) for x in items):
            raise PipelineError(f"text-generation takes a string, a chat (a list of {{'role': ..., 'content': ...}} "
                                f"messages), or a list of either; got {type(inputs).__name__}")
        if not isinstance(return_full_text, bool):
            raise PipelineError(f"return_full_text={return_full_text!r} must be True or False")
        size = self.batch_size if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise PipelineError(f"batch_size={size!r} must be an integer >= 1")
        kwargs = self._generate_kwargs(generate_kwargs)
        results = []
        for start in range(0, len(items), size):
            results.extend(self._run(items[start:start + size], return_full_text, continue_final_message, kwargs))
        return results[0] if single else results

    def _generate_kwargs(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's options, plus transformers' pipeline defaults for what neither they nor the model's
        generation config set (its sampling defaults only when sampling)."""
        config = getattr(self.model, "generation_config", None)
        set_params = {**(config.to_diff_dict() if config is not None else {}), **generate_kwargs}
        defaults = dict(GENERATION_DEFAULTS)
        if getattr(self.tokenizer, "pad_token_id", None) is not None:
            defaults["pad_token_id"] = self.tokenizer.pad_token_id
        added = {k: v for k, v in defaults.items()
                 if k not in set_params and not (k == "max_new_tokens" and "max_length" in set_params)}
        if not {**set_params, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in SAMPLING_OPTIONS}
        return {**generate_kwargs, **added}

    def _encode(self, items: list, continue_final_message: bool | None) -> tuple[dict, list[bool]]:
        tok = self.tokenizer
        prompts, continued = [], []
        for x in items:
            if _is_chat(x):
                cont = x[-1]["role"] == "assistant" if continue_final_message is None else continue_final_message
                prompts.append(tok.apply_chat_template(x, add_generation_prompt=not cont, continue_final_message=cont,
                                                       tokenize=False))
                continued.append(cont)
            else:
                prompts.append(x)
                continued.append(False)
        chat_rendered = any(_is_chat(x) for x in items)
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=len(prompts) > 1, add_special_tokens=not chat_rendered)
        finally:
            tok.padding_side = side
        return enc, continued

    def _run(self, items: list, return_full_text: bool, continue_final_message: bool | None,
             generate_kwargs: dict[str, Any]) -> list:
        tok = self.tokenizer
        enc, continued = self._encode(items, continue_final_message)
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
                if not return_full_text:
                    group.append({"generated_text": text})
                elif _is_chat(item) and continued[i]:
                    last = item[-1]
                    group.append({"generated_text": [*item[:-1], {**last, "content": last["content"] + text}]})
                elif _is_chat(item):
                    group.append({"generated_text": [*item, {"role": "assistant", "content": text}]})
                else:
                    group.append({"generated_text": item + text})
            results.append(group)
        return results


def _texts(task: str, inputs: Any) -> tuple[list[str], bool]:
    single = isinstance(inputs, str)
    items = [inputs] if single else inputs
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) for x in items):
        raise PipelineError(f"{task} takes a string or a non-empty list of strings, got {type(inputs).__name__}"
                            + (f" holding {sorted({type(x).__name__ for x in items})}"
                               if isinstance(items, (list, tuple)) else ""))
    return list(items), single


def _activation(config: Any, function_to_apply: str | None) -> str:
    if function_to_apply is None:
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"
    name = str(function_to_apply).lower().rsplit(".", 1)[-1]
    if name not in ("softmax", "sigmoid", "none"):
        raise PipelineError(f"function_to_apply={function_to_apply!r} is not one of 'softmax', 'sigmoid', 'none'")
    return name


def _apply(logits: torch.Tensor, how: str) -> torch.Tensor:
    logits = logits.float()
    if how == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-logits))
    if how == "softmax":
        shifted = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
        return shifted / shifted.sum(dim=-1, keepdim=True)
    return logits


class TextClassificationPipeline:
    """Scores each text with a sequence-classification head: [{"label", "score"}] as transformers returns."""

    _UNSET = object()

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def __call__(self, inputs: str | list[str], top_k: Any = _UNSET, function_to_apply: str | None = None) -> list:
        legacy = top_k is self._UNSET
        if not legacy and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise PipelineError(f"top_k={top_k!r} must be an integer >= 1, or None for every label")
        items, single = _texts("text-classification", inputs)
        how = _activation(self.model.config, function_to_apply)
        id2label = self.model.config.id2label
        results = []
        for text in items:
            enc = self.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(enc["input_ids"].to(self.model.device),
                                    attention_mask=enc["attention_mask"].to(self.model.device),
                                    use_cache=False).logits[0]
            scores = _apply(logits, how)
            if legacy:
                best = int(scores.argmax())
                results.append({"label": id2label[best], "score": float(scores[best])})
                continue
            ranked = sorted(({"label": id2label[i], "score": float(s)} for i, s in enumerate(scores)),
                            key=lambda r: r["score"], reverse=True)
            results.append(ranked if top_k is None else ranked[:top_k])
        if single:
            return results if legacy else results[0]
        return results


class TokenClassificationPipeline:
    """Labels every token with a token-classification head (transformers' aggregation_strategy="none")."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def __call__(self, inputs: str | list[str], ignore_labels: list[str] | None = None,
                 aggregation_strategy: str | None = None) -> list:
        if aggregation_strategy not in (None, "none"):
            raise PipelineError(f"aggregation_strategy={aggregation_strategy!r}: phikit's token-classification "
                                f"does 'none' only (one result per token)")
        ignore = ["O"] if ignore_labels is None else list(ignore_labels)
        items, single = _texts("token-classification", inputs)
        id2label = self.model.config.id2label
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        results = []
        for text in items:
            enc = self.tokenizer(text, return_tensors="pt")
            ids = enc["input_ids"]
            with torch.no_grad():
                logits = self.model(ids.to(self.model.device),
                                    attention_mask=enc["attention_mask"].to(self.model.device)).logits[0]
            scores = _apply(logits, "softmax")
            offsets = _offsets(self.tokenizer, text, ids[0].tolist())
            entities = []
            for index, token in enumerate(ids[0].tolist()):
                if token in special:
                    continue
                best = int(scores[index].argmax())
                if id2label[best] in ignore:
                    continue
                start, end = offsets[index]
                entities.append({"entity": id2label[best], "score": float(scores[index, best]), "index": index,
                                 "word": self.tokenizer.convert_ids_to_tokens(token), "start": start, "end": end})
            results.append(entities)
        return results[0] if single else results


def _offsets(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int | None, int | None]]:
    """Character spans of each token, from the `tokenizers` backend when it encodes `text` to the same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        encoding = backend.encode(text)
    except Exception:  # no backend with offsets: spans unknown, as transformers reports for slow tokenizers
        return [(None, None)] * len(ids)
    if list(encoding.ids) != ids:
        return [(None, None)] * len(ids)
    return [tuple(o) for o in encoding.offsets]


def pipeline(task: str = "text-generation", model: Any = None, tokenizer: Any = None, dtype: Any = "auto",
             device: Any = None, device_map: Any = None, batch_size: int = 1, torch_dtype: Any = None,
             **model_kwargs: Any):
    """Build a pipeline of `task` (see the module docstring) from a model path / hub id, or a loaded model and
    tokenizer."""
    resolved = ALIASES.get(task, task) if isinstance(task, str) else task
    if resolved not in TASKS:
        raise PipelineError(f"task={task!r} is not supported; phikit pipelines do {', '.join(TASKS)} (and the "
                            f"aliases {', '.join(ALIASES)})")
    from .hf.auto import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from .tokenizer.tokenization import AutoTokenizer

    if model is None:
        raise PipelineError("pipeline needs model=: a folder or hub id of a Phi checkpoint, or a loaded model")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}" if device >= 0 else "cpu"
    if isinstance(model, (str, os.PathLike)):
        path = model
        auto = {"text-generation": AutoModelForCausalLM, "text-classification": AutoModelForSequenceClassification,
                "token-classification": AutoModelForTokenClassification}[resolved]
        model = auto.from_pretrained(path, dtype=torch_dtype if torch_dtype is not None else dtype,
                                     device_map=device_map or device, **model_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    elif device is not None:
        model = model.to(torch.device(device))
    if tokenizer is None:
        raise PipelineError("pass tokenizer= along with a loaded model (or pass the model's folder as model=)")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if resolved == "text-generation":
        return TextGenerationPipeline(model, tokenizer, batch_size)
    if resolved == "text-classification":
        return TextClassificationPipeline(model, tokenizer)
    return TokenClassificationPipeline(model, tokenizer)


__all__ = ["pipeline", "PipelineError", "TextGenerationPipeline", "TextClassificationPipeline",
           "TokenClassificationPipeline", "TASKS"]
