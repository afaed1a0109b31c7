"""LoRA: zero-init is a no-op, merged equals unmerged, checkpointing keeps adapter gradients, and adapters cross over
to PEFT on the transformers model both ways, including split q/k/v and gate/up adapters onto fused layers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from phikit.lora import LoRALinear, apply_lora, load_adapter, lora_modules, merge_lora, save_adapter

from .oracle import pair

peft = pytest.importorskip("peft", reason="PEFT is a test-only dependency: pip install peft")

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

VARIANTS = ["phi-2", "phi-3-mini-4k", "phi-3.5-moe"]
MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3")



def _ids(n: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (n, t), generator=torch.Generator().manual_seed(seed))


def _targets(name: str):
    return MOE_TARGETS if name == "phi-3.5-moe" else None


@pytest.mark.parametrize("name", VARIANTS)
def test_zero_initialised_lora_leaves_outputs_unchanged(name: str) -> None:
    ours, _ = pair(name)
    ids = _ids()
    with torch.no_grad():
        want = ours(ids).logits
    apply_lora(ours, r=4, alpha=8, target_modules=_targets(name))
    assert lora_modules(ours)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, want)


@pytest.mark.parametrize("name", VARIANTS)
def test_merged_lora_equals_unmerged(name: str) -> None:
    ours, _ = pair(name)
    keys = set(ours.state_dict())
    ids = _ids()
    with torch.no_grad():
        base = ours(ids).logits
    apply_lora(ours, r=4, alpha=8, target_modules=_targets(name), init_lora_weights=False)
    with torch.no_grad():
        unmerged = ours(ids).logits
        assert not torch.allclose(unmerged, base, atol=1e-3), "the adapter must change the outputs"
        merge_lora(ours)
        merged = ours(ids).logits
    assert not lora_modules(ours) and set(ours.state_dict()) == keys
    assert all(p.requires_grad for p in ours.parameters())
    assert_close(merged, unmerged)


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini-4k"])
def test_gradient_checkpointing_gives_the_same_lora_gradients(name: str) -> None:
    ours, _ = pair(name)
    apply_lora(ours, r=4, alpha=8, dropout=0.1, init_lora_weights=False)
    ours.train()
    ids = _ids()
    grads = []
    for checkpointing in (False, True):
        ours.zero_grad()
        if checkpointing:
            ours.gradient_checkpointing_enable()
        torch.manual_seed(0)  # same dropout masks in both runs (non-reentrant checkpointing replays the RNG)
        ours(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0] and all(".lora_" in n for n in grads[0])
    for n in grads[0]:
        assert_close(grads[0][n], grads[1][n], msg=n)


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini-4k"])
def test_phikit_adapter_loads_in_peft_with_the_same_outputs(name: str, tmp_path) -> None:
    ours, ref = pair(name)
    apply_lora(ours, r=4, alpha=8, init_lora_weights=False)
    save_adapter(ours, tmp_path, base_model_name_or_path="tiny-" + name)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    peft_model = peft.PeftModel.from_pretrained(ref, tmp_path)
    ids = _ids()
    with torch.no_grad():
        assert_close(ours(ids).logits, peft_model(ids).logits)


def test_adapter_on_some_layers_only_stays_on_those_layers_in_peft(tmp_path) -> None:
    ours, ref = pair("phi-3-mini-4k")
    apply_lora(ours, r=2, target_modules=r"model\.layers\.0\.self_attn\.qkv_proj|.*\.down_proj",
               init_lora_weights=False)
    save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "model.layers.0.self_attn.qkv_proj"]
    peft_model = peft.PeftModel.from_pretrained(ref, tmp_path)
    wrapped = sorted(n for n, m in peft_model.named_modules() if n.endswith("lora_A"))
    assert [n.removeprefix("base_model.model.").removesuffix(".lora_A") for n in wrapped] == sorted(
        lora_modules(ours))
    ids = _ids()
    with torch.no_grad():
        assert_close(ours(ids).logits, peft_model(ids).logits)


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini-4k", "phi-3.5-moe"])
def test_peft_adapter_loads_in_phikit_with_the_same_outputs(name: str, tmp_path) -> None:
    ours, ref = pair(name)
    targets = {"phi-2": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
               "phi-3-mini-4k": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
               "phi-3.5-moe": ["q_proj", "k_proj", "v_proj", "o_proj"]}[name]
    out_proj = "dense" if name == "phi-2" else "o_proj"  # a per-module rank and alpha (PEFT's patterns)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.2, target_modules=targets, init_lora_weights=False,
                             task_type="CAUSAL_LM", rank_pattern={out_proj: 2}, alpha_pattern={out_proj: 3})
    peft_model = peft.get_peft_model(ref, config).eval()
    peft_model.save_pretrained(tmp_path)
    load_adapter(ours, tmp_path)
    assert not any(p.requires_grad for p in ours.parameters())  # inference load, as PeftModel.from_pretrained
    ids = _ids()
    with torch.no_grad():
        # twice: adapters loaded onto a model in eval mode must not drop out
        assert_close(ours(ids).logits, peft_model(ids).logits)
        assert_close(ours(ids).logits, peft_model(ids).logits)


def _split_adapter(ours, folder, parts: dict[str, tuple[int, int]], alpha_pattern: dict) -> dict:
    """Write a PEFT adapter for a Llama-style copy of `ours` (split q/k/v and gate/up names) by hand and return
    {module name: scaled delta [out, in]} the split layers would add."""
    gen = torch.Generator().manual_seed(1)
    tensors, deltas = {}, {}
    for i in range(ours.config.num_hidden_layers):
        for name, (rows, r) in parts.items():
            module = f"model.layers.{i}.{'mlp' if name in ('gate_proj', 'up_proj') else 'self_attn'}.{name}"
            a = torch.randn(r, ours.config.hidden_size, generator=gen) * 0.2
            b = torch.randn(rows, r, generator=gen) * 0.2
            tensors[f"base_model.model.{module}.lora_A.weight"] = a
            tensors[f"base_model.model.{module}.lora_B.weight"] = b
            deltas[module] = b @ a * (alpha_pattern.get(name, 8) / r)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "alpha_pattern": alpha_pattern,
              "rank_pattern": {name: r for name, (_, r) in parts.items() if r != 4},
              "target_modules": sorted(parts), "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return deltas


@pytest.mark.parametrize("which", ["all", "q_and_v"])
def test_split_adapter_loads_onto_fused_layers_exactly(which: str, tmp_path) -> None:
    ours, ref = pair("phi-3-mini-4k")
    q, kv, inter = 64, 64, 128  # tiny phi-3: 4 heads x 16 dims, no GQA; intermediate 128
    parts = {"q_proj": (q, 4), "v_proj": (kv, 2)}
    if which == "all":
        parts.update({"k_proj": (kv, 4), "gate_proj": (inter, 4), "up_proj": (inter, 3)})
    (tmp_path / "split").mkdir()
    deltas = _split_adapter(ours, tmp_path / "split", parts, {"v_proj": 5, "up_proj": 2})
    # the reference: split deltas added to the rows of each part of the fused base weights
    expected, _ = pair("phi-3-mini-4k")
    with torch.no_grad():
        for module, delta in deltas.items():
            parent, _, leaf = module.rpartition(".")
            fused = expected.get_submodule(parent + (".qkv_proj" if leaf.endswith(("q_proj", "k_proj", "v_proj"))
                                                     else ".gate_up_proj"))
            start = {"q_proj": 0, "k_proj": q, "v_proj": q + kv, "gate_proj": 0, "up_proj": inter}[leaf]
            fused.weight[start:start + delta.shape[0]] += delta
    load_adapter(ours, tmp_path / "split", is_trainable=True)
    qkv = ours.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, LoRALinear) and qkv.r == sum(r for n, (_, r) in parts.items() if n.endswith(
        ("q_proj", "k_proj", "v_proj")))
    ids = _ids()
    with torch.no_grad():
        want = expected(ids).logits
        assert_close(ours(ids).logits, want)
    # training keeps the block structure: off-diagonal blocks get no gradient and stay zero
    ours(ids, labels=ids).loss.backward()
    assert torch.equal(qkv.lora_B.weight.grad * (1 - qkv.lora_mask), torch.zeros_like(qkv.lora_B.weight))
    # saved fused (rank/alpha patterns), it loads back into phikit and into PEFT on the transformers model
    save_adapter(ours, tmp_path / "fused")
    fresh, _ = pair("phi-3-mini-4k")
    load_adapter(fresh, tmp_path / "fused")
    peft_model = peft.PeftModel.from_pretrained(ref, tmp_path / "fused")
    with torch.no_grad():
        assert_close(fresh(ids).logits, want)
        assert_close(peft_model(ids).logits, want)


def test_lora_errors_name_the_problem(tmp_path) -> None:
    ours, _ = pair("phi-3-mini-4k")
    with pytest.raises(ValueError, match="matches no layer.*qkv_proj"):
        apply_lora(ours, target_modules=["query_key_value"])
    with pytest.raises(ValueError, match="not nn.Linear"):
        apply_lora(ours, target_modules=["mlp"])
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        merge_lora(ours)
    with pytest.raises(OSError, match="no adapter_config.json"):
        load_adapter(ours, tmp_path)
    apply_lora(ours, r=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(ours)
    save_adapter(ours, tmp_path)
    phi2, _ = pair("phi-2")
    with pytest.raises(ValueError, match="does not have.*qkv_proj"):
        load_adapter(phi2, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(ours, tmp_path)
