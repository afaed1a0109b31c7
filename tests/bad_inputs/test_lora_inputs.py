"""Hostile LoRA adapters and apply_lora settings: a corrupt or inconsistent adapter_config.json, ranks that disagree
with the tensors, options phikit does not run, tensors that do not fit. Each is a clear error naming the file, field
or tensor, and the model is exactly as it was afterwards (nothing patched, nothing frozen)."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import phikit
from phikit.lora import AdapterError, LoRALinear, apply_lora, load_adapter, lora_modules, save_adapter
from phikit.weights.checkpoint import CheckpointError
from phikit.weights.rollback import Rollback

from .harness import Case, assert_model_unchanged, expect_clear_error, model_snapshot, params, tiny_config

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
QKV0 = "base_model.model.model.layers.0.self_attn.qkv_proj"


def fresh_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return phikit.Phi3ForCausalLM(tiny_config("phi3", vocab_size=128, **overrides)).eval()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> pathlib.Path:
    """A valid adapter (r=4, alpha=8) on qkv_proj, o_proj, gate_up_proj, down_proj of the tiny model."""
    folder = tmp_path_factory.mktemp("adapter")
    model = fresh_model(1)
    apply_lora(model, r=4, alpha=8, init_lora_weights=False)
    save_adapter(model, folder)
    return folder


class Ctx:
    def __init__(self, source: pathlib.Path, scratch: pathlib.Path) -> None:
        self.source, self.scratch, self.model = source, scratch, fresh_model()
        self.tied = fresh_model(tie_word_embeddings=True)

    def folder(self, config: dict | None = None, text: str | bytes | None = None, tensors=None,
               remove: tuple[str, ...] = ()) -> pathlib.Path:
        target = self.scratch / "adapter"
        shutil.copytree(self.source, target)
        if config is not None:
            data = json.loads((target / CONFIG).read_text())
            data.update(config)
            (target / CONFIG).write_text(json.dumps(data))
        if text is not None:
            (target / CONFIG).write_bytes(text if isinstance(text, bytes) else text.encode())
        if tensors is not None:
            state = load_file(target / WEIGHTS)
            tensors(state)
            save_file(state, target / WEIGHTS)
        for name in remove:
            (target / name).unlink()
        return target


@pytest.fixture
def ctx(adapter, tmp_path) -> Ctx:
    return Ctx(adapter, tmp_path)


def cfg(id: str, changes: dict, *names: str, error=AdapterError) -> Case:
    return Case(id, lambda c: load_adapter(c.model, c.folder(config=changes)), error, (CONFIG, *names))


def text(id: str, body: str | bytes, *names: str) -> Case:
    return Case(id, lambda c: load_adapter(c.model, c.folder(text=body)), AdapterError, (CONFIG, *names))


def edit(id: str, fn, *names: str, error=AdapterError) -> Case:
    return Case(id, lambda c: load_adapter(c.model, c.folder(tensors=fn)), error, tuple(names))


def _set(key: str, value: torch.Tensor):
    return lambda s: s.__setitem__(key, value)


def _drop(key: str):
    return lambda s: s.pop(key)


def _rank_everywhere(r: int):
    def fn(s):
        for k in list(s):
            s[k] = (s[k][:r] if ".lora_A." in k else s[k][:, :r]).contiguous()
    return fn


CONFIG_CASES = [
    text("config-corrupt-json", '{"peft_type": "LORA", ', "JSONDecodeError"),
    text("config-not-utf8", b'{"peft_type": "\xff"}', "UnicodeDecodeError"),
    text("config-empty", "", "could not be read"),
    text("config-list", '["LORA"]', "list"),
    text("config-deep-nesting", "[" * 100_000 + "]" * 100_000, "could not be read"),
    cfg("peft-type-ia3", {"peft_type": "IA3"}, "peft_type='IA3'"),
    cfg("peft-type-missing", {"peft_type": None}, "peft_type=None"),
    cfg("r-disagrees-with-tensors", {"r": 8}, "lora_A.weight", "has shape (4, ", "r=8"),
    cfg("rank-pattern-disagrees", {"rank_pattern": {"o_proj": 2}}, "o_proj.lora_A.weight", "rank_pattern=2"),
    cfg("r-zero", {"r": 0}, "r=0"),
    cfg("r-negative", {"r": -4}, "r=-4"),
    cfg("r-string", {"r": "4"}, "r='4'"),
    cfg("r-float", {"r": 4.0}, "r=4.0"),
    cfg("r-bool", {"r": True}, "r=True"),
    cfg("alpha-string", {"lora_alpha": "8"}, "lora_alpha='8'"),
    text("alpha-nan", json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": math.nan}), "lora_alpha=nan"),
    text("alpha-infinite", json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": math.inf}), "lora_alpha=inf"),
    cfg("dropout-above-one", {"lora_dropout": 1.5}, "lora_dropout=1.5"),
    cfg("dropout-negative", {"lora_dropout": -0.1}, "lora_dropout=-0.1"),
    text("dropout-nan", json.dumps({"peft_type": "LORA", "r": 4, "lora_dropout": math.nan}), "lora_dropout=nan"),
    cfg("rslora-string", {"use_rslora": "yes"}, "use_rslora='yes'"),
    cfg("rank-pattern-list", {"rank_pattern": ["o_proj"]}, "rank_pattern"),
    cfg("rank-pattern-zero", {"rank_pattern": {"o_proj": 0}}, "rank_pattern['o_proj']=0"),
    cfg("rank-pattern-bad-regex", {"rank_pattern": {"((": 2}}, "rank_pattern", "'(('"),
    cfg("alpha-pattern-string", {"alpha_pattern": {"o_proj": "x"}}, "alpha_pattern['o_proj']='x'"),
    cfg("alpha-pattern-bad-regex", {"alpha_pattern": {"[": 2}}, "alpha_pattern", "'['"),
    cfg("target-modules-number", {"target_modules": 5}, "target_modules=5"),
    cfg("target-modules-bad-regex", {"target_modules": "(["}, "target_modules"),
    cfg("uses-dora", {"use_dora": True}, "use_dora=True", "DoRA"),
    cfg("fan-in-fan-out", {"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    cfg("lora-bias", {"lora_bias": True}, "lora_bias=True"),
    cfg("bias-all", {"bias": "all"}, "bias='all'"),
    cfg("bias-lora-only", {"bias": "lora_only"}, "bias='lora_only'"),
    cfg("modules-to-save", {"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
    cfg("target-parameters", {"target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters"),
    cfg("trainable-token-indices", {"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
    cfg("layer-replication", {"layer_replication": [[0, 1]]}, "layer_replication"),
    cfg("qalora", {"use_qalora": True}, "use_qalora=True"),
    cfg("unknown-option-on", {"use_fancy_scaling": True}, "use_fancy_scaling=True"),
    cfg("init-pissa", {"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
    cfg("init-olora", {"init_lora_weights": "olora"}, "init_lora_weights='olora'"),
]

TENSOR_CASES = [
    edit("tensor-not-lora", _set("base_model.model.lm_head.weight", torch.zeros(2, 2)), "lm_head.weight"),
    edit("lora-a-without-b", _drop(f"{QKV0}.lora_B.weight"), "qkv_proj", "lora_A"),
    edit("rank-of-a-and-b-disagree", _set(f"{QKV0}.lora_B.weight", torch.zeros(96, 3)), "qkv_proj.lora_A.weight",
         "qkv_proj.lora_B.weight", "(96, 3)"),
    edit("a-wrong-in-features", _set(f"{QKV0}.lora_A.weight", torch.zeros(4, 48)), "qkv_proj", "(4, 48)", "[96, 32]"),
    edit("b-wrong-out-features", _set(f"{QKV0}.lora_B.weight", torch.zeros(90, 4)), "qkv_proj", "(90, 4)"),
    edit("layer-absent", lambda s: s.update({k.replace("layers.0", "layers.9"): v.clone() for k, v in list(s.items())
                                             if "layers.0." in k}), "layers.9", "does not have"),
    edit("tensor-int", _set(f"{QKV0}.lora_A.weight", torch.zeros(4, 32, dtype=torch.int32)), "qkv_proj.lora_A",
         "torch.int32"),
    edit("tensor-1d", _set(f"{QKV0}.lora_A.weight", torch.zeros(128)), "qkv_proj.lora_A", "(128,)"),
    edit("tensor-3d", _set(f"{QKV0}.lora_A.weight", torch.zeros(1, 4, 32)), "qkv_proj.lora_A", "(1, 4, 32)"),
    edit("tensor-nan", _set(f"{QKV0}.lora_A.weight", torch.full((4, 32), math.nan)), "qkv_proj.lora_A", "NaN"),
    edit("tensor-inf", _set(f"{QKV0}.lora_B.weight", torch.full((96, 4), math.inf)), "qkv_proj.lora_B", "infinite"),
    edit("all-ranks-disagree-with-r", _rank_everywhere(2), "lora_A.weight", "r=4"),
    edit("split-part-wrong-rows", lambda s: [s.pop(k) for k in list(s) if "qkv_proj" in k] and s.update({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(40, 4)}),
         "q_proj", "(40, 4)", "rows [0, 32)"),
    Case("weights-missing", lambda c: load_adapter(c.model, c.folder(remove=(WEIGHTS,))), OSError, (WEIGHTS,)),
    Case("weights-only-bin", lambda c: load_adapter(c.model, _bin_only(c)), OSError, ("adapter_model.bin",
                                                                                     "safe_serialization")),
    Case("weights-corrupt-header", lambda c: load_adapter(c.model, _corrupt(c)), CheckpointError, (WEIGHTS,)),
    Case("config-missing", lambda c: load_adapter(c.model, c.folder(remove=(CONFIG,))), OSError, (CONFIG,)),
    Case("folder-not-a-path", lambda c: load_adapter(c.model, 5), AdapterError, ("int",)),
    Case("is-trainable-string", lambda c: load_adapter(c.model, c.folder(), is_trainable="yes"), ValueError,
         ("is_trainable='yes'",)),
    Case("model-has-other-adapters", lambda c: load_adapter(_with_head_adapter(c), c.folder()), AdapterError,
         ("lm_head", "merge_lora")),
]


def _bin_only(c: Ctx) -> pathlib.Path:
    folder = c.folder(remove=(WEIGHTS,))
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    return folder


def _corrupt(c: Ctx) -> pathlib.Path:
    folder = c.folder()
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[8:12] = b"[[[["
    (folder / WEIGHTS).write_bytes(bytes(data))
    return folder


def _with_head_adapter(c: Ctx) -> torch.nn.Module:
    apply_lora(c.model, r=2, target_modules=["lm_head"])
    return c.model


def apply(id: str, names: tuple[str, ...], error=ValueError, **kwargs) -> Case:
    return Case(id, lambda c: apply_lora(c.model, **kwargs), error, names)


def _tied(c: Ctx) -> None:
    apply_lora(c.tied, target_modules=["qkv_proj", "lm_head"])


APPLY_CASES = [
    apply("apply-r-zero", ("r=0",), r=0),
    apply("apply-r-negative", ("r=-1",), r=-1),
    apply("apply-r-float", ("r=2.5",), r=2.5),
    apply("apply-r-bool", ("r=True",), r=True),
    apply("apply-alpha-nan", ("alpha=nan",), alpha=math.nan),
    apply("apply-alpha-string", ("alpha='16'",), alpha="16"),
    apply("apply-dropout-one", ("dropout=1.0",), dropout=1.0),
    apply("apply-dropout-nan", ("dropout=nan",), dropout=math.nan),
    apply("apply-rslora-string", ("use_rslora='yes'",), use_rslora="yes"),
    apply("apply-init-pissa", ("init_lora_weights='pissa'",), init_lora_weights="pissa"),
    apply("apply-no-match", ("query_key_value", "qkv_proj"), target_modules=["query_key_value"]),
    apply("apply-not-linear", ("not nn.Linear",), target_modules=["mlp"]),
    Case("apply-tied-head", _tied, ValueError, ("lm_head", "tie_word_embeddings")),
]

CASES = CONFIG_CASES + TENSOR_CASES + APPLY_CASES


@pytest.mark.parametrize("case", params(CASES))
def test_bad_adapter_is_a_clear_error_and_leaves_the_model_as_it_was(case, ctx) -> None:
    before, tied = model_snapshot(ctx.model), model_snapshot(ctx.tied)
    expect_clear_error(case, ctx)
    assert_model_unchanged(ctx.tied, tied)
    if case.id == "model-has-other-adapters":
        return  # the case put an adapter on first; test_other_adapters_check_changes_nothing checks the rest
    assert_model_unchanged(ctx.model, before)
    assert not lora_modules(ctx.model) and not hasattr(ctx.model, "lora_config")


def test_failed_load_keeps_the_adapter_already_loaded(ctx) -> None:
    load_adapter(ctx.model, ctx.folder(), is_trainable=True)
    before = model_snapshot(ctx.model)
    config = ctx.model.lora_config
    bad = ctx.scratch / "bad"
    shutil.copytree(ctx.source, bad)
    data = json.loads((bad / CONFIG).read_text())
    (bad / CONFIG).write_text(json.dumps({**data, "rank_pattern": {"down_proj": 3}}))
    with pytest.raises(AdapterError, match="down_proj.*rank_pattern=3"):
        load_adapter(ctx.model, bad)
    assert_model_unchanged(ctx.model, before)
    assert ctx.model.lora_config is config


def test_other_adapters_check_changes_nothing(ctx) -> None:
    apply_lora(ctx.model, r=2, target_modules=["lm_head"])
    before = model_snapshot(ctx.model)
    with pytest.raises(AdapterError, match="lm_head"):
        load_adapter(ctx.model, ctx.folder())
    assert_model_unchanged(ctx.model, before)


def test_rollback_puts_a_half_patched_model_back() -> None:
    """What load_adapter / apply_lora do if installing fails part-way: the real patching steps, then restore."""
    model = fresh_model()
    apply_lora(model, r=2, target_modules=["o_proj"])
    before = model_snapshot(model)
    state = Rollback(model, keep=lora_modules(model).values(), attrs=("lora_config", "_lora_frozen"))
    for p in model.parameters():
        p.requires_grad_(not p.requires_grad)
    layer = model.model.layers[0].self_attn
    layer.qkv_proj = LoRALinear(layer.qkv_proj, 3, 6.0)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.lora_A.weight.add_(1.0)
    model.model.layers[1].self_attn.o_proj.scaling = 99.0
    del model.lora_config
    state.restore()
    assert_model_unchanged(model, before)
    assert model.model.layers[1].self_attn.o_proj.scaling == 16 / 2 and hasattr(model, "lora_config")


def test_consistent_rank_pattern_loads(ctx) -> None:
    """The check is not stricter than PEFT: a per-module rank given by rank_pattern loads."""
    source = fresh_model(2)
    apply_lora(source, r=4, alpha=8, target_modules=["o_proj"], init_lora_weights=False)
    small = LoRALinear(torch.nn.Linear(32, 32), 2, 8.0)  # layer 0 gets rank 2: save_adapter writes a rank_pattern
    source.model.layers[0].self_attn.o_proj = small
    small.reset_lora_parameters(False)
    folder = ctx.scratch / "patterned"
    save_adapter(source, folder)
    assert json.loads((folder / CONFIG).read_text())["rank_pattern"]
    load_adapter(ctx.model, folder)
    assert ctx.model.model.layers[0].self_attn.o_proj.r == 2 and ctx.model.model.layers[1].self_attn.o_proj.r == 4
