"""Checks of the tensors `generate()` and `forward()` take: token ids, attention masks, position ids, labels.

Each check raises `GenerationArgumentError` (a ValueError) naming the argument, what it holds (dtype, shape, the
offending id) and the allowed range, before anything runs: a failed call changes no cache and no model state.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..generation_config import GenerationArgumentError

IGNORE_INDEX = -100


def as_id_tensor(name: str, value: Any) -> torch.Tensor:
    """A tensor of token ids from a tensor or nested lists of ints; refuses floats, bools and ragged lists."""
    if not torch.is_tensor(value):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise GenerationArgumentError(
                f"{name} must be a tensor of token ids [batch, tokens], got {type(value).__name__}; tokenize text "
                f"first: tokenizer(text, return_tensors='pt').input_ids")
        try:
            value = torch.tensor(value)
        except (ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise GenerationArgumentError(f"{name} must be a rectangular list of integer token ids (pad shorter "
                                          f"rows: tokenizer(texts, padding=True)); torch.tensor refused it: {e}"
                                          ) from None
    check_integer_dtype(name, value)
    return value


def check_integer_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise GenerationArgumentError(f"{name} has dtype {t.dtype}; token ids must be integers (torch.long): pass "
                                      f"the tokenizer's ids, or ids.long() if they are whole numbers stored as floats")


def check_id_range(name: str, ids: torch.Tensor, vocab_size: int, allow: int | None = None,
                   limit: str = "vocab_size") -> None:
    """Every id in [0, vocab_size) (or equal to `allow`, e.g. -100 in labels)."""
    if not ids.numel():
        return
    real = ids if allow is None else ids[ids != allow]
    if not real.numel():
        return
    low, high = int(real.min()), int(real.max())
    bad = low if low < 0 else high if high >= vocab_size else None
    if bad is not None:
        extra = f" or {allow}" if allow is not None else ""
        fix = ("the tokenizer does not match this model, or the ids are corrupted" if limit == "vocab_size"
               else "use class indices below it, or -100 to ignore a position")
        raise GenerationArgumentError(f"{name} holds id {bad}, outside the valid range [0, {vocab_size - 1}]"
                                      f"{extra} (the model's {limit} is {vocab_size}); {fix}")


def check_mask(name: str, mask: torch.Tensor, shape: tuple[int, ...] | None, what: str) -> None:
    """A 2-D mask of 0s and 1s, of `shape` when given (`what` says what that shape is)."""
    if not torch.is_tensor(mask):
        raise GenerationArgumentError(f"{name} must be a tensor of 1s (real tokens) and 0s (padding), got "
                                      f"{type(mask).__name__}")
    if mask.dim() != 2:
        raise GenerationArgumentError(f"{name} must be 2-D [batch, tokens] of 1s and 0s, got shape "
                                      f"{tuple(mask.shape)}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise GenerationArgumentError(f"{name} has shape {tuple(mask.shape)} but {what} has shape {tuple(shape)}; "
                                      f"pass the mask the tokenizer returned with these ids")
    if mask.dtype.is_complex or (mask.numel() and bool(((mask != 0) & (mask != 1)).any())):
        raise GenerationArgumentError(f"{name} must hold only 1s (real tokens) and 0s (padding); it holds other "
                                      f"values (dtype {mask.dtype})")


def split_generate_inputs(inputs: Any, kwargs: dict[str, Any], vocab_size: int
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """input_ids [B, T] and attention_mask [B, T] (or None) from `inputs` (ids [B, T] or [T], or a tokenizer's
    dict) or the input_ids= / attention_mask= keywords, popped from `kwargs`; checked."""
    attention_mask = kwargs.pop("attention_mask", None)
    if isinstance(inputs, Mapping):
        if "input_ids" not in inputs:
            raise GenerationArgumentError(f"the inputs dict has keys {sorted(map(str, inputs))} but no 'input_ids'; "
                                          f"pass tokenizer(text, return_tensors='pt')")
        attention_mask = inputs.get("attention_mask", attention_mask)
        inputs = inputs["input_ids"]
    if inputs is None:
        inputs = kwargs.pop("input_ids", None)
    elif "input_ids" in kwargs:
        raise GenerationArgumentError("pass the prompt once: either as `inputs` or as `input_ids=`, not both")
    if inputs is None:
        raise GenerationArgumentError("generate() needs a prompt: token ids [batch, tokens] (e.g. tokenizer(text, "
                                      "return_tensors='pt').input_ids)")
    ids = as_id_tensor("input_ids", inputs)
    if attention_mask is not None and not torch.is_tensor(attention_mask):
        if not isinstance(attention_mask, (list, tuple)):
            check_mask("attention_mask", attention_mask, None, "")
        try:
            attention_mask = torch.tensor(attention_mask)
        except (ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise GenerationArgumentError(f"attention_mask must be a rectangular list of 1s and 0s: {e}") from None
    if ids.dim() == 1:
        ids = ids[None]
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise GenerationArgumentError(f"input_ids must have shape [batch, tokens] with at least one row and one "
                                      f"token, got {tuple(ids.shape)}")
    check_id_range("input_ids", ids, vocab_size)
    if attention_mask is not None:
        check_mask("attention_mask", attention_mask, tuple(ids.shape), "input_ids")
        if not bool(attention_mask.any(dim=1).all()):
            row = int((~attention_mask.bool().any(dim=1)).nonzero()[0, 0])
            raise GenerationArgumentError(f"attention_mask row {row} is all 0s: that prompt has no real token; "
                                          f"drop it from the batch")
    return ids.long(), attention_mask


def check_forward_inputs(config: Any, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                         position_ids: torch.Tensor | None, past_length: int, inputs_embeds: torch.Tensor | None
                         ) -> None:
    """forward()'s cheap checks: ids' dtype and range, the mask covers past + new tokens, position ids' shape."""
    if input_ids is not None:
        if not torch.is_tensor(input_ids):
            raise GenerationArgumentError(f"input_ids must be a tensor [batch, tokens], got "
                                          f"{type(input_ids).__name__}; use torch.tensor(ids) or return_tensors='pt'")
        check_integer_dtype("input_ids", input_ids)
        if input_ids.dim() != 2:
            raise GenerationArgumentError(f"input_ids must have shape [batch, tokens], got "
                                          f"{tuple(input_ids.shape)}; add a batch dimension with input_ids[None]")
        check_id_range("input_ids", input_ids, config.vocab_size)
        batch, new = input_ids.shape
    elif inputs_embeds is not None:
        if not torch.is_tensor(inputs_embeds) or inputs_embeds.dim() != 3 or \
                inputs_embeds.shape[-1] != config.hidden_size:
            shape = tuple(inputs_embeds.shape) if torch.is_tensor(inputs_embeds) else type(inputs_embeds).__name__
            raise GenerationArgumentError(f"inputs_embeds must have shape [batch, tokens, hidden_size="
                                          f"{config.hidden_size}], got {shape}")
        batch, new = inputs_embeds.shape[:2]
    else:
        return
    if attention_mask is not None:
        check_mask("attention_mask", attention_mask, None, "")
        if attention_mask.shape[0] != batch or attention_mask.shape[1] < new:
            raise GenerationArgumentError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input has shape {(batch, new)} "
                f"after {past_length} cached tokens; the mask must be [batch={batch}, cached + new tokens="
                f"{past_length + new}]")
    if position_ids is not None:
        if not torch.is_tensor(position_ids) or position_ids.dtype.is_floating_point or position_ids.dim() != 2 \
                or position_ids.shape[-1] != new or position_ids.shape[0] not in (1, batch):
            shape = tuple(position_ids.shape) if torch.is_tensor(position_ids) else type(position_ids).__name__
            raise GenerationArgumentError(f"position_ids must be an integer tensor [batch={batch} or 1, tokens={new}] "
                                          f"like input_ids, got {shape}")
        if position_ids.numel() and int(position_ids.min()) < 0:
            raise GenerationArgumentError(f"position_ids holds {int(position_ids.min())}; positions start at 0")


def check_labels(name: str, labels: Any, shape: tuple[int, ...], num_classes: int, limit: str) -> None:
    """Class-index labels of `shape`, each in [0, num_classes) or -100 (ignored)."""
    if not torch.is_tensor(labels):
        raise GenerationArgumentError(f"{name} must be a tensor, got {type(labels).__name__}")
    check_integer_dtype(name, labels)
    if tuple(labels.shape) != tuple(shape):
        raise GenerationArgumentError(f"{name} has shape {tuple(labels.shape)} but input_ids has shape "
                                      f"{tuple(shape)}; pass one label per token (-100 to ignore a position)")
    check_id_range(name, labels, num_classes, allow=IGNORE_INDEX, limit=limit)
