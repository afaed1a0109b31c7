"""Hostile config values and config.json files: each is a `ConfigError` naming the field (or file) and the fix; none
is accepted to surface later as NaN logits, and none ends in a generic exception."""

from __future__ import annotations

import json
import math

import pytest

import phikit
from phikit import Phi3Config, PhiConfig, PhimoeConfig
from phikit.config import config_from_dict
from phikit.errors import ConfigError
from tests.bad_inputs.harness import Case, expect_clear_error, params

NAN, INF = math.nan, math.inf

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            pad_token_id=0, eos_token_id=1, bos_token_id=2)


def longrope(**extra):
    rp = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    return {**rp, **extra}


def phi3(**kw):
    return lambda _: Phi3Config(**{**BASE, **kw})


def phi(**kw):
    return lambda _: PhiConfig(**{**BASE, "partial_rotary_factor": 0.5, **kw})


def moe(**kw):
    return lambda _: PhimoeConfig(**{**BASE, "num_key_value_heads": 2, "num_local_experts": 4, **kw})


def from_dict(data):
    return lambda _: config_from_dict(data)


CASES: list[Case] = []
# Non-finite and non-positive numbers: `x <= 0` lets NaN through, so each of these was accepted once.
for field, family in (("rope_theta", phi3), ("rms_norm_eps", phi3), ("layer_norm_eps", phi),
                      ("initializer_range", phi3), ("rms_norm_eps", moe)):
    for label, value in (("nan", NAN), ("inf", INF), ("-inf", -INF), ("zero", 0.0), ("negative", -1e-5),
                         ("string", "1e-5"), ("bool", True)):
        CASES.append(Case(f"{family.__name__}-{field}-{label}", family(**{field: value}), ConfigError, (field,)))
for field in ("short_factor", "long_factor"):
    for label, bad in (("nan", NAN), ("inf", INF), ("zero", 0.0), ("negative", -1.0), ("string", "2")):
        CASES.append(Case(f"longrope-{field}-{label}",
                          phi3(rope_parameters=longrope(**{field: [1.0, 1.0, bad, 1.0]}),
                               original_max_position_embeddings=16),
                          ConfigError, (field,)))
    CASES.append(Case(f"longrope-{field}-short-list", phi3(rope_parameters=longrope(**{field: [1.0]})), ConfigError,
                      (field, "4")))
    CASES.append(Case(f"longrope-{field}-not-list", phi3(rope_parameters=longrope(**{field: "1,1,1,1"})), ConfigError,
                      (field,)))
for field in ("attention_factor", "factor"):
    for label, value in (("nan", NAN), ("inf", INF), ("zero", 0)):
        CASES.append(Case(f"longrope-{field}-{label}", phi3(rope_parameters=longrope(**{field: value})), ConfigError,
                          (field,)))
for field in ("short_mscale", "long_mscale"):
    for label, value in (("nan", NAN), ("inf", INF), ("missing", None)):
        rp = longrope(**{"short_mscale": 1.1, "long_mscale": 1.2, field: value})
        CASES.append(Case(f"moe-{field}-{label}", moe(rope_parameters=rp, max_position_embeddings=64), ConfigError,
                          (field,)))
for field, value in (("partial_rotary_factor", NAN), ("partial_rotary_factor", 1.5), ("partial_rotary_factor", 0.0),
                     ("attention_dropout", NAN), ("attention_dropout", 2.0), ("resid_pdrop", -0.1),
                     ("router_jitter_noise", INF), ("router_aux_loss_coef", NAN)):
    family = moe if field.startswith("router") else phi3
    CASES.append(Case(f"{field}-{value}", family(**{field: value}), ConfigError, (field,)))
# Sizes: types, signs, and values past what int32 kernels index.
for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings"):
    for label, value in (("zero", 0), ("negative", -4), ("float", 32.0), ("huge", 2**40), ("string", "32")):
        CASES.append(Case(f"{field}-{label}", phi3(**{field: value}), ConfigError, (field,)))
for field, value, names in (("num_key_value_heads", 3, ("num_key_value_heads",)),
                            ("num_key_value_heads", 0, ("num_key_value_heads",)),
                            ("hidden_size", 30, ("hidden_size", "num_attention_heads")),
                            ("head_dim", 16, ("head_dim",)), ("head_dim", "8", ("head_dim",)),
                            ("sliding_window", 0, ("sliding_window",)), ("sliding_window", 1.5, ("sliding_window",)),
                            ("num_labels", 0, ("num_labels",)), ("num_labels", "2", ("num_labels",))):
    CASES.append(Case(f"{field}-{value!r}", phi3(**{field: value}), ConfigError, names))
# Token ids, names from registries (unhashable values once raised TypeError), flags.
for field, value in (("pad_token_id", -1), ("pad_token_id", 1.0), ("bos_token_id", "1"), ("eos_token_id", []),
                     ("eos_token_id", [1, -2]), ("eos_token_id", [1, "2"]), ("eos_token_id", True)):
    CASES.append(Case(f"{field}-{value!r}", phi3(**{field: value}), ConfigError, (field,)))
for field, value in (("hidden_act", ["silu"]), ("hidden_act", "swish2"), ("attn_implementation", {"x": 1}),
                     ("attn_implementation", "flash_attention_9"), ("longrope_policy", ["static"]),
                     ("problem_type", ["regression"]), ("problem_type", "ranking"), ("use_cache", "yes"),
                     ("tie_word_embeddings", 1), ("is_encoder_decoder", True), ("dtype", "int8"),
                     ("dtype", "floaty"), ("torch_dtype", 16), ("longrope_static_length", -1)):
    CASES.append(Case(f"{field}-{value!r}", phi3(**{field: value}), ConfigError, (field,)))
# Label maps: ids that are not integers, labels that are not strings, maps that are not maps.
for field, value in (("id2label", {"a": "POS"}), ("id2label", {"0": 1}), ("id2label", ["POS", "NEG"]),
                     ("id2label", {"-1": "X"}), ("label2id", {"POS": "zero"}), ("label2id", [1, 2])):
    CASES.append(Case(f"{field}-{value!r}", phi3(**{field: value}), ConfigError, (field,)))
# Rope dicts of the wrong shape or type.
for label, kw in (("rope-not-dict", {"rope_scaling": "longrope"}), ("rope-type-unknown", {"rope_scaling": {"type": "ntk"}}),
                  ("rope-type-list", {"rope_scaling": {"type": ["su"]}}),
                  ("rope-original-nan", {"rope_parameters": longrope(), "original_max_position_embeddings": NAN}),
                  ("rope-missing-long", {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 4}})):
    CASES.append(Case(label, phi3(**kw), ConfigError, ("rope",) if "original" not in label else ("original_max",)))
# Keys that would shadow the config's own methods and derived values.
for key in ("validate", "to_dict", "architecture", "rotary_dim", "uses_partial_rotary", "__class__", "use_return_dict",
            "FIELDS"):
    value = 3 if key != "rotary_dim" else 5
    CASES.append(Case(f"shadow-{key}", phi3(**{key: value}), ConfigError, (key,)))
# Whole dicts: not dicts, unknown families, legacy phi-msft configs with holes.
for label, data, names in (
        ("dict-is-list", [1, 2], ("list",)), ("dict-is-none", None, ("NoneType",)),
        ("model-type-list", {"model_type": ["phi3"]}, ("model_type",)),
        ("model-type-llama", {"model_type": "llama"}, ("model_type", "llama")),
        ("architectures-ints", {"architectures": [1, 2]}, ("architectures",)),
        ("architectures-str", {"architectures": "Phi3ForCausalLM"}, ("architectures",)),
        ("msft-no-n-embd", {"model_type": "phi-msft", "n_head": 4, "n_layer": 2}, ("n_embd",)),
        ("msft-rotary-str", {"model_type": "phi-msft", "n_embd": 32, "n_head": 4, "rotary_dim": "8"}, ("rotary_dim",)),
        ("msft-heads-zero", {"model_type": "phi-msft", "n_embd": 32, "n_head": 0}, ("n_head",))):
    CASES.append(Case(label, from_dict(data), ConfigError, names))


@pytest.mark.parametrize("case", params(CASES))
def test_config_value_is_a_clear_error(case):
    expect_clear_error(case)


def _write(folder, content: bytes | str):
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


FILE_CASES = [
    ("list", "[1, 2, 3]", ("config.json", "list")),
    ("string", '"phi3"', ("config.json",)),
    ("corrupt", '{"model_type": "phi3",', ("config.json", "JSON")),
    ("not-utf8", b'{"model_type": "phi3", "x": "\xff\xfe"}', ("config.json", "UTF-8")),
    ("deep", "[" * 100_000 + "]" * 100_000, ("config.json",)),
    ("empty", "", ("config.json",)),
    ("nan-literal", json.dumps({**BASE, "model_type": "phi3"}).replace('"vocab_size": 64', '"rope_theta": NaN, "vocab_size": 64'),
     ("rope_theta",)),
    ("infinity-eps", json.dumps({**BASE, "model_type": "phi3", "rms_norm_eps": 1e400}), ("rms_norm_eps",)),
]


@pytest.mark.parametrize("label,content,names", FILE_CASES, ids=[c[0] for c in FILE_CASES])
@pytest.mark.parametrize("reader", ["AutoConfig", "Phi3Config", "from_pretrained"])
def test_config_file_is_a_clear_error(tmp_path, label, content, names, reader):
    folder = _write(tmp_path, content)
    call = {"AutoConfig": lambda _: phikit.AutoConfig.from_pretrained(folder),
            "Phi3Config": lambda _: Phi3Config.from_pretrained(folder),
            "from_pretrained": lambda _: phikit.AutoModelForCausalLM.from_pretrained(folder)}[reader]
    expect_clear_error(Case(label, call, ConfigError, names))


def test_huge_config_file_is_refused_before_reading(tmp_path):
    from phikit.config_files import MAX_CONFIG_BYTES

    with open(tmp_path / "config.json", "wb") as f:
        f.seek(MAX_CONFIG_BYTES + 1)
        f.write(b" ")
    expect_clear_error(Case("huge", lambda _: phikit.AutoConfig.from_pretrained(tmp_path), ConfigError,
                            ("config.json", str(MAX_CONFIG_BYTES))))


def test_a_failed_override_leaves_the_config_as_it_was():
    config = Phi3Config(**BASE)
    before = config.to_dict()
    with pytest.raises(ConfigError, match="rope_theta"):
        Phi3Config.from_dict(before, rope_theta=math.nan)
    assert config.to_dict() == before


# Overrides given to from_pretrained / AutoConfig.from_pretrained go through the same checks (a property such as
# rope_theta once raised a bare AttributeError there).
OVERRIDE_CASES = [("rope_theta", NAN), ("rope_theta", -1.0), ("rms_norm_eps", INF), ("partial_rotary_factor", 2.0),
                  ("hidden_act", ["silu"]), ("num_labels", 0), ("initializer_range", NAN)]
EXTRA_CASES = FILE_CASES + OVERRIDE_CASES


@pytest.fixture(scope="module")
def saved_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("config")
    Phi3Config(**BASE).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("field,value", OVERRIDE_CASES, ids=[f"{k}={v!r}" for k, v in OVERRIDE_CASES])
@pytest.mark.parametrize("reader", ["AutoConfig", "Phi3Config"])
def test_overrides_are_checked_like_fields(saved_config, field, value, reader):
    before = (saved_config / "config.json").read_bytes()
    call = {"AutoConfig": lambda _: phikit.AutoConfig.from_pretrained(saved_config, **{field: value}),
            "Phi3Config": lambda _: Phi3Config.from_pretrained(saved_config, **{field: value})}[reader]
    expect_clear_error(Case(field, call, ConfigError, (field,)))
    assert (saved_config / "config.json").read_bytes() == before


def test_rope_overrides_are_applied_not_ignored(saved_config):
    config = phikit.AutoConfig.from_pretrained(saved_config, rope_theta=5e5, num_labels=3)
    assert config.rope_theta == 5e5 and config.num_labels == 3 and len(config.id2label) == 3
