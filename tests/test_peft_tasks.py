"""PEFT's task types on phikit's models, every family: `get_peft_model(model, LoraConfig(task_type=...))` for
CAUSAL_LM, SEQ_CLS, TOKEN_CLS and none wraps a phikit model; forward, loss and backward run through the wrapper,
CAUSAL_LM's `generate` goes through PEFT's `prepare_inputs_for_generation`, and the adapter round-trips: what PEFT
writes from a phikit model loads onto transformers' model with the same outputs and the reverse, reloads onto a
fresh phikit model, and merges into a plain phikit model."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from .oracle import pair

peft = pytest.importorskip("peft", reason="PEFT is a test-only dependency: pip install peft")

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

HEADS = {"CAUSAL_LM": "causal", "SEQ_CLS": "seq", "TOKEN_CLS": "tok", None: "base"}
TARGETS = {"phi-2": ["q_proj", "v_proj", "dense", "fc1"], "phi-3-mini-4k": ["qkv_proj", "o_proj", "gate_up_proj"],
           # attention only: transformers 5 holds PhiMoE's experts as stacked parameters, not w1 / w2 / w3 modules,
           # so an adapter on phikit's per-expert linears has nothing to load onto there
           "phi-3.5-moe": ["q_proj", "k_proj", "v_proj", "o_proj"]}
CASES = [(name, task) for name in TARGETS for task in HEADS
         if not (name == "phi-3.5-moe" and task == "TOKEN_CLS")]  # transformers has no PhimoeForTokenClassification


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(seed))


def labels_for(task: str | None, x: torch.Tensor) -> torch.Tensor | None:
    if task == "CAUSAL_LM":
        return x
    if task == "SEQ_CLS":
        return torch.tensor([0, 1])
    if task == "TOKEN_CLS":
        return x % 2
    return None


def outputs(model, task: str | None, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=x)
    return out.last_hidden_state if task is None else out.logits


def lora(name: str, task: str | None, seed: int):
    torch.manual_seed(seed)  # init_lora_weights=False: random A and B, so the adapter changes the outputs
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[name], init_lora_weights=False, task_type=task)


@pytest.mark.parametrize("name,task", CASES)
def test_phikit_model_under_peft_task_type_round_trips(name, task, tmp_path):
    ours, _ = pair(name, HEADS[task])
    x = ids()
    base = outputs(ours, task, x)
    wrapped = peft.get_peft_model(ours, lora(name, task, 0))
    expected_class = {"CAUSAL_LM": "PeftModelForCausalLM", "SEQ_CLS": "PeftModelForSequenceClassification",
                      "TOKEN_CLS": "PeftModelForTokenClassification", None: "PeftModel"}[task]
    assert type(wrapped).__name__ == expected_class

    # forward, loss, backward through the wrapper: only adapter weights (and a classifier head) get gradients
    wrapped.train()
    labels = labels_for(task, x)
    out = wrapped(input_ids=x, labels=labels) if labels is not None else wrapped(input_ids=x)
    loss = out.loss if labels is not None else out.last_hidden_state.pow(2).mean()
    loss.backward()
    graded = {n for n, p in wrapped.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all(".lora_" in n or "modules_to_save" in n for n in graded), sorted(graded)[:5]
    wrapped.eval()
    adapted = outputs(wrapped, task, x)
    assert not torch.allclose(adapted, base, atol=1e-4), "the adapter must change the outputs"

    # PEFT writes the adapter of a phikit model; transformers' model with the same base weights reads it
    wrapped.save_pretrained(tmp_path / "from_phikit")
    _, ref = pair(name, HEADS[task])
    theirs = peft.PeftModel.from_pretrained(ref, tmp_path / "from_phikit").eval()
    assert_close(outputs(theirs, task, x), adapted)
    if labels is not None:
        with torch.no_grad():
            assert_close(theirs(input_ids=x, labels=labels).loss, wrapped(input_ids=x, labels=labels).loss)

    # it reloads onto a fresh phikit model
    fresh, _ = pair(name, HEADS[task])
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "from_phikit").eval()
    assert_close(outputs(reloaded, task, x), adapted)

    # the reverse: an adapter PEFT wrote from transformers' model reads onto phikit's
    _, ref2 = pair(name, HEADS[task])
    peft.get_peft_model(ref2, lora(name, task, 1)).save_pretrained(tmp_path / "from_transformers")
    theirs2 = peft.PeftModel.from_pretrained(pair(name, HEADS[task])[1], tmp_path / "from_transformers").eval()
    ours2 = peft.PeftModel.from_pretrained(pair(name, HEADS[task])[0], tmp_path / "from_transformers").eval()
    assert_close(outputs(ours2, task, x), outputs(theirs2, task, x))

    # merge: a plain phikit model with the adapter folded in
    merged = reloaded.merge_and_unload()
    assert type(merged).__module__.startswith("phikit")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert_close(outputs(merged, task, x), adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(TARGETS))
def test_generate_through_peft_equals_transformers(name, tmp_path):
    ours, ref = pair(name)
    wrapped = peft.get_peft_model(ours, lora(name, "CAUSAL_LM", 0)).eval()
    wrapped.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(ref, tmp_path).eval()
    x = ids()[:1]
    got = wrapped.generate(input_ids=x, max_new_tokens=8, do_sample=False)
    want = theirs.generate(input_ids=x, max_new_tokens=8, do_sample=False)
    assert got.tolist() == want.tolist()


def test_prepare_inputs_for_generation_feeds_what_the_cache_lacks():
    from phikit.generation.step import rope_positions
    from phikit.model.cache import DynamicCache

    ours, _ = pair("phi-3-mini-4k")
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # a left-padded row
    cache = DynamicCache()
    with torch.no_grad():
        full = ours(**ours.prepare_inputs_for_generation(x, past_key_values=cache, attention_mask=mask)).logits
        step = ours.prepare_inputs_for_generation(torch.cat([x, x[:, :1]], 1), past_key_values=cache,
                                                  attention_mask=torch.cat([mask, mask[:, :1] * 0 + 1], 1))
        assert step["input_ids"].shape == (2, 1) and step["position_ids"].tolist() == [[7], [10]]
        ours(**step)
        uncached = ours(input_ids=x, attention_mask=mask, position_ids=rope_positions(mask)).logits
    assert_close(full, uncached)


def test_prompt_learning_adapters_are_refused_by_generate_not_ignored():
    ours, _ = pair("phi-2")
    wrapped = peft.get_peft_model(ours, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        assert wrapped(input_ids=ids()).logits.shape[1] == 4 + 10  # forward runs the virtual tokens
    with pytest.raises(ValueError, match="prompt-learning adapter"):
        wrapped.generate(input_ids=ids()[:1], max_new_tokens=2)
