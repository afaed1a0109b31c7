"""What the engine hands back: a `StepOutput` per choice per step (streamed through the request's callback) and, for
the offline `Engine.generate`, a `RequestResult` per prompt."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float  # log-softmax of the model's raw logits at that step
    top: list[tuple[int, float]]  # the k most likely (id, logprob), best first; k = SamplingParams.logprobs


@dataclass
class StepOutput:
    """New output of one choice since its last StepOutput. `finish_reason` is set on the choice's last output:
    "stop" (an eos / stop id or a stop string), "length" (max_tokens or the context), "abort", or "error"."""

    request_id: str
    index: int  # choice index, 0 .. n-1
    token_ids: list[int]  # new tokens (a stop string's tokens included; its text is not)
    text: str  # new final text: held back while it could still be the start of a stop string
    logprobs: list[TokenLogprob] | None = None  # one per new token when asked
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop id that ended it
    error: str | None = None  # with finish_reason "error": what failed (this request only)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    time: float = 0.0  # time.monotonic() when produced

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class ChoiceResult:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class RequestResult:
    """One prompt of `Engine.generate`: its choices in index order (n of them)."""

    request_id: str
    prompt_token_ids: list[int]
    choices: list[ChoiceResult] = field(default_factory=list)
