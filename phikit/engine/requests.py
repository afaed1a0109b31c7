"""A request inside the engine: its prompt, parameters, choices (one slot each once admitted) and their text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..generation.streamers import IncrementalDetokenizer
from .outputs import StepOutput, TokenLogprob
from .params import SamplingParams
from .sampling import RowSampler


class StopText:
    """Incremental text of one choice with stop strings: text that could still be the start of a stop string is
    held back; a stop string found ends the choice, and neither it nor anything after it is shown."""

    def __init__(self, tokenizer: Any, stops: list[str], skip_special_tokens: bool) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stops = stops
        self.pending = ""  # decoded but not yet shown

    def push(self, token: int) -> tuple[str, str | None]:
        """-> (text now final, the stop string found or None)."""
        self.pending += self.detok.push([token])
        return self._release(final=False)

    def finish(self) -> str:
        self.pending += self.detok.flush()
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, str | None]:
        text = self.pending
        found, at = None, len(text)
        for stop in self.stops:
            i = text.find(stop)
            if i != -1 and i < at:
                found, at = stop, i
        if found is not None:
            self.pending = ""
            return text[:at], found
        hold = 0 if final else max((n for stop in self.stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                                    if text.endswith(stop[:n])), default=0)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], None


@dataclass
class Choice:
    request: "Request"
    index: int
    sampler: RowSampler
    text: StopText | None
    slot: int | None = None
    generated: list[int] = field(default_factory=list)
    fed: int = 0  # generated tokens already in the slot's cache
    finish_reason: str | None = None

    @property
    def next_input(self) -> int:
        return self.generated[-1]


@dataclass
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    callback: Callable[[StepOutput], None]
    max_tokens: int
    deterministic: bool
    pinned_long: bool  # the LongRoPE regime its whole prompt asks for, fixed at admission
    choices: list[Choice] = field(default_factory=list)
    prefilled: int = 0  # prompt positions in choice 0's slot
    cached_tokens: int = 0  # of them, taken from the prefix cache

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def output(self, choice: Choice, tokens: list[int], text: str, logprobs: list[TokenLogprob] | None,
               finish_reason: str | None = None, stop_reason: str | int | None = None,
               error: str | None = None) -> StepOutput:
        return StepOutput(self.id, choice.index, tokens, text, logprobs, finish_reason, stop_reason, error,
                          prompt_tokens=len(self.prompt), cached_tokens=self.cached_tokens, time=time.monotonic())
