"""The serving engine (no HTTP): continuous batching over KV slots, per-request sampling, `Engine.generate`."""

from .engine import Engine
from .outputs import ChoiceResult, RequestResult, StepOutput, TokenLogprob
from .params import (ContextLengthError, EngineArgumentError, EngineClosedError, QueueFullError, SamplingParams)
from .stats import EngineStats

__all__ = ["Engine", "SamplingParams", "StepOutput", "TokenLogprob", "RequestResult", "ChoiceResult", "EngineStats",
           "EngineArgumentError", "ContextLengthError", "QueueFullError", "EngineClosedError"]
