"""LongRoPE and the KV caches: cached decoding equals an uncached forward at every step, also across
`original_max_position_embeddings`, per row of a left-padded batch, for dynamic and static caches."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import phikit
from phikit.model.rope import choose_long, cos_sin, rope_spec_from_config

from .oracle import LONGROPE_VARIANTS, VARIANTS, left_padded_batch, make_config, pair

PROMPT, STEPS = 16, 30  # 16 + 30 = 46 tokens: crosses original_max_position_embeddings = 24 at step 9


def _make_cache(kind: str, model):
    return phikit.DynamicCache() if kind == "dynamic" else phikit.StaticCache(model.config, max_cache_len=64)


def _patch_reference_long_factors(ref) -> None:
    """transformers 5.x's PhimoeRotaryEmbedding always builds short-factor frequencies (it calls its rope init
    without seq_len) while switching to long_mscale; patch it to pass the length, which is the published math."""
    emb = ref.model.rotary_emb
    init = emb.rope_init_fn
    original = emb.config.rope_parameters["original_max_position_embeddings"]
    state = {"seq_len": None}
    emb.rope_init_fn = lambda config, *a, **k: init(config, None, seq_len=state["seq_len"])
    forward = emb.forward

    def patched(x, position_ids=None):
        state["seq_len"] = int(position_ids.max()) + 1
        return forward(x, position_ids)

    emb.forward = patched
    assert original == 24


def _reference(name: str, ours, ref):
    """The model whose uncached forward is the truth for `name` in both regimes."""
    if name == "phi-3.5-moe":
        _patch_reference_long_factors(ref)
    return ref


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_decode_equals_uncached_reference_every_step(name: str, kind: str) -> None:
    ours, ref = pair(name)
    ref = _reference(name, ours, ref)
    ids = torch.randint(3, ours.config.vocab_size, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(3))
    cache = _make_cache(kind, ours)
    with torch.no_grad():
        out = ours(ids[:, :PROMPT], past_key_values=cache, use_cache=True)
        assert_close(out.logits, ref(ids[:, :PROMPT]).logits)
        for t in range(PROMPT, PROMPT + STEPS):
            out = ours(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            assert_close(out.logits[:, -1], ref(ids[:, :t + 1]).logits[:, -1], msg=lambda m: f"step {t}: {m}")
    assert cache.get_seq_length() == PROMPT + STEPS


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("name", LONGROPE_VARIANTS)
def test_batched_cached_decode_crosses_boundary_per_row(name: str, kind: str) -> None:
    """Rows of different lengths cross the boundary at different steps; every row at every step equals that row's
    uncached forward."""
    ours, ref = pair(name)
    ref = _reference(name, ours, ref)
    ids, mask, positions, rows = left_padded_batch(ours.config.vocab_size, [20, 14, 8], seed=4)
    gen = torch.Generator().manual_seed(5)
    cache = _make_cache(kind, ours)
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        for step in range(STEPS):
            new = torch.randint(3, ours.config.vocab_size, (len(rows), 1), generator=gen)
            rows = [torch.cat((r, n)) for r, n in zip(rows, new)]
            mask = torch.cat((mask, torch.ones_like(new)), dim=1)
            positions = positions[:, -1:] + 1
            out = ours(new, attention_mask=mask, position_ids=positions, past_key_values=out.past_key_values,
                       use_cache=True)
            for i, row in enumerate(rows):
                assert_close(out.logits[i, -1], ref(row[None]).logits[0, -1], msg=lambda m: f"step {step}: {m}")


def test_phimoe_long_tables_equal_closed_form() -> None:
    """Beyond original_max_position_embeddings PhiMoE must rotate with the long factors times long_mscale.
    transformers 5.x never applies the long factors there (it only swaps the mscale), so the truth here is the
    formula: cos(p / (long_factor_i * theta^(2i/R))) * long_mscale."""
    config = make_config("phi-3.5-moe")
    rp = config.rope_parameters
    spec = rope_spec_from_config(config)
    positions = torch.arange(0, 60)[None]
    long = choose_long(spec, positions, 1)
    assert bool(long.all())
    cos, sin = cos_sin(spec, positions, long, torch.float32)
    r = config.rotary_dim
    for i in range(r // 2):
        inv = 1.0 / (rp["long_factor"][i] * rp["rope_theta"] ** (2 * i / r))
        want_cos = torch.tensor([math.cos(p * inv) * rp["long_mscale"] for p in range(60)])
        want_sin = torch.tensor([math.sin(p * inv) * rp["long_mscale"] for p in range(60)])
        assert_close(cos[0, :, i], want_cos, atol=1e-5, rtol=1e-5)
        assert_close(cos[0, :, i + r // 2], want_cos, atol=1e-5, rtol=1e-5)
        assert_close(sin[0, :, i], want_sin, atol=1e-5, rtol=1e-5)
    short_cos, _ = cos_sin(spec, positions[:, :20], choose_long(spec, positions[:, :20], 1), torch.float32)
    inv0 = 1.0 / rp["short_factor"][1] / rp["rope_theta"] ** (2 / r)
    assert_close(short_cos[0, :, 1], torch.tensor([math.cos(p * inv0) * rp["short_mscale"] for p in range(20)]),
                 atol=1e-5, rtol=1e-5)


def test_phimoe_long_logits_differ_from_unpatched_reference() -> None:
    """The reference bug is real at model level: unpatched transformers disagrees with phikit past the boundary,
    the patched one agrees."""
    ours, ref = pair("phi-3.5-moe")
    ids = torch.randint(3, 96, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours_logits = ours(ids).logits
        assert not torch.allclose(ours_logits, ref(ids).logits, atol=1e-3)
        _patch_reference_long_factors(ref)
        assert_close(ours_logits, ref(ids).logits)


@pytest.mark.parametrize("name", ["phi-3-128k", "phi-3.5-moe"])
def test_static_policy_uses_long_factors_from_the_first_token(name: str) -> None:
    config = make_config(name, longrope_policy="static")
    spec = rope_spec_from_config(config)
    positions = torch.arange(10)[None]
    assert bool(choose_long(spec, positions, 2).all())  # max_position_embeddings 256 > 24
    short_spec = rope_spec_from_config(make_config(name, longrope_policy="static", longrope_static_length=24))
    assert not bool(choose_long(short_spec, torch.arange(40)[None], 1).any())
    # Cached decoding under the static policy never re-rotates and equals its own uncached forward.
    ours = phikit.Phi3ForCausalLM(config) if config.model_type == "phi3" else phikit.PhimoeForCausalLM(config)
    ours.eval()
    ids = torch.randint(3, 96, (1, 34), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = ours(ids[:, :20], use_cache=True)
        for t in range(20, 34):
            out = ours(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            assert_close(out.logits[:, -1], ours(ids[:, :t + 1]).logits[:, -1])
        # and it really differs from the per-sequence policy on a short prompt
        dynamic = type(ours)(make_config(name))
        dynamic.load_state_dict(ours.state_dict())
        assert not torch.allclose(dynamic.eval()(ids[:, :10]).logits, ours(ids[:, :10]).logits, atol=1e-4)


def test_static_and_dynamic_cache_agree_with_sliding_window() -> None:
    ours, _ = pair("phi-3-mini-4k")
    ids = torch.randint(3, 96, (2, 25), generator=torch.Generator().manual_seed(8))
    results = []
    for cache in (phikit.DynamicCache(), phikit.StaticCache(ours.config, max_cache_len=32)):
        with torch.no_grad():
            out = ours(ids[:, :10], past_key_values=cache, use_cache=True)
            steps = [out.logits[:, -1]]
            for t in range(10, 25):
                out = ours(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
                steps.append(out.logits[:, -1])
        results.append(torch.stack(steps))
    assert_close(results[0], results[1])


def test_cache_errors_name_the_fix() -> None:
    ours, _ = pair("phi-1.5")
    ids = torch.randint(3, 96, (1, 8))
    with torch.no_grad():
        with pytest.raises(ValueError, match="max_cache_len >= 8"):
            ours(ids, past_key_values=phikit.StaticCache(max_cache_len=4), use_cache=True)
        with pytest.raises(ValueError, match="only appends"):
            ours(ids, past_key_values=phikit.DynamicCache(), use_cache=True, cache_position=torch.arange(3, 11))
        with pytest.raises(TypeError, match="phikit cache"):
            ours(ids, past_key_values=((torch.zeros(1),),), use_cache=True)
