"""Config and model-object idioms: the attributes and helpers user code reads off a loaded model and its config."""

from __future__ import annotations

import tempfile

import pytest
import torch
from safetensors import safe_open

from tests.dropin.common import FAMILIES, Idiom, check, load, params



def name_or_path(lib, _, folder):
    config = load(lib, folder).config
    return config.name_or_path == str(folder), config._name_or_path == str(folder)


def is_encoder_decoder(lib, _, folder):
    return load(lib, folder).config.is_encoder_decoder


def config_dtype(lib, _, folder):
    dtype = load(lib, folder).config.dtype
    return isinstance(dtype, torch.dtype), str(dtype)


def config_dtype_bf16(lib, _, folder):
    model = load(lib, folder, dtype=torch.bfloat16)
    return isinstance(model.config.dtype, torch.dtype), str(model.config.dtype), model.dtype


def to_dict_keys(lib, _, folder):
    d = load(lib, folder).config.to_dict()
    return d.get("_name_or_path") == str(folder), d["model_type"], d["architectures"]


def auto_config(lib, _, folder):
    c = lib.AutoConfig.from_pretrained(folder)
    return (type(c).__name__, c.model_type, c.vocab_size, c.hidden_size, c.num_hidden_layers,
            c.num_attention_heads, c.num_key_value_heads, c.max_position_embeddings, c.tie_word_embeddings)


def config_round_trip(lib, _, folder):
    c = lib.AutoConfig.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        c.save_pretrained(tmp)
        again = type(c).from_pretrained(tmp)
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "bos_token_id", "eos_token_id", "pad_token_id",
            "tie_word_embeddings", "max_position_embeddings")
    return [getattr(again, k) for k in keys], again.to_dict()["model_type"]


def family_defaults(lib, _, folder):
    """`Phi3Config()` / `PhiConfig()` / `PhimoeConfig()` with no arguments: the real checkpoints' shapes."""
    family = lib.AutoConfig.from_pretrained(folder).model_type
    cls = {"phi": lib.PhiConfig, "phi3": lib.Phi3Config, "phimoe": lib.PhimoeConfig}[family]
    c = cls()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id",
            "tie_word_embeddings", "hidden_act", "use_cache")
    return {k: getattr(c, k) for k in keys}


def config_kwargs(lib, _, folder):
    c = lib.Phi3Config(hidden_size=48, num_attention_heads=6, num_hidden_layers=3, vocab_size=100)
    return c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers, c.vocab_size


def architectures(lib, _, folder):
    return load(lib, folder).config.architectures


def label_maps(lib, _, folder):
    c = load(lib, folder, "AutoModelForTokenClassification").config
    return c.num_labels, {int(k): v for k, v in c.id2label.items()}, dict(c.label2id)


def num_parameters(lib, _, folder):
    model = load(lib, folder)
    return model.num_parameters(), model.num_parameters(only_trainable=True)


def num_parameters_no_embeddings(lib, _, folder):
    return load(lib, folder).num_parameters(exclude_embeddings=True)


def embeddings(lib, _, folder):
    model = load(lib, folder)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return (type(inp).__name__, inp.weight.shape, type(out).__name__, out.weight.shape,
            inp.weight.data_ptr() == out.weight.data_ptr())


def embeddings_lookup(lib, _, folder):
    model = load(lib, folder)
    return model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))


def tied_head_saved(lib, _, folder):
    """A tied checkpoint saves one matrix, and loading it ties the head again."""
    model = load(lib, folder)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        with safe_open(f"{tmp}/model.safetensors", "pt") as f:
            keys = "lm_head.weight" in set(f.keys())
        again = load(lib, tmp)
    return (keys, again.get_output_embeddings().weight.data_ptr() == again.get_input_embeddings().weight.data_ptr(),
            again(torch.tensor([[5, 6, 7]])).logits)


def resize_token_embeddings(lib, _, folder):
    model = load(lib, folder)
    old = model.get_input_embeddings().weight[:10].clone()
    model.resize_token_embeddings(model.config.vocab_size + 8)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return (model.config.vocab_size, emb.shape, head.shape, torch.equal(emb[:10], old),
            model(torch.tensor([[1, 2]])).logits.shape)


def resize_pad_multiple(lib, _, folder):
    model = load(lib, folder)
    emb = model.resize_token_embeddings(model.config.vocab_size + 3, pad_to_multiple_of=64)
    return type(emb).__name__, emb.weight.shape, model.config.vocab_size


def model_dtype_device(lib, _, folder):
    model = load(lib, folder)
    return model.dtype, str(model.device), model.training


def from_pretrained_dtype(lib, _, folder):
    model = load(lib, folder, dtype=torch.bfloat16)
    return model.dtype, {p.dtype for p in model.parameters()} == {torch.bfloat16}


def dtype_auto(lib, _, folder):
    return load(lib, folder, dtype="auto").dtype


def generation_config_ids(lib, _, folder):
    g = load(lib, folder).generation_config
    return g.bos_token_id, g.eos_token_id, g.pad_token_id


def state_dict_names(lib, _, folder):
    state = load(lib, folder).state_dict()
    return sorted(state), [tuple(state[k].shape) for k in sorted(state)]


def config_attribute_set(lib, _, folder):
    model = load(lib, folder)
    model.config.output_hidden_states = True
    out = model(torch.tensor([[1, 2, 3]]))
    return len(out.hidden_states), out.hidden_states[-1].shape


def from_config(lib, _, folder):
    config = lib.AutoConfig.from_pretrained(folder)
    model = lib.AutoModelForCausalLM.from_config(config)
    return type(model).__name__, sorted(k for k, _ in model.named_parameters())


IDIOMS: list[Idiom] = [
    Idiom("name_or_path", name_or_path),
    Idiom("is_encoder_decoder", is_encoder_decoder),
    Idiom("config_dtype", config_dtype),
    Idiom("config_dtype_bf16", config_dtype_bf16),
    Idiom("to_dict_keys", to_dict_keys),
    *[Idiom(f"auto_config/{f}", auto_config, model=f) for f in FAMILIES],
    *[Idiom(f"config_round_trip/{f}", config_round_trip, model=f) for f in FAMILIES],
    *[Idiom(f"family_defaults/{f}", family_defaults, model=f) for f in FAMILIES],
    Idiom("config_kwargs", config_kwargs),
    Idiom("architectures", architectures),
    Idiom("label_maps", label_maps, model="phi/tok"),
    *[Idiom(f"num_parameters/{f}", num_parameters, model=f) for f in FAMILIES],
    Idiom("num_parameters_no_embeddings", num_parameters_no_embeddings),
    Idiom("embeddings", embeddings),
    Idiom("embeddings/tied", embeddings, model="tied"),
    Idiom("embeddings_lookup", embeddings_lookup),
    Idiom("tied_head_saved", tied_head_saved, model="tied"),
    Idiom("resize_token_embeddings", resize_token_embeddings),
    Idiom("resize_pad_multiple", resize_pad_multiple),
    Idiom("model_dtype_device", model_dtype_device),
    Idiom("from_pretrained_dtype", from_pretrained_dtype),
    Idiom("dtype_auto", dtype_auto),
    Idiom("generation_config_ids", generation_config_ids),
    *[Idiom(f"state_dict_names/{f}", state_dict_names, model=f) for f in ("phi", "phi3")],
    Idiom("config_attribute_set", config_attribute_set),
    Idiom("from_config", from_config),
]


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_config_idiom(idiom, folders):
    check(idiom, folders)
