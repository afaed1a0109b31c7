"""Stopping criteria: when a row of `generate()` is done.

Same names, constructors and call signature as transformers 5.x: `criteria(input_ids [B, L], scores) -> BoolTensor
[B]`, True where that row is done (B = rows, L = tokens so far, prompt included). `build_stopping_criteria` builds
the list in the order of transformers' `GenerationMixin._get_stopping_criteria`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Protocol

import torch

from .logits_process import _eos_list, _id_tensor, merge_processor_lists


class Decoder(Protocol):
    """What `StopStringCriteria` needs from a tokenizer."""

    def decode(self, token_ids: list[int]) -> str: ...


class StoppingCriteria:
    """Base class: `__call__(input_ids: LongTensor [B, L], scores, **kwargs) -> BoolTensor [B]` (True = done)."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class StoppingCriteriaList(list):
    """A row is done when any criterion says so."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | criterion(input_ids, scores, **kwargs)
        return done

    @property
    def max_length(self) -> int | None:
        """The first MaxLengthCriteria's max_length, if any."""
        return next((c.max_length for c in self if isinstance(c, MaxLengthCriteria)), None)


class MaxLengthCriteria(StoppingCriteria):
    """Done when rows reach `max_length` tokens, prompt included. Warns once past `max_position_embeddings`."""

    def __init__(self, max_length: int, max_position_embeddings: int | None = None) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"`max_length` must be an integer >= 1 (prompt + new tokens), got {max_length!r}")
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings
        self._warned = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        length = input_ids.shape[1]
        done = length >= self.max_length
        limit = self.max_position_embeddings
        if limit is not None and not done and length > limit and not self._warned:
            self._warned = True
            warnings.warn(f"generation passed the model's max_position_embeddings ({limit}) at {length} tokens; "
                          "quality may degrade", UserWarning, stacklevel=2)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class MaxTimeCriteria(StoppingCriteria):
    """Done (every row) once `max_time` seconds have passed since `initial_timestamp` (default: construction)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None) -> None:
        if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not max_time >= 0:
            raise ValueError(f"`max_time` must be a number of seconds >= 0, got {max_time!r}")
        self.max_time = float(max_time)
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """Done when any of the last `new_token_length` tokens (default 1) is an eos id."""

    def __init__(self, eos_token_id: int | list[int] | torch.Tensor) -> None:
        self.eos_token_id = _id_tensor("eos_token_id", eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, new_token_length: int = 1,
                 **kwargs: Any) -> torch.BoolTensor:
        self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -new_token_length:], self.eos_token_id).any(dim=-1)


class StopStringCriteria(StoppingCriteria):
    """Done when the decoded text ends in a way that completes a stop string with the LAST token.

    Rule (the same as transformers'): a stop string matches when it occurs in the decoded text and at least one of
    its characters comes from the last token, so "stop" matches ["st", "op"], ["stop"], ["st", "opera"] and
    ["las", "topper"] (strings that end mid-token), but not ["stop", "at"] (checked at every step, that one already
    stopped a token earlier).

    Algorithm: per row, decode a tail window of tokens with and without the last token. The characters from the
    first position where the two texts differ onwards are the last token's contribution (comparing instead of
    assuming `after.startswith(before)` also handles a token that completes a multi-byte UTF-8 character: before
    ends in replacement characters, after in the character). A stop string matches when it occurs in `after`
    ending past that position. The window holds 4 x (longest stop string) + 8 tokens: every Phi token decodes to at
    least a quarter of a character (byte fallback / byte-level: a character is at most 4 byte tokens), so the
    characters a match can reach are never those of the window's first few tokens, whose decoding a window cut can
    change (the leading space SentencePiece strips, a UTF-8 character cut in half).

    Deviation from transformers (which matches against each token's vocabulary string): text is matched as
    `tokenizer.decode` shows it. The one visible difference: when the window reaches the start of the row, the
    row's first token decodes without its leading space, so " Texas" does not match a row that is just ["▁Texas"]
    (generate's rows always start with the prompt). This check runs on the host, once per step.
    """

    def __init__(self, tokenizer: Decoder, stop_strings: str | list[str]) -> None:
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or any(not isinstance(s, str) or not s for s in strings):
            raise ValueError(f"`stop_strings` must be a non-empty string or list of non-empty strings, got "
                             f"{stop_strings!r}")
        if not callable(getattr(tokenizer, "decode", None)):
            raise ValueError(f"StopStringCriteria needs a tokenizer with decode(ids) -> str, got {type(tokenizer)}; "
                             "pass tokenizer= to generate()")
        self.tokenizer = tokenizer
        self.stop_strings = tuple(strings)
        self.window = 4 * max(len(s) for s in strings) + 8  # tokens; see the class docstring

    def row_matches(self, ids: list[int]) -> bool:
        """Whether the token ids of one row end by completing a stop string."""
        if not ids:
            return False
        tail = ids[-self.window:]
        before, after = self.tokenizer.decode(tail[:-1]), self.tokenizer.decode(tail)
        start = 0  # first character that the last token produced or changed
        for a, b in zip(before, after):
            if a != b:
                break
            start += 1
        return any(after.find(s, max(0, start - len(s) + 1)) != -1 for s in self.stop_strings)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = [self.row_matches(row) for row in input_ids[:, -self.window:].tolist()]  # only the window to host
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def build_stopping_criteria(generation_config: Any, tokenizer: Decoder | None = None, extra: list | None = None, *,
                            input_ids_length: int | None = None,
                            max_position_embeddings: int | None = None) -> StoppingCriteriaList:
    """The criteria `generate()` checks, in transformers 5.23's `_get_stopping_criteria` order: max length, max
    time, stop strings, eos; then `extra` merged as transformers merges (same type replaces, others appended).

    generation_config: a GenerationConfig whose `eos_token_id` already holds the merged eos ids (int or list).
    input_ids_length: prompt length; when given and `max_new_tokens` is set, max_length = it + max_new_tokens
        (otherwise `max_length` is used as it is, e.g. after generate resolved it).
    """
    gc = generation_config
    criteria = StoppingCriteriaList()
    max_length = getattr(gc, "max_length", None)
    max_new = getattr(gc, "max_new_tokens", None)
    if max_new is not None and input_ids_length is not None:
        max_length = input_ids_length + max_new
    if max_length is not None:
        criteria.append(MaxLengthCriteria(max_length, max_position_embeddings))
    if getattr(gc, "max_time", None) is not None:
        criteria.append(MaxTimeCriteria(gc.max_time))
    if getattr(gc, "stop_strings", None) is not None:
        if tokenizer is None:
            raise ValueError(f"stop_strings={gc.stop_strings!r} needs the tokenizer to read the generated text; "
                             "pass tokenizer=... to generate()")
        criteria.append(StopStringCriteria(tokenizer, gc.stop_strings))
    eos = _eos_list(gc)
    if eos:
        criteria.append(EosTokenCriteria(eos))
    return merge_processor_lists(criteria, list(extra) if extra else None)
