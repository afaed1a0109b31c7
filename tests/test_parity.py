"""Same weights, same numbers: phikit against transformers 5.x on tiny random models of every Phi variant (fp32, CPU,
`torch.testing.assert_close` defaults)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from .oracle import LONGROPE_VARIANTS, VARIANTS, left_padded_batch, pair

ALL = list(VARIANTS)
# transformers 5.x never applies PhiMoE's long factors, so it is a reference for PhiMoE only within the pretraining
# length; beyond it test_longrope.py checks phikit against the closed-form tables.
LONG_OK = [v for v in LONGROPE_VARIANTS if v != "phi-3.5-moe"]


def _ids(vocab: int, length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ALL)
def test_single_sequence_logits_hidden_states_and_loss(name: str, attn: str) -> None:
    ours, ref = pair(name, attn=attn)
    ids = _ids(ours.config.vocab_size, 20, batch=2)
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        a = ours(ids, labels=labels, output_hidden_states=True)
        b = ref(ids, labels=labels, output_hidden_states=True)
    assert_close(a.logits, b.logits)
    assert_close(a.loss, b.loss)
    assert len(a.hidden_states) == len(b.hidden_states) == ours.config.num_hidden_layers + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x, y)


@pytest.mark.parametrize("name", LONG_OK)
def test_long_regime_matches_reference(name: str) -> None:
    ours, ref = pair(name)
    ids = _ids(ours.config.vocab_size, 40)  # past original_max_position_embeddings=24: long factors
    with torch.no_grad():
        assert_close(ours(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini-4k", "phi-3.5-moe"])
def test_attention_weights_match_eager_reference(name: str) -> None:
    ours, ref = pair(name, attn="eager")
    ids = _ids(ours.config.vocab_size, 12)
    with torch.no_grad():
        a, b = ours(ids, output_attentions=True), ref(ids, output_attentions=True)
    assert len(a.attentions) == ours.config.num_hidden_layers
    for x, y in zip(a.attentions, b.attentions):
        assert_close(x, y)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ALL)
def test_left_padded_batch_equals_reference_and_each_row_alone(name: str, attn: str) -> None:
    ours, ref = pair(name, attn=attn)
    ids, mask, positions, rows = left_padded_batch(ours.config.vocab_size, [20, 13, 6])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, position_ids=positions).logits
        b = ref(ids, attention_mask=mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            real = mask[i].bool()
            assert_close(a[i, real], b[i, real])
            assert_close(a[i, real], ours(row[None]).logits[0])


def test_right_padding_matches_reference() -> None:
    ours, ref = pair("phi-3-mini-4k")
    ids = _ids(ours.config.vocab_size, 10, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(a[0], b[0])
    assert_close(a[1, :6], b[1, :6])


@pytest.mark.parametrize("name", LONG_OK)
def test_batch_rows_pick_their_own_longrope_regime(name: str) -> None:
    """One row past the pretraining length, two within it: each row equals itself run alone (transformers picks
    one regime for the whole batch and gets the short rows wrong)."""
    ours, ref = pair(name)
    ids, mask, positions, rows = left_padded_batch(ours.config.vocab_size, [30, 12, 7])
    with torch.no_grad():
        batch = ours(ids, attention_mask=mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            assert_close(batch[i, mask[i].bool()], ref(row[None]).logits[0])


@pytest.mark.parametrize("name", ALL)
def test_sequence_classification_matches_reference(name: str) -> None:
    ours, ref = pair(name, head="seq")
    ids, mask, positions, _ = left_padded_batch(ours.config.vocab_size, [9, 5, 7])
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, position_ids=positions, labels=labels)
        b = ref(ids, attention_mask=mask, position_ids=positions, labels=labels)
    assert a.logits.shape == (3, ours.config.num_labels)
    assert_close(a.logits, b.logits)
    assert_close(a.loss, b.loss)


def test_sequence_classification_pools_last_real_token_with_right_padding() -> None:
    ours, ref = pair("phi-3-128k", head="seq")
    ids = _ids(ours.config.vocab_size, 8, batch=2)
    ids[1, 5:] = ours.config.pad_token_id
    with torch.no_grad():
        assert_close(ours(ids).logits, ref(ids).logits)  # pooled by pad id, as the reference does
        mask = (ids != ours.config.pad_token_id).long()
        assert_close(ours(ids, attention_mask=mask).logits[1], ours(ids[1:, :5]).logits[0])


@pytest.mark.parametrize("name", [n for n in ALL if n != "phi-3.5-moe"])
def test_token_classification_matches_reference(name: str) -> None:
    ours, ref = pair(name, head="tok")
    ids = _ids(ours.config.vocab_size, 11, batch=2)
    labels = torch.randint(0, 2, ids.shape)
    labels[0, :3] = -100
    with torch.no_grad():
        a, b = ours(ids, labels=labels), ref(ids, labels=labels)
    assert_close(a.logits, b.logits)
    assert_close(a.loss, b.loss)


def test_moe_router_logits_and_aux_loss_match_reference() -> None:
    ours, ref = pair("phi-3.5-moe")
    ids, mask, positions, _ = left_padded_batch(ours.config.vocab_size, [10, 6])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        kw = dict(attention_mask=mask, position_ids=positions, labels=labels, output_router_logits=True)
        a, b = ours(ids, **kw), ref(ids, **kw)
    assert len(a.router_logits) == ours.config.num_hidden_layers
    for x, y in zip(a.router_logits, b.router_logits):
        assert_close(x, y)
    assert_close(a.aux_loss, b.aux_loss)
    assert_close(a.loss, b.loss)


@pytest.mark.parametrize("name", ["phi-2", "phi-4-mini"])
def test_logits_to_keep_and_tuple_outputs(name: str) -> None:
    ours, ref = pair(name)
    ids = _ids(ours.config.vocab_size, 9)
    with torch.no_grad():
        assert_close(ours(ids, logits_to_keep=1).logits, ref(ids, logits_to_keep=1).logits)
        index = torch.tensor([0, 4])
        assert_close(ours(ids, logits_to_keep=index).logits, ref(ids).logits[:, index])
        as_tuple = ours(ids, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert_close(as_tuple[0], ref(ids).logits)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("padded", [False, True])
def test_logits_to_keep_runs_only_those_rows_of_the_last_layer(name: str, padded: bool) -> None:
    """logits_to_keep=k: the last layer's MLP sees only the last k positions (what a prefill for the next token
    saves), the logits equal the reference's, and the cache still holds every position's keys and values: the next
    cached step equals the reference's uncached forward."""
    ours, ref = pair(name)
    vocab = ours.config.vocab_size
    if padded:
        ids, mask, positions, _ = left_padded_batch(vocab, [14, 9])
    else:
        ids = _ids(vocab, 14, batch=2)
        mask, positions = torch.ones_like(ids), torch.arange(14).expand(2, 14)
    last = ours.model.layers[-1]
    seen = []
    hook = last._modules[last.mlp_name].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    nxt = _ids(vocab, 1, batch=2, seed=7)
    with torch.no_grad():
        for k in (1, 3):
            seen.clear()
            a = ours(ids, attention_mask=mask, position_ids=positions, logits_to_keep=k, use_cache=True)
            assert seen == [k]
            assert_close(a.logits, ref(ids, attention_mask=mask, position_ids=positions).logits[:, -k:])
        grown, grown_mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        grown_positions = torch.cat([positions, positions[:, -1:] + 1], 1)
        step = ours(nxt, attention_mask=grown_mask, position_ids=grown_positions[:, -1:],
                    past_key_values=a.past_key_values, use_cache=True)
        full = ref(grown, attention_mask=grown_mask, position_ids=grown_positions).logits[:, -1:]
        assert_close(step.logits, full)
        seen.clear()
        ours(ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, output_hidden_states=True)
        assert seen == [ids.shape[1]]  # every layer's full output is reported: nothing skipped
    hook.remove()


def test_inputs_embeds_equal_input_ids() -> None:
    ours, ref = pair("phi-3-mini-4k")
    ids = _ids(ours.config.vocab_size, 9)
    embeds = ours.get_input_embeddings()(ids)
    with torch.no_grad():
        assert_close(ours(inputs_embeds=embeds).logits, ref(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["phi-1.5", "phi-3-mini-4k", "phi-3.5-moe"])
def test_state_dict_keys_equal_checkpoint_names(name: str) -> None:
    ours, _ = pair(name)
    keys = set(ours.state_dict())
    expected = {
        "phi-1.5": {"model.layers.0.self_attn.dense.weight", "model.layers.1.mlp.fc1.bias",
                    "model.final_layernorm.weight", "lm_head.bias"},
        "phi-3-mini-4k": {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
                          "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"},
        "phi-3.5-moe": {"model.layers.0.block_sparse_moe.gate.weight",
                        "model.layers.1.block_sparse_moe.experts.3.w2.weight", "model.layers.0.self_attn.o_proj.bias",
                        "model.norm.bias", "lm_head.bias"},
    }[name]
    assert expected <= keys
