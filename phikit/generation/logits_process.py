"""Logits processors: the score edits `generate()` applies before picking the next token.

Every class keeps transformers' name, constructor arguments and call signature `processor(input_ids [B, L],
scores [B, V]) -> scores [B, V]` (B = rows, i.e. batch x beams; L = tokens so far; V = the model's output
vocabulary), so transformers-style user processors mix with ours. The math lives in pure functions (`top_k_filter`,
...) that the classes wrap; results equal transformers 5.23's bit for bit (same torch ops), except where noted.
`build_logits_processors` builds the list from a `GenerationConfig` in transformers' order.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

NEG_INF = -float("inf")

# Options transformers turns into processors that phikit does not implement. Set, they would be silently ignored,
# so the builder refuses them instead; each maps to the value(s) that mean "off".
_UNSUPPORTED_OPTIONS: dict[str, tuple[Any, ...]] = {
    "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,), "top_h": (None,), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "watermarking_config": (None,), "renormalize_logits": (None, False),
}


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: Any, interval: str, fix: str = "") -> float:
    """`value` as a float if it lies in `interval`, written like "(0, 1]" or "(0, inf)"; else a ValueError."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if interval[0] == "(" else value >= low)
    if not (ok and (value < high if interval[-1] == ")" else value <= high)):
        raise ValueError(f"`{name}` must be a number in {interval}, got {value!r}{fix}")
    return float(value)


def _id_tensor(name: str, ids: int | Iterable[int] | torch.Tensor | None, allow_empty: bool = False) -> torch.Tensor:
    """A 1-D LongTensor of token ids from an int, a list or a tensor."""
    if ids is None:
        raise ValueError(f"`{name}` is None; pass the id or ids of the tokens (e.g. generation_config.eos_token_id)")
    t = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids] if isinstance(ids, int) else list(ids))
    t = t.reshape(-1).long()
    if (t.numel() == 0 and not allow_empty) or bool((t < 0).any()):
        raise ValueError(f"`{name}` must hold one or more non-negative token ids, got {ids!r}")
    return t


def _vocab_mask(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """BoolTensor [V], True at `ids`; ids >= V are ignored (the model cannot emit them anyway)."""
    return torch.isin(torch.arange(scores.shape[-1], device=scores.device), ids.to(scores.device))


def top_k_filter(scores: torch.Tensor, k: int, filter_value: float = NEG_INF) -> torch.Tensor:
    """Keep the k highest scores per row, and every score tied with the k-th (ties are never broken arbitrarily).

    scores: [B, V] -> [B, V] with the rest set to `filter_value`."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]  # [B, 1]
    return scores.masked_fill(scores < kth, filter_value)


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1,
                 filter_value: float = NEG_INF) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens that together hold at least `top_p` of the probability.
    Works from the least likely end: a token goes when the mass of it and everything below it is <= 1 - top_p, so
    top_p=1.0 removes only tokens of probability exactly 0.

    scores: [B, V] -> [B, V]."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -min_tokens_to_keep:] = False
    remove = remove.scatter(1, sorted_indices, remove)  # back to vocabulary order
    return scores.masked_fill(remove, filter_value)


def min_p_filter(scores: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1,
                 filter_value: float = NEG_INF) -> torch.Tensor:
    """Keep tokens whose probability is at least `min_p` times the top token's probability.

    scores: [B, V] -> [B, V]. Compared in probability space (not log space) so the boundary equals transformers'."""
    probs = torch.softmax(scores, dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    remove.scatter_(-1, keep, False)
    return scores.masked_fill(remove, filter_value)


def typical_filter(scores: torch.Tensor, mass: float, min_tokens_to_keep: int = 1,
                   filter_value: float = NEG_INF) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy until `mass` is covered.

    scores: [B, V] -> [B, V]."""
    logp = F.log_softmax(scores, dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # [B, 1]; nansum: 0 * -inf at filtered tokens
    shifted = torch.abs(-logp - entropy)
    sorted_shifted, sorted_indices = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=sorted_shifted.shape[-1] - 1)  # [B]
    remove = sorted_shifted > sorted_shifted.gather(1, last.view(-1, 1))
    remove[..., :min_tokens_to_keep] = False
    remove = remove.scatter(1, sorted_indices, remove)
    return scores.masked_fill(remove, filter_value)


def repetition_penalty(input_ids: torch.Tensor, scores: torch.Tensor, penalty: float,
                       ignore_before: int | torch.Tensor | None = None) -> torch.Tensor:
    """CTRL's penalty on every token already in `input_ids`: positive scores / penalty, negative * penalty.

    input_ids: [B, L]; scores: [B, V] -> [B, V]. `ignore_before` (int, or LongTensor [B]) skips that many leading
    positions per row: generate passes the left-padding lengths so pad tokens are not penalized."""
    vocab = scores.shape[-1]
    if isinstance(ignore_before, int):
        input_ids = input_ids[:, ignore_before:]
    elif isinstance(ignore_before, torch.Tensor):
        if ignore_before.shape[0] != input_ids.shape[0]:
            raise ValueError(f"prompt_ignore_length has {ignore_before.shape[0]} rows, input_ids {input_ids.shape[0]}")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        input_ids = input_ids.masked_fill(positions[None, :] < ignore_before.to(input_ids.device)[:, None], vocab)
    # Ids >= V (ignored positions, or an embedding larger than the head) go to a spare column dropped at the end.
    ids = input_ids.clamp(max=vocab)
    padded = F.pad(scores, (0, 1))  # [B, V + 1]
    picked = padded.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return padded.scatter(1, ids, picked)[..., :vocab]


def banned_ngram_mask(input_ids: torch.Tensor, ngram_size: int, vocab_size: int) -> torch.Tensor:
    """BoolTensor [B, V]: the tokens that would repeat an n-gram already in `input_ids` [B, L] (prompt included).

    Only n-grams starting with the current (n-1)-token suffix can be completed, so that suffix is matched against
    every window; a match bans the window's last token."""
    length = input_ids.shape[-1]
    banned = torch.zeros((input_ids.shape[0], vocab_size + 1), dtype=torch.bool, device=input_ids.device)
    if length < ngram_size:
        return banned[:, :vocab_size]
    suffix = input_ids[:, length + 1 - ngram_size:]  # [B, n-1]
    windows = input_ids.unfold(dimension=1, size=ngram_size, step=1)  # [B, L-n+1, n]
    matches = (windows[..., :-1] == suffix.unsqueeze(1)).all(dim=-1)  # [B, L-n+1]
    # Non-matching windows (and ids >= V) write to the spare column, so they cannot un-ban anything.
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size), True)
    return banned[:, :vocab_size]


class LogitsProcessor:
    """Base class: `__call__(input_ids: LongTensor [B, L], scores: FloatTensor [B, V]) -> FloatTensor [B, V]`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class LogitsProcessorList(list):
    """Applies its processors in order. Processors whose `__call__` takes more than (input_ids, scores) receive the
    extra keyword arguments given to the list, as in transformers."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.FloatTensor:
        for processor in self:
            extra = list(inspect.signature(processor.__call__).parameters.values())[2:]
            missing = [p.name for p in extra if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                       and p.name not in kwargs]
            if missing:
                raise ValueError(f"{type(processor).__name__} needs the keyword arguments {missing}; pass them to the "
                                 "LogitsProcessorList call")
            scores = processor(input_ids, scores, **kwargs) if extra else processor(input_ids, scores)
        return scores


def merge_processor_lists(defaults: list, custom: list | None) -> list:
    """transformers' merge rule: a custom object of exactly a default's type replaces it in place; the other custom
    objects follow, in their order. Returns a list of the same type as `defaults`."""
    if not custom:
        return defaults
    out = type(defaults)()
    for default in defaults:
        replacement = next((c for c in custom if type(c) is type(default)), None)
        if replacement is not None:
            warnings.warn(f"the {type(default).__name__} you passed replaces the one built from the generation "
                          "config; unset that option to silence this", UserWarning, stacklevel=3)
        out.append(default if replacement is None else replacement)
    out.extend(c for c in custom if c not in out)
    return out


class TemperatureLogitsWarper(LogitsProcessor):
    """scores / temperature. Accepts ints too (transformers requires a float; 2 and 2.0 mean the same)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = _check_float("temperature", temperature, "(0, inf)",
                                        "; for greedy decoding set do_sample=False instead of temperature=0")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keeps the `max(top_k, min_tokens_to_keep)` best tokens per row (plus ties with the last one)."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1) -> None:
        _check_int("top_k", top_k, 1)
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return top_k_filter(scores, self.top_k, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling, top_p in (0, 1] (transformers also accepts 0, which keeps only min_tokens_to_keep)."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1) -> None:
        self.top_p = _check_float("top_p", top_p, "(0, 1]")
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return top_p_filter(scores, self.top_p, self.min_tokens_to_keep, self.filter_value)


class MinPLogitsWarper(LogitsProcessor):
    """Min-p sampling, min_p in [0, 1]: drop tokens less likely than min_p x the top token."""

    def __init__(self, min_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1) -> None:
        self.min_p = _check_float("min_p", min_p, "[0, 1]")
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return min_p_filter(scores, self.min_p, self.min_tokens_to_keep, self.filter_value)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling, mass in (0, 1)."""

    def __init__(self, mass: float = 0.9, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1) -> None:
        self.mass = _check_float("typical_p (mass)", mass, "(0, 1)", "; typical_p=1.0 in a config switches it off")
        self.min_tokens_to_keep = _check_int("min_tokens_to_keep", min_tokens_to_keep, 1)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return typical_filter(scores, self.mass, self.min_tokens_to_keep, self.filter_value)


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Penalizes tokens already present (see `repetition_penalty`); penalty > 0, 1.0 = off, > 1 discourages."""

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | None = None) -> None:
        self.penalty = _check_float("penalty", penalty, "(0, inf)")
        if isinstance(prompt_ignore_length, int):
            _check_int("prompt_ignore_length", prompt_ignore_length, 0)
        elif isinstance(prompt_ignore_length, torch.Tensor) and prompt_ignore_length.dim() != 1:
            raise ValueError(f"`prompt_ignore_length` must be an int or a 1-D tensor [B], got shape "
                             f"{tuple(prompt_ignore_length.shape)}")
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if isinstance(self.prompt_ignore_length, torch.Tensor):
            self.prompt_ignore_length = self.prompt_ignore_length.to(input_ids.device)
        return repetition_penalty(input_ids, scores, self.penalty, self.prompt_ignore_length)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Bans any token that would make an n-gram (prompt included) occur twice."""

    def __init__(self, ngram_size: int) -> None:
        self.ngram_size = _check_int("ngram_size", ngram_size, 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] < self.ngram_size:  # no complete n-gram yet
            return scores
        return scores.masked_fill(banned_ngram_mask(input_ids, self.ngram_size, scores.shape[-1]), NEG_INF)


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Bans token sequences: a one-token sequence is always banned; a longer one bans its last token whenever the
    row ends with the rest. One-token sequences equal to an eos id are dropped (as transformers does), so that
    eos stays reachable.

    Deviation: banned scores are set to -inf, where transformers adds -inf (the same except for +inf/NaN scores)."""

    def __init__(self, bad_words_ids: list[list[int]],
                 eos_token_id: int | list[int] | torch.Tensor | None = None) -> None:
        if not isinstance(bad_words_ids, list) or not bad_words_ids or any(
                not isinstance(seq, list) or not seq or any(isinstance(t, bool) or not isinstance(t, int) or t < 0
                                                            for t in seq) for seq in bad_words_ids):
            raise ValueError(f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids, got "
                             f"{bad_words_ids!r}; e.g. tokenizer(['bad word'], add_special_tokens=False).input_ids")
        self.bad_words_ids = bad_words_ids
        eos = [] if eos_token_id is None else _id_tensor("eos_token_id", eos_token_id).tolist()
        kept = {tuple(seq) for seq in bad_words_ids if not (len(seq) == 1 and seq[0] in eos)}
        self._single = sorted(seq[0] for seq in kept if len(seq) == 1)
        # one group per length, matched at once: prefixes LongTensor [G, P], last tokens LongTensor [G]
        groups = [sorted(s for s in kept if len(s) == n) for n in sorted({len(s) for s in kept if len(s) > 1})]
        self._groups = [(torch.tensor([s[:-1] for s in g]), torch.tensor([s[-1] for s in g])) for g in groups]
        self._max_id = max((t for seq in kept for t in seq), default=-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, vocab = scores.shape
        if self._max_id >= vocab:
            raise ValueError(f"bad_words_ids holds token id {self._max_id} but the model's vocabulary has {vocab} "
                             "ids; tokenize the bad words with this model's tokenizer")
        banned = torch.zeros((batch, vocab + 1), dtype=torch.bool, device=scores.device)  # spare column V
        banned[:, self._single] = True
        if self._groups and self._groups[0][0].device != input_ids.device:  # move once, not at every step
            self._groups = [(p.to(input_ids.device), t.to(input_ids.device)) for p, t in self._groups]
        for prefixes, last in self._groups:
            p = prefixes.shape[1]
            if p > input_ids.shape[1]:  # the prefix is longer than the context
                continue
            match = (input_ids[:, None, -p:] == prefixes).all(dim=-1)  # [B, G]
            banned.scatter_(1, torch.where(match, last, vocab), True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Bans eos while the whole row (prompt included) is shorter than `min_length`."""

    def __init__(self, min_length: int, eos_token_id: int | list[int] | torch.Tensor, device: str = "cpu") -> None:
        self.min_length = _check_int("min_length", min_length, 0)
        self.eos_token_id = _id_tensor("eos_token_id", eos_token_id).to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] >= self.min_length:
            return scores
        self.eos_token_id = self.eos_token_id.to(scores.device)  # once: later calls are no-ops
        return torch.where(_vocab_mask(self.eos_token_id, scores), NEG_INF, scores)


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Bans eos until `min_new_tokens` tokens follow the prompt (`prompt_length_to_skip` tokens)."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int,
                 eos_token_id: int | list[int] | torch.Tensor, device: str = "cpu") -> None:
        self.prompt_length_to_skip = _check_int("prompt_length_to_skip", prompt_length_to_skip, 0)
        self.min_new_tokens = _check_int("min_new_tokens", min_new_tokens, 0)
        self.eos_token_id = _id_tensor("eos_token_id", eos_token_id).to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores
        self.eos_token_id = self.eos_token_id.to(scores.device)
        return torch.where(_vocab_mask(self.eos_token_id, scores), NEG_INF, scores)


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Bans the given tokens at every step."""

    def __init__(self, suppress_tokens: Iterable[int], device: str = "cpu") -> None:
        self.suppress_tokens = _id_tensor("suppress_tokens", list(suppress_tokens), True).to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.suppress_tokens = self.suppress_tokens.to(scores.device)
        return torch.where(_vocab_mask(self.suppress_tokens, scores), NEG_INF, scores)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Bans the given tokens at the step where the row has exactly `begin_index` tokens (the first new token)."""

    def __init__(self, begin_suppress_tokens: Iterable[int], begin_index: int, device: str = "cpu") -> None:
        self.begin_suppress_tokens = _id_tensor("begin_suppress_tokens", list(begin_suppress_tokens), True).to(device)
        self.begin_index = _check_int("begin_index", begin_index, 0)

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = _check_int("begin_index", begin_index, 0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        self.begin_suppress_tokens = self.begin_suppress_tokens.to(scores.device)
        return torch.where(_vocab_mask(self.begin_suppress_tokens, scores), NEG_INF, scores)


class PrefixConstrainedLogitsProcessor(LogitsProcessor):
    """Allows only `prefix_allowed_tokens_fn(batch_id, row_ids [L]) -> list[int]` per row. Rows are grouped
    `num_beams` per batch entry. If every beam of an entry has only -inf left among its allowed tokens, the allowed
    tokens get score 0 so the constraint still holds (as transformers)."""

    def __init__(self, prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]], num_beams: int) -> None:
        if not callable(prefix_allowed_tokens_fn):
            raise ValueError(f"`prefix_allowed_tokens_fn` must be callable(batch_id, input_ids) -> list[int], got "
                             f"{prefix_allowed_tokens_fn!r}")
        self._prefix_allowed_tokens_fn = prefix_allowed_tokens_fn
        self._num_beams = _check_int("num_beams", num_beams, 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] % self._num_beams:
            raise ValueError(f"{input_ids.shape[0]} rows are not a whole number of batch entries of num_beams="
                             f"{self._num_beams} rows each")
        mask = torch.full_like(scores, NEG_INF)
        batch = input_ids.shape[0] // self._num_beams
        for batch_id in range(batch):
            for beam in range(self._num_beams):
                row = batch_id * self._num_beams + beam
                allowed = self._prefix_allowed_tokens_fn(batch_id, input_ids[row])
                if len(allowed) == 0:
                    raise ValueError(f"prefix_allowed_tokens_fn returned no tokens for batch id {batch_id} (row "
                                     f"{row}); the constraint cannot be satisfied, return at least one token id")
                mask[row, allowed] = 0
        out = scores + mask
        dead = out.amax(dim=-1).isneginf().view(batch, -1).all(dim=-1, keepdim=True)  # [batch, 1]
        return torch.where(dead.repeat_interleave(self._num_beams, dim=0), mask, out)


class VocabLimitLogitsProcessor(LogitsProcessor):
    """phikit only: bans every id >= `vocab_size` (the tokenizer's size). Phi's embedding is padded past the
    vocabulary (51200 rows for 50295 tokens, 32064 for 32011), and the padding rows must never be emitted."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = _check_int("vocab_size", vocab_size, 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] <= self.vocab_size:
            return scores
        return scores.masked_fill(torch.arange(scores.shape[-1], device=scores.device) >= self.vocab_size, NEG_INF)


def _eos_list(generation_config: Any) -> list[int] | None:
    """The config's eos ids as a list; None when there are none (an empty list counts as none)."""
    eos = getattr(generation_config, "eos_token_id", None)
    eos = eos.tolist() if isinstance(eos, torch.Tensor) else eos
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return [int(i) for i in eos] or None


def build_logits_processors(generation_config: Any, input_ids_length: int, vocab_limit: int | None = None,
                            prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
                            extra: list | None = None, *,
                            attention_mask: torch.Tensor | None = None) -> LogitsProcessorList:
    """The processors `generate()` applies, in transformers 5.23's `_get_logits_processor` order, vocab limit first.

    generation_config: a GenerationConfig whose `eos_token_id` already holds the merged eos ids (int or list).
    input_ids_length: prompt length L0 (for min_new_tokens and begin_suppress_tokens).
    vocab_limit: the tokenizer's size; ids >= it are banned first (None: no limit).
    extra: user processors, merged as transformers merges them (same type replaces; the rest go after the
        processors and before the sampling warpers).
    attention_mask: LongTensor [B, L0]; its left-padding lengths are skipped by the repetition penalty.
    """
    gc = generation_config

    def opt(name: str) -> Any:  # begin_suppress_tokens, max_time, ... may be absent from a config
        return getattr(gc, name, None)

    for name, off in _UNSUPPORTED_OPTIONS.items():
        if not any(opt(name) is o or opt(name) == o for o in off):
            raise ValueError(f"generation option {name}={opt(name)!r} is not implemented by phikit; unset it, or "
                             "pass your own processor with logits_processor=[...]")
    eos = _eos_list(gc)
    processors = LogitsProcessorList()
    if vocab_limit is not None:
        processors.append(VocabLimitLogitsProcessor(vocab_limit))
    # guidance_scale (transformers' first processor) is done by the decode loop with a second forward pass.
    if opt("repetition_penalty") is not None and opt("repetition_penalty") != 1.0:
        pads = (attention_mask != 0).int().argmax(dim=1) if attention_mask is not None else None
        processors.append(RepetitionPenaltyLogitsProcessor(gc.repetition_penalty, prompt_ignore_length=pads))
    if opt("no_repeat_ngram_size") is not None and gc.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(gc.no_repeat_ngram_size))
    if opt("bad_words_ids") is not None:
        processors.append(NoBadWordsLogitsProcessor(gc.bad_words_ids, eos))
    if opt("min_length") is not None and eos is not None and gc.min_length > 0:
        processors.append(MinLengthLogitsProcessor(gc.min_length, eos))
    if opt("min_new_tokens") is not None and eos is not None and gc.min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(input_ids_length, gc.min_new_tokens, eos))
    if prefix_allowed_tokens_fn is not None:
        processors.append(PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn, opt("num_beams") or 1))
    if opt("suppress_tokens") is not None:
        processors.append(SuppressTokensLogitsProcessor(gc.suppress_tokens))
    if opt("begin_suppress_tokens") is not None:
        # transformers shifts begin_index by one for forced_bos_token_id, which phikit refuses above.
        processors.append(SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, input_ids_length))
    processors = merge_processor_lists(processors, list(extra) if extra else None)

    if opt("do_sample"):
        # Beam search keeps one candidate beyond all the eos ids, so a beam can always continue.
        keep = (len(eos) + 1 if eos is not None else 2) if (opt("num_beams") or 1) > 1 else 1
        if opt("temperature") is not None and gc.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(gc.temperature))
        if opt("top_k") is not None and gc.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=gc.top_k, min_tokens_to_keep=keep))
        if opt("top_p") is not None and gc.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=gc.top_p, min_tokens_to_keep=keep))
        if opt("min_p") is not None:  # after temperature, as llama.cpp does
            processors.append(MinPLogitsWarper(min_p=gc.min_p, min_tokens_to_keep=keep))
        if opt("typical_p") is not None and gc.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(mass=gc.typical_p, min_tokens_to_keep=keep))
    return processors
