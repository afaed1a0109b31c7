"""The engine's packed step: this step's prefill chunks of sampled (not deterministic) requests and the decode rows
that may batch, in one forward (`forward.packed`): each weight is read once for all of them, and a product with
hundreds of rows runs as a GEMM where several small forwards would each run the matrix-vector kernel or a GEMM on a
few rows. llama-server batches its slots' prompts the same way. Deterministic requests never join: their prefill
and decode keep the shapes `generate()` gives them.

A packed forward that fails is retried as the separate forwards it replaced (each decode row in the ragged batch,
each chunk alone), so the one request at fault fails and the others go on.
"""

from __future__ import annotations

from .requests import Choice, Request


def run_packed(engine, rows: list[Choice], chunks: list[tuple[Request, int]]) -> None:
    """Decode `rows` (one token each) and prefill `chunks` ((request, tokens)) in one forward, then sample."""
    chunks = [(r, n) for r, n in chunks if not r.finished]
    segments = [(c.slot, [c.next_input]) for c in rows]
    segments += [(r.choices[0].slot, r.prompt[r.prefilled:r.prefilled + n]) for r, n in chunks]
    if not segments:
        return
    try:
        logits = engine._run("packed", segments)  # [S, V]
    except Exception:  # noqa: BLE001 - find the request at fault: run the parts as their own forwards
        engine._decode_all(rows)
        for request, n in chunks:
            engine._prefill_chunk(request, n)
        return
    engine._stats.packed_forwards += 1
    for i, c in enumerate(rows):
        c.fed += 1
        engine._sample(c, logits[i])
    for i, (request, n) in enumerate(chunks, start=len(rows)):
        engine._prefilled(request, n, logits[i])
