"""`from_pretrained` arguments phikit does not honour, bad values of those it does, and corrupt config files: each a
clear error naming the argument or file and what to do instead. A failed call changes neither the folder nor a
`config=` object the caller passed. The arguments it honours are tested for doing what transformers does."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil

import pytest
import torch

import phikit
from phikit import CheckpointError, ConfigError, Phi3ForCausalLM
from phikit.generation_config import GenerationConfig
from phikit.weights.pretrained_args import NO_OPS, REFUSED

from .harness import Case, expect_clear_error, folder_snapshot, params, save_tiny, tiny_config


class Ctx:
    """A saved tiny phi3 model (shared, never changed) and fresh copies for cases that damage files."""

    def __init__(self, saved: pathlib.Path, scratch: pathlib.Path) -> None:
        self.saved, self.scratch, self.n = saved, scratch, 0

    def copy(self) -> pathlib.Path:
        self.n += 1
        target = self.scratch / f"copy{self.n}"
        shutil.copytree(self.saved, target)
        return target


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> pathlib.Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"), "phi3")


@pytest.fixture
def ctx(saved, tmp_path) -> Ctx:
    return Ctx(saved, tmp_path)


def load(**kwargs):
    return lambda c: Phi3ForCausalLM.from_pretrained(c.saved, **kwargs)


def refused(name: str, value, *extra: str) -> Case:
    return Case(f"refuses-{name}", load(**{name: value}), ValueError, (name, *extra))


ARGUMENT_CASES = [
    refused("load_in_4bit", True, "Int4WeightOnlyConfig"),
    refused("load_in_8bit", True, "Int8WeightOnlyConfig"),
    refused("tp_plan", "auto", "torch.distributed process group", "torchrun"),  # outside torchrun
    Case("refuses-tp_plan-dict", load(tp_plan={"layers.*": "colwise"}), ValueError, ("tp_plan", "tp_plan='auto'")),
    refused("tp_size", 2, "only with tp_plan='auto'"),
    refused("device_mesh", object(), "only with tp_plan='auto'"),
    refused("distributed_config", {"tp_size": 2}, "FSDP", "tp_plan='auto'"),
    refused("max_memory", {0: "10GiB", "cpu": "30GiB"}, "one device"),
    refused("offload_folder", "offload", "offload"),
    refused("offload_buffers", True, "offload"),
    refused("state_dict", {"w": torch.ones(1)}, "load_state_dict"),
    refused("gguf_file", "model.gguf", "safetensors"),
    refused("key_mapping", {"^old": "new"}, "rename"),
    refused("adapter_kwargs", {"revision": "main"}, "load_adapter"),
    refused("adapter_name", "other", "load_adapter"),
    refused("fusion_config", {"patch_embeddings": True}, "fusion"),
    refused("use_kernels", True, "kernels"),
    refused("kernel_config", object(), "kernels"),
    refused("allow_all_kernels", True, "kernels"),
    refused("experts_implementation", "grouped_mm", "eager"),
    refused("from_tf", True, "TensorFlow"),
    refused("from_flax", True, "Flax"),
    refused("use_auth_token", "hf_x", "token="),
    refused("bnb_4bit_compute_dtype", torch.bfloat16, "Int4WeightOnlyConfig"),
    refused("bnb_4bit_quant_type", "nf4", "BitsAndBytesConfig"),
    refused("llm_int8_threshold", 5.0, "Int8WeightOnlyConfig"),
    refused("weights_only", False, "weights-only"),
    Case("force-download-hub-id", lambda c: Phi3ForCausalLM.from_pretrained("org/name", force_download=True),
         ValueError, ("force_download", "snapshot_download")),
    Case("proxies-hub-id", lambda c: Phi3ForCausalLM.from_pretrained("org/name", proxies={"https": "p:1"}),
         ValueError, ("proxies", "HTTPS_PROXY")),
    Case("force-download-not-bool", load(force_download="yes"), ValueError, ("force_download", "'yes'")),
    Case("dtype-int8", load(dtype=torch.int8), ValueError, ("torch.int8", "floating")),
    Case("dtype-bool", load(dtype=torch.bool), ValueError, ("torch.bool",)),
    Case("dtype-unknown-name", load(dtype="int4"), ValueError, ("'int4'",)),
    Case("dtype-number", load(dtype=16), ValueError, ("dtype=16",)),
    Case("dtype-and-torch-dtype-disagree", load(dtype="bfloat16", torch_dtype=torch.float16), ValueError,
         ("dtype='bfloat16'", "torch_dtype=torch.float16")),
    Case("torch-dtype-unknown", load(torch_dtype="float8"), ValueError, ("'float8'",)),
    Case("device-map-disk", load(device_map="disk"), ValueError, ("device_map", "'disk'")),
    Case("device-map-meta", load(device_map="meta"), ValueError, ("device_map", "'meta'")),
    Case("device-map-nonsense", load(device_map="gpu please"), ValueError, ("device_map", "'gpu please'")),
    Case("device-map-split", load(device_map={"model": "cpu", "lm_head": "disk"}), ValueError,
         ("device_map", "splits")),
    Case("device-map-empty", load(device_map={}), ValueError, ("device_map", "empty")),
    Case("device-map-negative", load(device_map=-1), ValueError, ("device_map=-1",)),
    Case("device-map-bool", load(device_map=True), ValueError, ("device_map=True",)),
    Case("device-map-balanced", load(device_map="balanced"), ValueError, ("device_map='balanced'", "one device")),
    Case("device-map-list", load(device_map=["cpu"]), ValueError, ("device_map=['cpu']",)),
    Case("device-map-cuda-without-one", load(device_map="cuda:0"), ValueError, ("device_map='cuda:0'",),
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    Case("subfolder-parent", load(subfolder="../other"), ValueError, ("subfolder", "'../other'")),
    Case("subfolder-absolute", load(subfolder="/etc"), ValueError, ("subfolder", "'/etc'")),
    Case("subfolder-backslash", load(subfolder="a\\..\\b"), ValueError, ("subfolder",)),
    Case("subfolder-absent", load(subfolder="text_model"), ValueError, ("subfolder='text_model'",)),
    Case("subfolder-not-string", load(subfolder=3), ValueError, ("subfolder=3",)),
    Case("variant-absent", load(variant="fp16"), CheckpointError, ("model.fp16.safetensors",)),
    Case("variant-path", load(variant="../x"), ValueError, ("variant='../x'",)),
    Case("use-safetensors-false-without-bin", load(use_safetensors=False), CheckpointError,
         ("pytorch_model.bin", "use_safetensors=False")),
    Case("use-safetensors-not-bool", load(use_safetensors="yes"), ValueError, ("use_safetensors='yes'",)),
    Case("config-wrong-type", load(config=5), ValueError, ("config=5",)),
    Case("config-other-family", load(config=tiny_config("phi")), ConfigError, ("Phi3Config", "PhiConfig")),
    Case("config-path-missing", lambda c: Phi3ForCausalLM.from_pretrained(c.saved, config=str(c.scratch / "no")),
         ConfigError, ("config.json",)),
    Case("config-override-invalid", load(hidden_act="bogus"), ConfigError, ("hidden_act", "bogus")),
    Case("config-override-negative", load(num_attention_heads=-4), ConfigError, ("num_attention_heads", "-4")),
    Case("tqdm-class-not-callable", load(tqdm_class=5), ValueError, ("tqdm_class=5",)),
    Case("generation-config-dict", load(generation_config={"max_length": 5}), ValueError, ("generation_config",)),
    Case("quantization-config-string", load(quantization_config="int4"), ValueError,
         ("quantization_config='int4'", "Int4WeightOnlyConfig")),
    Case("quantization-method-unknown", load(quantization_config={"quant_method": "gptq"}), ValueError,
         ("'gptq'",)),
    Case("path-not-a-path", lambda c: Phi3ForCausalLM.from_pretrained(5), ValueError, ("int",)),
    Case("path-is-a-file", lambda c: Phi3ForCausalLM.from_pretrained(c.saved / "config.json"), ValueError,
         ("config.json", "not a checkpoint folder")),
]


def _damage(name: str, text: str | bytes, **kwargs):
    def call(c: Ctx):
        folder = c.copy()
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return Phi3ForCausalLM.from_pretrained(folder, **kwargs)
    return call


def _edit_config(**changes):
    def call(c: Ctx):
        folder = c.copy()
        data = json.loads((folder / "config.json").read_text())
        data.update(changes)
        (folder / "config.json").write_text(json.dumps(data))
        return Phi3ForCausalLM.from_pretrained(folder)
    return call


def _adapter_folder(c: Ctx):
    folder = c.scratch / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return Phi3ForCausalLM.from_pretrained(folder)


FILE_CASES = [
    Case("config-json-corrupt", _damage("config.json", '{"model_type": "phi3",'), ConfigError, ("config.json",)),
    Case("config-json-list", _damage("config.json", "[1, 2]"), ConfigError, ("config.json", "list")),
    Case("config-json-not-utf8", _damage("config.json", b'{"model_type": "\xff"}'), ConfigError, ("config.json",)),
    Case("config-json-empty", _damage("config.json", ""), ConfigError, ("config.json",)),
    Case("config-json-unknown-model-type", _edit_config(model_type="llama"), ConfigError, ("config.json", "llama")),
    Case("config-json-bad-hidden-size", _edit_config(hidden_size="wide"), ConfigError, ("config.json",
                                                                                         "hidden_size")),
    Case("config-json-bad-heads", _edit_config(num_attention_heads=0), ConfigError, ("config.json",
                                                                                     "num_attention_heads")),
    Case("config-json-bad-dtype", _edit_config(dtype="int4"), ConfigError, ("dtype='int4'", "config.json")),
    Case("config-json-bad-quantization", _edit_config(quantization_config="q4"), ValueError,
         ("quantization_config",)),
    Case("generation-config-corrupt", _damage("generation_config.json", "{oops"), ConfigError,
         ("generation_config.json",)),
    Case("generation-config-list", _damage("generation_config.json", "[]"), ConfigError,
         ("generation_config.json",)),
    Case("generation-config-not-utf8", _damage("generation_config.json", b'{"a": "\xff"}'), ConfigError,
         ("generation_config.json",)),
    Case("adapter-folder-as-model", _adapter_folder, ConfigError, ("adapter_config.json", "load_adapter")),
    Case("index-escapes-the-folder", _damage("model.safetensors.index.json",
                                             json.dumps({"weight_map": {"lm_head.weight": "../x.safetensors"}})),
         CheckpointError, ("model.safetensors.index.json", "lm_head.weight", "inside")),
]

CASES = ARGUMENT_CASES + FILE_CASES


@pytest.mark.parametrize("case", params(CASES))
def test_bad_from_pretrained_input_is_a_clear_error(case, ctx) -> None:
    before = folder_snapshot(ctx.saved)
    expect_clear_error(case, ctx)
    assert folder_snapshot(ctx.saved) == before


def test_every_transformers_argument_is_classified() -> None:
    """Each argument transformers' from_pretrained documents or pops is honoured, a no-op, or refused."""
    import inspect
    import re

    transformers = pytest.importorskip("transformers")
    source = inspect.getsource(transformers.PreTrainedModel.from_pretrained)
    popped = set(re.findall(r'kwargs\.pop\("(\w+)"', source))
    popped |= set(re.findall(r'for name in \[([^\]]+)\]', source)[0].replace('"', "").replace(" ", "").split(","))
    signature = set(inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters) - {
        "cls", "pretrained_model_name_or_path", "model_args", "kwargs"}
    honoured = set(inspect.signature(phikit.weights.loading.load_pretrained).parameters)
    unclassified = sorted((popped | signature) - honoured - set(NO_OPS) - set(REFUSED))
    assert unclassified == [], unclassified


@pytest.mark.parametrize("kwargs", [dict(load_in_4bit=True), dict(hidden_act="bogus"), dict(tp_plan="auto"),
                                    dict(dtype=torch.int8), dict(num_hidden_layers=5)])
def test_failed_load_leaves_the_callers_config_unchanged(saved, kwargs) -> None:
    config = phikit.AutoConfig.from_pretrained(saved)
    before = copy.deepcopy(config.to_dict())
    with pytest.raises(ValueError):
        Phi3ForCausalLM.from_pretrained(saved, config=config, **kwargs)
    assert config.to_dict() == before


def test_successful_load_copies_the_config_and_records_name_and_dtype(saved) -> None:
    config = phikit.AutoConfig.from_pretrained(saved)
    before = copy.deepcopy(config.to_dict())
    model = Phi3ForCausalLM.from_pretrained(saved, config=config, output_hidden_states=True, dtype=torch.bfloat16)
    assert config.to_dict() == before and model.config is not config
    assert model.config.output_hidden_states is True
    assert model.config.dtype is torch.bfloat16 and model.config.to_dict()["dtype"] == "bfloat16"
    assert model.config._name_or_path == os.fspath(saved)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 200]])).logits


def test_honoured_arguments_do_what_transformers_does(saved, tmp_path) -> None:
    reference = _logits(Phi3ForCausalLM.from_pretrained(saved))
    # subfolder and variant
    sub = tmp_path / "repo" / "text_model"
    shutil.copytree(saved, sub)
    os.rename(sub / "model.safetensors", sub / "model.fp16.safetensors")
    model = Phi3ForCausalLM.from_pretrained(tmp_path / "repo", subfolder="text_model", variant="fp16")
    assert torch.equal(_logits(model), reference)
    # the same through the Auto class (which reads config.json from the subfolder to pick the family)
    auto = phikit.AutoModelForCausalLM.from_pretrained(tmp_path / "repo", subfolder="text_model", variant="fp16")
    assert torch.equal(_logits(auto), reference) and auto.config.name_or_path == str(tmp_path / "repo")
    # disable_mmap reads the same values; use_safetensors=True finds them; ignored network options for a folder
    for kwargs in (dict(disable_mmap=True), dict(use_safetensors=True), dict(force_download=True, proxies={}),
                   dict(low_cpu_mem_usage=True, trust_remote_code=True, _from_auto=True, experts_implementation="eager",
                        adapter_name="default", load_in_4bit=False, tp_plan=None)):
        assert torch.equal(_logits(Phi3ForCausalLM.from_pretrained(saved, **kwargs)), reference), kwargs
    # generation_config and tqdm_class
    gen = GenerationConfig(max_new_tokens=3, do_sample=False)
    seen = []

    def progress(items, **kwargs):
        seen.append(kwargs.get("desc"))
        return items

    model = Phi3ForCausalLM.from_pretrained(saved, generation_config=gen, tqdm_class=progress)
    assert model.generation_config.max_new_tokens == 3 and model.generation_config is not gen
    assert seen == ["Loading weights"]


def test_ignore_mismatched_sizes_initialises_only_those(saved, tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    data = json.loads((folder / "config.json").read_text())
    data["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes=True"):
        Phi3ForCausalLM.from_pretrained(folder)
    model = Phi3ForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True)
    names = {n for n, _, _ in model.loading_info["mismatched_keys"]}
    assert names and all(".mlp." in n for n in names)
    assert model.loading_info["missing_keys"] == []
    base = Phi3ForCausalLM.from_pretrained(saved)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
