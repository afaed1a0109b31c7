"""Request fields -> `SamplingParams`, one to one. Ranges are checked by the engine (`SamplingParams.check`) when
the request is submitted, so every bad value is refused in one wording with `param` naming the field."""

from __future__ import annotations

from ..engine.params import SamplingParams
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, parse_logit_bias


def _or(value, default):
    return default if value is None else value


def sampling_params(req: SamplingFields) -> SamplingParams:
    """The engine's settings for one request (chat or completion)."""
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = _or(req.top_logprobs, 0) if req.logprobs else None
    else:
        assert isinstance(req, CompletionRequest)
        max_tokens, logprobs = req.max_tokens, req.logprobs
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_or(req.temperature, 1.0),
        top_p=_or(req.top_p, 1.0),
        top_k=_or(req.top_k, 0),
        min_p=_or(req.min_p, 0.0),
        seed=req.seed,
        n=_or(req.n, 1),
        stop=stop,
        stop_token_ids=list(req.stop_token_ids or ()),
        ignore_eos=bool(req.ignore_eos),
        min_tokens=_or(req.min_tokens, 0),
        presence_penalty=_or(req.presence_penalty, 0.0),
        frequency_penalty=_or(req.frequency_penalty, 0.0),
        repetition_penalty=_or(req.repetition_penalty, 1.0),
        logit_bias=parse_logit_bias(req.logit_bias),
        logprobs=logprobs,
        skip_special_tokens=_or(req.skip_special_tokens, True),
    )
