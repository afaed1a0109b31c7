"""What the engine counts, read by the server's /metrics and by benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    running: int = 0  # requests holding slots
    waiting: int = 0  # requests queued for slots
    kv_usage: float = 0.0  # filled positions of the running requests' slots / all positions
    prefix_queries: int = 0  # requests admitted that could reuse a prefix
    prefix_hits: int = 0  # of them, those that did
    prefix_hit_tokens: int = 0  # prompt positions not prefilled thanks to a hit
    aborted: int = 0
    errors: int = 0
    steps: int = 0
    prompt_tokens: int = 0  # prompt positions prefilled (after prefix hits)
    generation_tokens: int = 0
    packed_forwards: int = 0  # forwards that ran several requests' prefill chunks (and decode rows) together
    decode_rows_histogram: list[int] = field(default_factory=list)  # rows per decode step, since the last read
