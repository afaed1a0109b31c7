"""The serving engine: continuous batching over a pool of KV slots, no HTTP in it.

    engine = Engine(model, tokenizer, parallel=4)
    results = engine.generate(["def f(x):", "class A:"], SamplingParams(temperature=0, max_tokens=32))   # offline
    engine.start(); engine.submit(ids, params, callback)   # online: the server's way; callback per StepOutput

One thread runs `step()` in a loop. Each step (1) ends aborted requests and frees their slots; (2) admits waiting
requests, oldest first, into free slots (a request with n choices takes n slots), reusing the longest cached
prefix of the same LongRoPE regime from any slot; (3) decodes one token for every running choice; (4) spends the
rest of the token budget (`max_num_batched_tokens`) on prefill chunks, oldest request first: the chunks of sampled
requests in one packed forward together with (3)'s batchable decode rows (`packing.py`), a deterministic request's
in a forward of its own; (5) samples each choice with its own processors and generator, hands each request its
outputs, and frees a slot the moment its choice ends.

Deterministic requests (by default the greedy ones) run every step alone, batch 1, as `model.generate()` runs
them: prefill in one forward when the prompt fits the budget (fixed-size chunks otherwise), decode through the
batch-1 step (the backend's fused step where it applies), and no prefix reuse (a reused prefix changes the
prefill's shapes, hence its rounding). So their tokens never depend on what runs beside them, and equal
`generate(do_sample=False)`. The cost: they are not batched with each other. Other requests decode together in one
ragged forward (the linears read each weight once for all rows; attention runs per row), or, in a step that also
prefills sampled requests, in the packed forward with those chunks.

A row's LongRoPE regime is fixed at admission from its whole prompt (`pinned_long`), so prefill chunks never split
factors; a row that grows past `original_max_position_embeddings` while generating runs that step alone, where the
model recomputes its cache in the long regime exactly as `generate()` does.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from typing import Callable, Sequence

import torch

from ..generation_config import merge_eos_ids
from ..ops.backends import decode_rows
from .mirror import OPERATIONS, STOP
from .packing import run_packed
from .outputs import ChoiceResult, RequestResult, StepOutput
from .params import (ContextLengthError, EngineArgumentError, EngineClosedError, QueueFullError, SamplingParams)
from .requests import Choice, Request, StopText
from .sampling import RowSampler
from .slots import SlotPool
from .stats import EngineStats


class Engine:
    def __init__(self, model, tokenizer=None, *, parallel: int = 4, ctx_size: int | None = None,
                 max_num_batched_tokens: int = 512, max_queue: int = 64, deterministic: bool = True,
                 prefix_cache: bool = True, eos_token_ids: list[int] | None = None, max_decode_rows: int | None = None,
                 mirror: Callable[[str, tuple], None] | None = None) -> None:
        """`mirror` (tensor parallelism, `mirror.py`): called with each pool or model operation before it runs, so
        worker ranks run the same step on their shards."""
        config = model.config
        limit = config.max_position_embeddings
        ctx_size = min(limit, 8192) if ctx_size is None else ctx_size
        for name, value, low, high in (("parallel", parallel, 1, 256), ("ctx_size", ctx_size, 2, limit),
                                       ("max_num_batched_tokens", max_num_batched_tokens, 1, None),
                                       ("max_queue", max_queue, 0, None),
                                       *([("max_decode_rows", max_decode_rows, 1, None)]
                                         if max_decode_rows is not None else [])):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise EngineArgumentError(name, f"{name}={value!r} must be an integer {bound}"
                                          + (" (the model's max_position_embeddings)" if name == "ctx_size" else ""))
        self.model, self.tokenizer = model.eval(), tokenizer
        self.parallel, self.ctx_size = parallel, ctx_size
        self.max_num_batched_tokens, self.max_queue = max_num_batched_tokens, max_queue
        self.deterministic, self.prefix_cache = deterministic, prefix_cache
        # rows per decode forward (None: the backend's, `ops.backends.decode_rows`): as many as the matrix-vector
        # kernels take at once; past that a linear becomes a GEMM, which for 16 rows once cost 1.45x two 8-row passes
        # (phi-1.5 bf16, AVX2, when the bf16 kernel stopped at 8 rows; benchmarks/RESULTS.md)
        self.max_decode_rows = decode_rows(next(model.parameters()).device.type) if max_decode_rows is None \
            else max_decode_rows
        self.vocab_size = config.vocab_size
        self.vocab_limit = len(tokenizer) if tokenizer is not None and len(tokenizer) < self.vocab_size else None
        gen = getattr(model, "generation_config", None)
        self.eos_token_ids = merge_eos_ids(eos_token_ids, getattr(gen, "eos_token_id", None), config.eos_token_id,
                                           getattr(tokenizer, "eos_token_id", None))
        rope = getattr(getattr(model, "model", model), "rope", None)
        self._original = getattr(rope, "original_max_positions", None)
        self._per_sequence = self._original is not None and getattr(rope, "static_long", None) is None
        self.pool = SlotPool(parallel, ctx_size)
        self._free = list(range(parallel))
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # admitted, in arrival order
        self._aborts: set[str] = set()
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stop = False
        self._stats = EngineStats()
        self._ids = itertools.count()
        self._mirror = mirror
        # sampled requests' prefill chunks and decode rows share one packed forward (`packing.py`); off: one
        # forward per prefill chunk, as deterministic requests always run
        self.packed_steps = True

    def _run(self, op: str, *args):
        """A pool change or forward, sent to the worker ranks first where the model is sharded."""
        if self._mirror is not None:
            self._mirror(op, args)
        return OPERATIONS[op](self.model, self.pool, *args)

    # ---------------------------------------------------------------- public API (any thread)
    def submit(self, prompt_token_ids: Sequence[int], params: SamplingParams,
               callback: Callable[[StepOutput], None], request_id: str | None = None) -> str:
        prompt = self._check_prompt(prompt_token_ids)
        params.check(self.vocab_size, self.parallel)
        if params.max_tokens is not None and len(prompt) + params.max_tokens > self.ctx_size:
            raise ContextLengthError(len(prompt), params.max_tokens, self.ctx_size)
        if params.stop and self.tokenizer is None:
            raise EngineArgumentError("stop", "stop strings need the engine's tokenizer (Engine(model, tokenizer))")
        rid = request_id or f"req-{uuid.uuid4().hex[:16]}"
        max_tokens = params.max_tokens if params.max_tokens is not None else self.ctx_size - len(prompt)
        deterministic = params.greedy if params.deterministic is None else params.deterministic
        request = Request(rid, prompt, params, callback, max_tokens, self.deterministic and deterministic,
                          self._per_sequence and len(prompt) > self._original)
        stop_ids = [] if params.ignore_eos else list(self.eos_token_ids)
        stop_ids += [i for i in params.stop_token_ids if i not in stop_ids]
        matchers = self._matchers(params, stop_ids)
        for i in range(params.n):
            text = StopText(self.tokenizer, list(params.stop), params.skip_special_tokens) if self.tokenizer else None
            sampler = RowSampler(params, i, self.vocab_size, self.vocab_limit, stop_ids, matchers[i])
            request.choices.append(Choice(request, i, sampler, text))
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is draining or stopped and admits no new requests")
            if len(self._waiting) >= self.max_queue and self.max_queue >= 0 and self._thread is not None:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (--max-queue {self.max_queue}); "
                                     f"retry later")
            self._waiting.append(request)
            self._lock.notify()
        return rid

    def _matchers(self, params: SamplingParams, stop_ids: list[int]) -> list:
        """One grammar matcher per choice (None each without a grammar); a grammar that does not compile against
        this vocabulary is an EngineArgumentError naming the field it came from."""
        if params.grammar is None:
            return [None] * params.n
        from ..structured import GrammarError, GrammarMatcher, grammar_tokenizer
        param = params.grammar.param or "grammar"
        if self.tokenizer is None:
            raise EngineArgumentError(param, "a grammar needs the engine's tokenizer (Engine(model, tokenizer))")
        try:
            llt = grammar_tokenizer(self.tokenizer, self.vocab_size, stop_ids)
            params.grammar.check(llt)
            limit = self.vocab_limit if self.vocab_limit is not None else self.vocab_size
            return [GrammarMatcher(params.grammar, llt, limit, stop_ids) for _ in range(params.n)]
        except (GrammarError, ValueError) as e:
            raise EngineArgumentError(param, str(e)) from e

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.add(request_id)
            self._lock.notify()

    def stats(self) -> EngineStats:
        with self._lock:
            s = self._stats
            active = [c.slot for r in self._running for c in r.choices if c.slot is not None]
            s.running, s.waiting = len(self._running), len(self._waiting)
            s.kv_usage = self.pool.used_positions(active) / (self.parallel * self.ctx_size)
            out = EngineStats(**{**s.__dict__, "decode_rows_histogram": list(s.decode_rows_histogram)})
            s.decode_rows_histogram.clear()
            return out

    @property
    def alive(self) -> bool:
        """Whether the engine's thread runs (False before `start`, after `shutdown`, or once it crashed)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="phikit-engine", daemon=True)
            self._thread.start()

    def drain(self, timeout: float) -> bool:
        """Admit nothing new; wait up to `timeout` s for every queued and running request -> True if all ended."""
        with self._lock:
            self._closed = True
            deadline = time.monotonic() + timeout
            while self._waiting or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def shutdown(self) -> None:
        with self._lock:
            self._closed = self._stop = True
            for r in list(self._waiting) + self._running:
                self._aborts.add(r.id)
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._mirror is not None:
            self._mirror(STOP, ())  # the worker ranks return from `follow`
            self._mirror = None

    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
                 | None = None) -> list[RequestResult]:
        """Offline batch (vLLM's `LLM.generate`): every prompt (text, or token ids) -> its result, in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt
        params_list = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise EngineArgumentError("params", f"{len(params_list)} SamplingParams for {len(prompts)} prompts")
        results, outputs = [], {}
        done = threading.Event()
        remaining = [0]

        def collect(out: StepOutput) -> None:
            outputs.setdefault(out.request_id, []).append(out)
            if out.finished:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        for prompt, p in zip(prompts, params_list):
            ids = prompt if not isinstance(prompt, str) else self._encode(prompt)
            remaining[0] += p.n
            rid = self.submit(ids, p, collect, request_id=f"gen-{next(self._ids)}")
            results.append(RequestResult(rid, list(ids)))
        if self._thread is None:
            while remaining[0] > 0:
                self.step()
        else:
            done.wait()
        for result in results:
            by_choice: dict[int, list[StepOutput]] = {}
            for out in outputs.get(result.request_id, []):
                by_choice.setdefault(out.index, []).append(out)
            for index in sorted(by_choice):
                outs = by_choice[index]
                last = outs[-1]
                logprobs = [lp for o in outs for lp in (o.logprobs or [])] or None
                result.choices.append(ChoiceResult(index, "".join(o.text for o in outs),
                                                   [t for o in outs for t in o.token_ids], last.finish_reason,
                                                   last.stop_reason, logprobs))
        return results

    # ---------------------------------------------------------------- the loop (engine thread)
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._waiting or self._running or self._aborts or self._stop):
                    self._lock.wait()
                if self._stop and not self._running and not self._waiting:
                    self._aborts.clear()
                    return
            self.step()
            with self._lock:
                self._lock.notify_all()  # drain() waits on it

    @torch.no_grad()  # not inference_mode: tensors it creates (kernel scratch) stay usable by generate()
    def step(self) -> None:
        """One scheduling step (module docstring)."""
        self._stats.steps += 1
        self._end_aborted()
        self._admit()
        rows = self._decode_rows()
        if rows:
            self._stats.decode_rows_histogram.append(len(rows))
        chunks = self._plan_prefill(self.max_num_batched_tokens - len(rows))
        packed_chunks = [(r, n) for r, n in chunks if not r.deterministic] if self.packed_steps else []
        packed_rows = [c for c in rows if self._batchable(c)] if packed_chunks else []
        self._decode_all(rows, skip=packed_rows)
        if packed_chunks:
            run_packed(self, packed_rows, packed_chunks)
        for request, n in chunks:
            if not packed_chunks or request.deterministic:
                self._prefill_chunk(request, n)

    def _end_aborted(self) -> None:
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            waiting = [r for r in self._waiting if r.id in aborts]
            for r in waiting:
                self._waiting.remove(r)
        for r in waiting + [r for r in self._running if r.id in aborts]:
            self._stats.aborted += 1
            for c in r.choices:
                if c.finish_reason is None:
                    self._finish(c, "abort", [], "", None)

    def _admit(self) -> None:
        while True:
            # one hold of the lock from queue to running: drain() must never see a request in neither
            with self._lock:
                if not self._waiting or len(self._free) < self._waiting[0].params.n:
                    return
                request = self._waiting.popleft()
                slots = self._take_slots(request)
                for choice, slot in zip(request.choices, slots):
                    choice.slot = slot
                self._running.append(request)

    def _take_slots(self, request: Request) -> list[int]:
        """n free slots; the first gets the longest reusable prefix (same LongRoPE regime) of any slot."""
        pool, prompt = self.pool, request.prompt
        best, best_len = None, 0
        if self.prefix_cache and not request.deterministic:
            self._stats.prefix_queries += 1
            for s in range(pool.slots):
                if bool(pool.rope_long[s]) != request.pinned_long and pool.lengths[s]:
                    continue
                n = _common_prefix(pool.tokens[s], prompt, min(pool.lengths[s], len(prompt) - 1))
                if n > best_len or (n == best_len and n and s in self._free and best not in self._free):
                    best, best_len = s, n
        if best is not None and best in self._free:
            first = best
        else:
            first = min(self._free, key=lambda s: pool.lengths[s])  # keep the longer cached prefixes for later
        self._free.remove(first)
        if best_len and best != first:
            self._run("copy_prefix", best, first, best_len)
        self._run("reset", first, best_len)
        if best_len:
            self._stats.prefix_hits += 1
            self._stats.prefix_hit_tokens += best_len
        self._run("pin", first, request.pinned_long)
        request.prefilled = request.cached_tokens = best_len
        slots = [first]
        for _ in range(request.params.n - 1):
            slot = min(self._free, key=lambda s: pool.lengths[s])
            self._free.remove(slot)
            self._run("reset", slot)
            slots.append(slot)
        return slots

    def _decode_rows(self) -> list[Choice]:
        """Every running choice that has a token to feed this step."""
        return [c for r in self._running if r.prefilled == len(r.prompt) for c in r.choices
                if c.finish_reason is None and len(c.generated) > c.fed]

    def _batchable(self, choice: Choice) -> bool:
        """Whether a decode row may share a forward with other rows (not deterministic, not changing regime)."""
        return not choice.request.deterministic and not self._crosses(choice)

    def _decode_all(self, rows: list[Choice], skip: list[Choice] = ()) -> None:
        """One token for each of `rows` but those in `skip` (they go in this step's packed forward)."""
        if not rows:
            return
        batched = [c for c in rows if self._batchable(c) and c not in skip]
        for c in rows:
            if not self._batchable(c):
                self._decode_group([c], ragged=False)
        for i in range(0, len(batched), self.max_decode_rows):  # a row alone takes the batch-1 (fused) step
            group = batched[i:i + self.max_decode_rows]
            self._decode_group(group, ragged=len(group) > 1)

    def _crosses(self, choice: Choice) -> bool:
        """Whether this step takes the row past original_max_position_embeddings into the long regime."""
        if not self._per_sequence:
            return False
        return not bool(self.pool.rope_long[choice.slot]) and self.pool.lengths[choice.slot] + 1 > self._original

    def _decode_group(self, group: list[Choice], ragged: bool) -> None:
        slots, tokens = [c.slot for c in group], [c.next_input for c in group]
        try:
            logits = self._run("decode", slots, tokens, ragged)
        except Exception as e:  # noqa: BLE001 - one request's fault must not stop the server
            if len(group) > 1:
                for c in group:  # find the row that fails alone; the others go on
                    self._decode_group([c], ragged)
                return
            self._fail(group[0].request, e)
            return
        for i, c in enumerate(group):
            c.fed += 1
            self._sample(c, logits[i])

    def _plan_prefill(self, budget: int) -> list[tuple[Request, int]]:
        """This step's prefill chunks (request, tokens) within `budget`, oldest request first; the first always runs."""
        plan, spent = [], False
        for request in self._running:
            remaining = len(request.prompt) - request.prefilled
            if remaining == 0 or request.finished:
                continue
            chunk = min(remaining, self.max_num_batched_tokens)
            if chunk > budget and spent:
                break  # a chunk is never cut to fit what is left this step: its size stays fixed
            plan.append((request, chunk))
            spent, budget = True, budget - chunk
            if budget <= 0:
                break
        return plan

    def _prefill_chunk(self, request: Request, chunk: int) -> None:
        """The next `chunk` prompt tokens of one request, in a forward of their own."""
        if request.finished:
            return
        tokens = request.prompt[request.prefilled:request.prefilled + chunk]
        try:
            logits = self._run("prefill", request.choices[0].slot, tokens)
        except Exception as e:  # noqa: BLE001
            self._fail(request, e)
            return
        self._prefilled(request, chunk, logits)

    def _prefilled(self, request: Request, chunk: int, logits: torch.Tensor) -> None:
        """`chunk` more prompt tokens of `request` are in its slot; `logits` [V] follow the last of them."""
        request.prefilled += chunk
        self._stats.prompt_tokens += chunk
        if request.prefilled == len(request.prompt):
            for c in request.choices[1:]:
                self._run("copy_prefix", request.choices[0].slot, c.slot, len(request.prompt))
            for c in request.choices:
                self._sample(c, logits)

    def _sample(self, choice: Choice, logits: torch.Tensor) -> None:
        request = choice.request
        ids = request.prompt + choice.generated
        try:
            token, logprob = choice.sampler.next_token(logits, ids, len(choice.generated))
        except Exception as e:  # noqa: BLE001 - a user's processor failed
            self._fail(request, e)
            return
        choice.generated.append(token)
        self._stats.generation_tokens += 1
        logprobs = [logprob] if logprob is not None else None
        if token in choice.sampler.stop_ids:
            self._finish(choice, "stop", [token], choice.text.finish() if choice.text else "", logprobs,
                         stop_reason=token if token not in self.eos_token_ids else None)
            return
        text, stop = choice.text.push(token) if choice.text else ("", None)
        if stop is not None:
            self._finish(choice, "stop", [token], text, logprobs, stop_reason=stop)
        elif len(choice.generated) >= request.max_tokens or self.pool.lengths[choice.slot] + 1 >= self.ctx_size:
            self._finish(choice, "length", [token], text + (choice.text.finish() if choice.text else ""), logprobs)
        else:
            self._emit(request, request.output(choice, [token], text, logprobs))

    def _finish(self, choice: Choice, reason: str, tokens: list[int], text: str, logprobs,
                stop_reason: str | int | None = None, error: str | None = None) -> None:
        request = choice.request
        choice.finish_reason = reason
        if choice.slot is not None:
            self._free.append(choice.slot)
            choice.slot = None
        self._emit(request, request.output(choice, tokens, text, logprobs, reason, stop_reason, error))
        if request.finished and request in self._running:
            with self._lock:
                self._running.remove(request)

    def _fail(self, request: Request, error: Exception) -> None:
        self._stats.errors += 1
        message = f"{type(error).__name__}: {error}"
        for c in request.choices:
            if c.finish_reason is None:
                self._finish(c, "error", [], "", None, error=message)

    def _emit(self, request: Request, output: StepOutput) -> None:
        try:
            request.callback(output)
        except Exception:  # noqa: BLE001 - a consumer that fails is a consumer that left
            self.abort(request.id)

    # ---------------------------------------------------------------- input checks
    def _check_prompt(self, prompt: Sequence[int]) -> list[int]:
        if isinstance(prompt, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            raise EngineArgumentError("prompt", "the engine takes token ids (a list of ints); encode text first")
        ids = list(prompt)
        if not ids:
            raise EngineArgumentError("prompt", "the prompt is empty; pass at least one token")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise EngineArgumentError("prompt", f"prompt token id {bad} is outside this model's ids 0 to "
                                                f"{self.vocab_size - 1}")
        if len(ids) >= self.ctx_size:
            raise ContextLengthError(len(ids), None, self.ctx_size, param="prompt")
        return ids

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise EngineArgumentError("prompt", "text prompts need the engine's tokenizer; pass token ids instead")
        return list(self.tokenizer(text)["input_ids"])


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n
