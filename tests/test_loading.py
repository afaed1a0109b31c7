"""Loading and saving real checkpoint files: transformers <-> phikit both ways, legacy layouts, and a strict
accountant whose errors name the file or tensor."""

from __future__ import annotations

import json
import os
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

import phikit
from phikit import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, CheckpointError
from phikit.hub import HubError

from .oracle import hub_free, pair, to_hf_state_dict, transformers

FAMILIES = ["phi-2", "phi-4-mini", "phi-3.5-moe"]


def _ids(n: int = 12) -> torch.Tensor:
    return torch.randint(3, 96, (2, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shard", [None, "20KB"])
@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_checkpoint_loads_with_identical_logits(tmp_path, name: str, shard: str | None) -> None:
    _, ref = pair(name)
    ref.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.loading_info["missing_keys"] == [] and model.loading_info["unexpected_keys"] == []
    with torch.no_grad():
        assert_close(model(_ids()).logits, ref(_ids()).logits)


@pytest.mark.parametrize("shard", [None, "20KB"])
@pytest.mark.parametrize("name", FAMILIES)
def test_phikit_checkpoint_loads_in_transformers(tmp_path, name: str, shard: str | None) -> None:
    ours, _ = pair(name)
    ours.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert_close(ref(_ids()).logits, ours(_ids()).logits)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert_close(again(_ids()).logits, ours(_ids()).logits)


def _msft_state(ours) -> dict[str, torch.Tensor]:
    """The same weights in the legacy phi-msft layout (fused Wqkv, transformer.h.N, lm_head.linear)."""
    sd, out = ours.state_dict(), {}
    for i in range(ours.config.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            out[q + f"mixer.Wqkv.{kind}"] = torch.cat([sd[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[q + f"mixer.out_proj.{kind}"] = sd[p + f"self_attn.dense.{kind}"]
            out[q + f"ln.{kind}"] = sd[p + f"input_layernorm.{kind}"]
            out[q + f"mlp.fc1.{kind}"] = sd[p + f"mlp.fc1.{kind}"]
            out[q + f"mlp.fc2.{kind}"] = sd[p + f"mlp.fc2.{kind}"]
    out["transformer.embd.wte.weight"] = sd["model.embed_tokens.weight"]
    for kind in ("weight", "bias"):
        out[f"lm_head.ln.{kind}"] = sd[f"model.final_layernorm.{kind}"]
        out[f"lm_head.linear.{kind}"] = sd[f"lm_head.{kind}"]
    return out


def test_phi_msft_layout_loads_with_identical_logits(tmp_path) -> None:
    ours, _ = pair("phi-2")
    c = ours.config
    save_file({k: v.contiguous() for k, v in _msft_state(ours).items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "phi-msft", "architectures": ["PhiForCausalLM"], "n_embd": c.hidden_size,
        "n_layer": c.num_hidden_layers, "n_head": c.num_attention_heads, "n_inner": c.intermediate_size,
        "n_positions": c.max_position_embeddings, "rotary_dim": c.rotary_dim, "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.layer_norm_eps, "activation_function": "gelu_new", "flash_attn": False,
        "auto_map": {"AutoModelForCausalLM": "modeling_phi.PhiForCausalLM"}}))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert model.config.rotary_dim == c.rotary_dim
    with torch.no_grad():
        assert_close(model(_ids()).logits, ours(_ids()).logits)


def test_stacked_phimoe_experts_load(tmp_path) -> None:
    ours, _ = pair("phi-3.5-moe")
    save_file({k: v.contiguous() for k, v in to_hf_state_dict(ours.config, ours.state_dict()).items()},
              tmp_path / "model.safetensors")
    ours.config.save_pretrained(tmp_path)
    model = phikit.PhimoeForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert_close(model(_ids()).logits, ours(_ids()).logits)


def test_pytorch_bin_loads_weights_only_and_refuses_code(tmp_path) -> None:
    ours, _ = pair("phi-1.5")
    torch.save(ours.state_dict(), tmp_path / "pytorch_model.bin")
    ours.config.save_pretrained(tmp_path)
    with torch.no_grad():
        assert_close(phikit.PhiForCausalLM.from_pretrained(tmp_path)(_ids()).logits, ours(_ids()).logits)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Exploit()}, f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        phikit.PhiForCausalLM.from_pretrained(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_dtype_auto_follows_config_and_can_be_overridden(tmp_path) -> None:
    ours, _ = pair("phi-4-mini")
    ours.to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    assert model.dtype == torch.float32 and model.config._attn_implementation == "eager"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, and written once
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")


def test_generation_config_is_read_and_written(tmp_path) -> None:
    ours, _ = pair("phi-3-128k")
    ours.generation_config = phikit.GenerationConfig(eos_token_id=[1, 7], do_sample=True, temperature=0.6)
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "generation_config.json").read_text())
    assert data["eos_token_id"] == [1, 7] and data["temperature"] == 0.6
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.generation_config.eos_token_id == [1, 7] and model.generation_config.do_sample is True
    assert phikit.merge_eos_ids(32000, [32000, 32001, 32007], None) == [32000, 32001, 32007]


def test_classification_head_from_causal_checkpoint_is_initialised_and_reported(tmp_path) -> None:
    ours, _ = pair("phi-3-mini-4k")
    ours.save_pretrained(tmp_path)
    model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True,
                                                                     num_labels=3)
    assert info["newly_initialized_keys"] == ["score.weight"] and info["missing_keys"] == []
    assert model.score.weight.shape == (3, 64) and model.score.weight.device.type == "cpu"
    assert_close(model.model.embed_tokens.weight, ours.model.embed_tokens.weight)


# ----- the accountant ----------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> pathlib.Path:
    ours, _ = pair("phi-3-mini-4k")
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    return tmp_path


def _shards(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.glob("model-*.safetensors"))


def test_truncated_shard_names_the_file(saved) -> None:
    shard = _shards(saved)[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=f"{shard.name} is truncated.*re-download"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_corrupt_header_names_the_file(saved) -> None:
    shard = _shards(saved)[0]
    data = bytearray(shard.read_bytes())
    data[10:20] = b"\xff" * 10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=shard.name):
        AutoModelForCausalLM.from_pretrained(saved)


def test_missing_shard_names_it(saved) -> None:
    shard = _shards(saved)[2]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"absent.*{shard.name}.*download the missing shard"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_wrong_shape_names_the_tensor(saved) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["intermediate_size"] = 96
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.\d\.mlp\.\w+_proj\.weight has shape"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_missing_and_unexpected_tensors_are_listed_and_strict_false_reports_them(saved) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks \d+ tensors .*model\.layers\.2\."):
        AutoModelForCausalLM.from_pretrained(saved)
    config["num_hidden_layers"] = 1
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not use: model\.layers\.1\."):
        AutoModelForCausalLM.from_pretrained(saved)
    model = AutoModelForCausalLM.from_pretrained(saved, strict=False)
    assert all(k.startswith("model.layers.1.") for k in model.loading_info["unexpected_keys"])
    assert torch.isfinite(model(_ids()).logits).all()


def test_unknown_model_type_and_missing_files(saved, tmp_path_factory) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["model_type"] = "llama"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(phikit.ConfigError, match="model_type='llama'.*supported"):
        AutoConfig.from_pretrained(saved)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(phikit.ConfigError, match="no config.json"):
        AutoModelForCausalLM.from_pretrained(empty)
    phikit.Phi3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4).save_pretrained(empty)
    with pytest.raises(CheckpointError, match="no weights.*model.safetensors"):
        AutoModelForCausalLM.from_pretrained(empty)


def test_offline_hub_id_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    hub_free(monkeypatch, tmp_path)
    with pytest.raises(HubError) as err:
        AutoModelForCausalLM.from_pretrained("microsoft/Phi-3-mini-4k-instruct")
    message = str(err.value)
    assert "\n" not in message and "local folder" in message and "--local-dir" in message


def test_save_leaves_no_temporary_files(tmp_path) -> None:
    ours, _ = pair("phi-1.5")
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    ours.save_pretrained(tmp_path)  # re-save as one file: the old index must not shadow it
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.endswith(".tmp") for n in names)
    assert "model.safetensors" in names and "model.safetensors.index.json" not in names
    with torch.no_grad():
        assert_close(AutoModelForCausalLM.from_pretrained(tmp_path)(_ids()).logits, ours(_ids()).logits)


def test_weights_view_the_file_copy_on_write(tmp_path) -> None:
    """Same-dtype loads map the file instead of copying it; writing to a parameter (fine-tuning) must never
    reach the checkpoint on disk."""
    ours, _ = pair("phi-1.5")
    ours.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_close(fresh.model.embed_tokens.weight + 1.0, model.model.embed_tokens.weight)
