"""The packed forward (`phikit.model.packed`, `engine/packing.py`): several slots' prefill chunks and decode tokens in
one [1, T] forward give each segment the logits and cache rows of that segment run alone, for every family (sliding
window, LongRoPE, MoE included); the engine packs sampled requests' chunks with its decode rows."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from phikit.engine import Engine, SamplingParams, forward
from phikit.engine.slots import SlotPool

from .common import VARIANTS, random_ids, tiny, uncached_logprobs


def _uncached_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_packed_forward_equals_each_segment_alone(name: str) -> None:
    """Slot 0 continues a cached 6-token prefix with 5 tokens (past phi-3-mini-4k's 7-token window), slot 1 prefills
    30 fresh tokens (past the LongRoPE variants' original 24: the long regime, as an uncached forward of those 30
    picks), slot 2 decodes one token after 4: logits equal uncached forwards of each whole sequence, and every slot's
    keys and values equal those of the same tokens fed slot by slot."""
    model = tiny(name)
    vocab = model.config.vocab_size
    seqs = [random_ids(vocab, 11, 1), random_ids(vocab, 30, 2), random_ids(vocab, 5, 3)]
    cached = [6, 0, 4]
    packed_pool, solo_pool = SlotPool(3, 40), SlotPool(3, 40)
    with torch.no_grad():
        for pool in (packed_pool, solo_pool):
            for slot, (ids, n) in enumerate(zip(seqs, cached)):
                if n:
                    forward.prefill(model, pool, slot, ids[:n])
        logits = forward.packed(model, packed_pool, [(s, ids[n:]) for s, (ids, n) in enumerate(zip(seqs, cached))])
        for slot, (ids, n) in enumerate(zip(seqs, cached)):
            forward.prefill(model, solo_pool, slot, ids[n:])
    assert logits.shape == (3, vocab)
    for slot, ids in enumerate(seqs):
        assert_close(logits[slot], _uncached_logits(model, ids), atol=1e-4, rtol=1e-4)
        assert packed_pool.lengths[slot] == solo_pool.lengths[slot] == len(ids)
        assert packed_pool.tokens[slot] == solo_pool.tokens[slot] == ids
        n = len(ids)
        for a, b in zip(packed_pool.keys + packed_pool.values, solo_pool.keys + solo_pool.values):
            assert_close(a[slot, :, :n], b[slot, :, :n], atol=1e-5, rtol=1e-5)
    assert torch.equal(packed_pool.rope_long, solo_pool.rope_long)


def test_a_failed_packed_forward_leaves_the_slots_as_they_were() -> None:
    """A segment past its slot's capacity: the forward raises naming the slot, and no slot's length or tokens move."""
    model = tiny("phi-1.5")
    pool = SlotPool(2, 8)
    with torch.no_grad():
        forward.prefill(model, pool, 0, [5, 6, 7])
        with pytest.raises(ValueError, match="slot 1 holds 0 of 8 positions; cannot add 9"):
            forward.packed(model, pool, [(0, [8]), (1, list(range(3, 12)))])
    assert pool.lengths == [3, 0] and pool.tokens == [[5, 6, 7], []]


def _sampled_steps_equal_uncached(model, engine: Engine, prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=0)
    for prompt, result in zip(prompts, engine.generate(prompts, params)):
        ids = list(prompt)
        for token, lp in zip(result.choices[0].token_ids, result.choices[0].logprobs):
            assert_close(torch.tensor(lp.logprob), uncached_logprobs(model, ids)[token], atol=2e-4, rtol=0)
            ids.append(token)


def test_the_engine_packs_prefill_chunks_with_decode_rows() -> None:
    """Not deterministic, 6-token budget: each step decodes the running rows and packs the chunks that fit with them
    (the first request's 9-token prompt takes two steps' chunks); every token's logprob is the uncached forward's."""
    model = tiny("phi-3-mini-4k")
    engine = Engine(model, parallel=3, deterministic=False, max_num_batched_tokens=6)
    prompts = [random_ids(96, 9, 11), random_ids(96, 3, 12), random_ids(96, 4, 13)]
    _sampled_steps_equal_uncached(model, engine, prompts)
    assert engine.stats().packed_forwards >= 2


def test_deterministic_requests_never_join_a_packed_forward() -> None:
    model = tiny("phi-1.5")
    engine = Engine(model, parallel=3)  # greedy requests are deterministic by default
    _sampled_steps_equal_uncached(model, engine, [random_ids(96, 5, 1), random_ids(96, 7, 2)])
    assert engine.stats().packed_forwards == 0


def test_a_failing_packed_forward_runs_its_parts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed forward raises: the step runs each chunk and the decode rows as their own forwards instead, and
    every request still gets the uncached forward's numbers."""
    from phikit.engine import mirror

    def broken(*args):
        raise RuntimeError("packed forward failed")

    monkeypatch.setitem(mirror.OPERATIONS, "packed", broken)
    model = tiny("phi-1.5")
    engine = Engine(model, parallel=3, deterministic=False)
    _sampled_steps_equal_uncached(model, engine, [random_ids(96, 5, 4), random_ids(96, 8, 5), random_ids(96, 3, 6)])
    assert engine.stats().packed_forwards == 0 and engine.stats().errors == 0
