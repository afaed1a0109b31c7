"""One HTTP request's traffic with the engine: submit one engine request per prompt, bring each `StepOutput` from the
engine thread onto the event loop (`loop.call_soon_threadsafe`), collect the choices, and abort the engine
requests when the client goes away.

Choice indices are global over the HTTP request: prompt p's choice i is index `p * n + i` (OpenAI's order for a
list of prompts)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from ..engine.outputs import StepOutput, TokenLogprob
from ..engine.params import SamplingParams
from .errors import APIError, from_engine
from .metrics import ServerMetrics

DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks whether its client is still there


class ClientGone(Exception):
    """The client disconnected; its engine requests were aborted."""


@dataclass
class Choice:
    """What one choice produced so far."""

    index: int
    prompt: int  # which prompt of the request it continues
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None
    last_time: float | None = None


class RequestRun:
    """The engine requests of one HTTP request (one per prompt) and the queue their outputs arrive on."""

    def __init__(self, engine: Any, metrics: ServerMetrics | None, kind: str) -> None:
        self.engine, self.metrics = engine, metrics
        self.id = f"{kind}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.arrival = time.monotonic()
        self.queue: asyncio.Queue[tuple[int, StepOutput]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.engine_ids: list[str] = []
        self.prompt_tokens: list[int] = []  # per prompt
        self.cached_tokens: list[int] = []
        self.choices: list[Choice] = []
        self.n = 1
        self.unfinished = 0
        self.first_token_seen = False
        self.done = False

    def _callback(self, prompt: int) -> Callable[[StepOutput], None]:
        def deliver(out: StepOutput) -> None:  # runs on the engine thread
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (prompt, out))
            except RuntimeError:  # the event loop is closed (shutdown): nobody is waiting any more
                pass
        return deliver

    def submit(self, prompts: Sequence[list[int]], params: SamplingParams, prompt_param: str = "prompt") -> None:
        """Queue every prompt; a refusal (bad value, context, full queue, draining) aborts the ones already queued
        and raises the matching APIError."""
        self.n = params.n
        self.choices = [Choice(index=p * params.n + i, prompt=p) for p in range(len(prompts)) for i in range(params.n)]
        self.prompt_tokens = [len(ids) for ids in prompts]
        self.cached_tokens = [0] * len(prompts)
        for p, ids in enumerate(prompts):
            request_id = f"{self.id}-{p}"
            try:
                self.engine.submit(list(ids), params, self._callback(p), request_id=request_id)
            except Exception as e:
                self.abort()
                raise from_engine(e, prompt_param) from None
            self.engine_ids.append(request_id)
        self.unfinished = len(self.choices)
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(self.prompt_tokens))

    def abort(self) -> None:
        """Abort every engine request still running (the client left, or a later prompt was refused)."""
        if not self.done:
            self.done = True
            for request_id in self.engine_ids:
                self.engine.abort(request_id)

    def _record(self, prompt: int, out: StepOutput) -> Choice:
        choice = self.choices[prompt * self.n + out.index]
        choice.text += out.text
        choice.token_ids += out.token_ids
        if out.logprobs:
            choice.logprobs += out.logprobs
        self.prompt_tokens[prompt] = out.prompt_tokens or self.prompt_tokens[prompt]
        self.cached_tokens[prompt] = max(self.cached_tokens[prompt], out.cached_tokens)
        now = out.time or time.monotonic()
        if self.metrics is not None and out.token_ids:
            self.metrics.generation_tokens.inc(len(out.token_ids))
            if not self.first_token_seen:
                self.metrics.time_to_first_token.observe(max(0.0, now - self.arrival))
            elif choice.last_time is not None:
                gap = max(0.0, now - choice.last_time) / len(out.token_ids)
                for _ in out.token_ids:
                    self.metrics.inter_token_latency.observe(gap)
        if out.token_ids:
            self.first_token_seen = True
            choice.last_time = now
        if out.finish_reason is not None and choice.finish_reason is None:
            choice.finish_reason, choice.stop_reason, choice.error = out.finish_reason, out.stop_reason, out.error
            self.unfinished -= 1
            if self.metrics is not None and out.finish_reason not in ("abort", "error"):
                self.metrics.request_success.labels(finished_reason=out.finish_reason).inc()
            if self.unfinished == 0:
                self.done = True
                if self.metrics is not None:
                    self.metrics.e2e_latency.observe(max(0.0, time.monotonic() - self.arrival))
        return choice

    async def outputs(self, is_disconnected: Callable[[], Any] | None = None) -> AsyncIterator[tuple[Choice, StepOutput]]:
        """Each output as it comes, with its choice updated, until every choice has finished. With
        `is_disconnected` (an async callable), the client is polled every DISCONNECT_POLL_S while waiting; when it
        is gone the engine requests are aborted and ClientGone is raised."""
        next_poll = time.monotonic() + DISCONNECT_POLL_S
        try:
            while self.unfinished > 0:
                if is_disconnected is None:
                    prompt, out = await self.queue.get()
                else:
                    if time.monotonic() >= next_poll:  # outputs may come faster than the poll: check on time
                        next_poll = time.monotonic() + DISCONNECT_POLL_S
                        if await is_disconnected():
                            self.abort()
                            raise ClientGone()
                    try:
                        prompt, out = await asyncio.wait_for(self.queue.get(), max(0.0, next_poll - time.monotonic()))
                    except asyncio.TimeoutError:
                        continue
                yield self._record(prompt, out), out
        finally:
            if self.unfinished > 0:  # cancelled (client gone, send failed) or abandoned: free the engine's rows
                self.abort()

    async def collect(self, is_disconnected: Callable[[], Any]) -> list[Choice]:
        """Every choice, finished (non-streaming requests)."""
        async for _ in self.outputs(is_disconnected):
            pass
        for choice in self.choices:
            failed(choice)
        return self.choices

    def usage(self) -> dict[str, Any]:
        prompt = sum(self.prompt_tokens)
        completion = sum(len(c.token_ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)}}


def failed(choice: Choice) -> None:
    """Raise the APIError of a choice that ended in "error" (500, this request only) or "abort" (the server aborted
    it while the client was still there: it is shutting down). "abort" never reaches a client as a finish_reason."""
    if choice.finish_reason == "error":
        raise APIError(500, f"the engine failed on this request: {choice.error or 'unknown error'}; the server is "
                            f"still running, retry the request", code="server_error")
    if choice.finish_reason == "abort":
        raise APIError(503, "the request was aborted by the server (shutting down); retry it",
                       code="server_shutting_down")
