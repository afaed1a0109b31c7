"""What a request asks of the engine: `SamplingParams`, checked once before the request is queued.

Names and meanings follow OpenAI's API (temperature, top_p, presence / frequency penalties, logit_bias, logprobs)
and vLLM's extensions (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos), so the server maps request
fields one to one. A bad value raises `EngineArgumentError`, which names the field (`param`), the value, the limit and
the fix; the server turns it into a 400 with that `param`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16


class EngineArgumentError(ValueError):
    """A request value the engine cannot take; `param` names the field."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthError(EngineArgumentError):
    """Prompt + max tokens do not fit the context (OpenAI's `context_length_exceeded`)."""

    def __init__(self, prompt_tokens: int, max_tokens: int | None, context: int, param: str = "max_tokens") -> None:
        if max_tokens is None or prompt_tokens >= context:
            message = (f"This model's maximum context length is {context} tokens, but the prompt has {prompt_tokens} "
                       f"tokens; shorten the prompt (the server's --ctx-size sets the context)")
            param = "messages" if param == "messages" else param
        else:
            message = (f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                       f"completion). Please reduce the length of the messages or completion.")
        super().__init__(param, message, code="context_length_exceeded")
        self.prompt_tokens, self.max_tokens, self.context = prompt_tokens, max_tokens, context


class QueueFullError(RuntimeError):
    """The waiting queue holds `max_queue` requests already (the server answers 429 with Retry-After)."""


class EngineClosedError(RuntimeError):
    """The engine is draining or stopped and admits nothing new (the server answers 503)."""


LogitsProcessor = Callable[[Any, Any], Any]  # (input_ids [1, L], scores [1, V]) -> scores [1, V], transformers' form


@dataclass
class SamplingParams:
    """One request's decoding settings. Defaults are OpenAI's (temperature 1, top_p 1, no penalties)."""

    max_tokens: int | None = None  # None: the rest of the context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    n: int = 1
    stop: Sequence[str] = ()  # strings, excluded from the text
    stop_token_ids: Sequence[int] = ()  # extra stop ids beside the model's merged eos ids
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0  # OpenAI: logit -= (count > 0) * presence + count * frequency, generated tokens
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # transformers / vLLM: over prompt and generated tokens
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's and the k most likely
    skip_special_tokens: bool = True
    deterministic: bool | None = None  # None: on for greedy requests (batch invariance; see docs)
    processors: Sequence[LogitsProcessor] = field(default_factory=tuple)  # library API only
    grammar: Any = None  # a phikit.structured.Grammar: every choice constrained to it (needs the engine's tokenizer)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_updates(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)

    def check(self, vocab_size: int, max_parallel: int | None = None) -> "SamplingParams":
        """Raise EngineArgumentError for the first bad field; return self."""
        _number("temperature", self.temperature, 0.0, 2.0, "0 is greedy, 1 samples from the model's distribution")
        _number("top_p", self.top_p, 0.0, 1.0, "1 keeps every token", open_low=True)
        _number("min_p", self.min_p, 0.0, 1.0, "0 turns it off")
        _number("presence_penalty", self.presence_penalty, -2.0, 2.0, "OpenAI's range")
        _number("frequency_penalty", self.frequency_penalty, -2.0, 2.0, "OpenAI's range")
        _number("repetition_penalty", self.repetition_penalty, 0.0, math.inf, "1 turns it off", open_low=True)
        _integer("top_k", self.top_k, -1, None, "0 or -1 turns it off")
        _integer("n", self.n, 1, max_parallel, "the server's --parallel bounds it")
        _integer("min_tokens", self.min_tokens, 0, None, "0 turns it off")
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, 1, None, "leave it unset for the rest of the context")
        if self.seed is not None:
            _integer("seed", self.seed, -(2**63), 2**63 - 1, "any 64-bit integer")
        if self.logprobs is not None:
            _integer("top_logprobs", self.logprobs, 0, MAX_LOGPROBS, f"at most {MAX_LOGPROBS}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise EngineArgumentError("stop", f"stop must be a list of strings, got {self.stop!r}")
        if len(self.stop) > MAX_STOP_STRINGS or any(s == "" for s in self.stop):
            raise EngineArgumentError("stop", f"stop takes 1 to {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")
        for i in self.stop_token_ids:
            _token_id("stop_token_ids", i, vocab_size)
        for key, value in (self.logit_bias or {}).items():
            _token_id("logit_bias", key, vocab_size)
            _number("logit_bias", value, -100.0, 100.0, f"token {key}: OpenAI's range")
        if self.grammar is not None:
            from ..structured import Grammar
            param = getattr(self.grammar, "param", None) or "grammar"
            if not isinstance(self.grammar, Grammar):
                raise EngineArgumentError(param, f"grammar must be a phikit.structured.Grammar, got "
                                                 f"{type(self.grammar).__name__}")
            if self.ignore_eos:
                raise EngineArgumentError("ignore_eos", "ignore_eos cannot be combined with a grammar: a complete "
                                                        "grammar allows only the stop ids; unset one of them")
        if not all(callable(p) for p in self.processors):
            raise EngineArgumentError("processors", "processors must be callables (input_ids, scores) -> scores")
        return self


def _number(name: str, value: Any, low: float, high: float, fix: str, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineArgumentError(name, f"{name} must be a finite number, got {value!r} ({fix})")
    if value < low or value > high or (open_low and value == low):
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise EngineArgumentError(name, f"{name}={value} is outside {bound.replace('inf', 'infinity')} ({fix})")


def _integer(name: str, value: Any, low: int, high: int | None, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineArgumentError(name, f"{name} must be an integer, got {value!r} ({fix})")
    if value < low or (high is not None and value > high):
        limit = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise EngineArgumentError(name, f"{name}={value} must be {limit} ({fix})")


def _token_id(name: str, value: Any, vocab_size: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise EngineArgumentError(name, f"{name} names token id {value!r}, but this model's ids are 0 to "
                                        f"{vocab_size - 1}")
