"""Every code snippet of the seed docs (Hugging Face's Phi, Phi-3 and PhiMoE pages), run as written against
transformers and against phikit. Changes from the docs: the import (`lib.` instead of `transformers.`), hub ids ->
tiny local folders of the same family with the real tokenizer files, `device=0` / `device_map="auto"` /
`.to("cuda")` -> CPU. `SEEDS` maps each snippet (`<seed file>:<line of its import>`) to the row that runs it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.dropin.common import Idiom, check, params, transformers

import phikit

BANANAS = [{"role": "user", "content": "Can you provide ways to eat combinations of bananas and dragonfruits?"}]
PLANTS = [
    {"role": "system", "content": "You are a plant biologist."},
    {"role": "user", "content": "Can you explain how plants create energy?"},
    {"role": "assistant", "content": "Plants create energy through photosynthesis, which is a process that converts "
     "sunlight into chemical energy. During photosynthesis, plants use chlorophyll in their leaves to capture light "
     "energy from the sun. They combine this energy with carbon dioxide from the air and water from the soil to "
     "produce glucose (sugar) and oxygen. The glucose serves as the plant's food source and energy storage."},
    {"role": "user", "content": "What are the key components needed for photosynthesis?"},
]
PRIME = '''def print_prime(n):
   """
   Print all primes between 1 and n
   """'''


def phi3_chat_generate(lib, tok_lib, folder, **template_kwargs):  # 000:33
    model = lib.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(BANANAS, add_generation_prompt=True, return_tensors="pt",
                                           **template_kwargs)
    outputs = model.generate(inputs, max_new_tokens=32)
    return tokenizer.batch_decode(outputs)[0]


def phi3_chat_generate_ids(lib, tok_lib, folder):  # 000:33 for transformers 5: ids, not a BatchEncoding
    return phi3_chat_generate(lib, tok_lib, folder, return_dict=False)


def config_then_base_model(lib, _, folder, config_cls="Phi3Config", model_cls="Phi3Model"):  # 000:128
    configuration = getattr(lib, config_cls).from_pretrained(folder)
    model = getattr(lib, model_cls)(configuration)
    configuration = model.config
    shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return (type(model).__name__, type(configuration).__name__, configuration.hidden_size,
            configuration.num_hidden_layers, configuration.vocab_size, shapes)


def phi_config_then_base_model(lib, tok_lib, folder):  # 001:66, 003:177
    return config_then_base_model(lib, tok_lib, folder, "PhiConfig", "PhiModel")


def class_generate_max_length(lib, tok_lib, folder, cls="Phi3ForCausalLM",
                              prompt="Hey, are you conscious? Can you talk to me?"):  # 000:367, 001:335, 003:376
    model = getattr(lib, cls).from_pretrained(folder)
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(prompt, return_tensors="pt")
    generate_ids = model.generate(inputs.input_ids, max_length=30)
    return tokenizer.batch_decode(generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


def phi_generate_max_length(lib, tok_lib, folder):  # 001:335
    return class_generate_max_length(lib, tok_lib, folder, "PhiForCausalLM")


def phi_example_script(lib, tok_lib, folder):  # 003:376
    return class_generate_max_length(lib, tok_lib, folder, "PhiForCausalLM", "This is an example script .")


def _sampled_pipeline(pipeline, inputs):
    """The seeds call the pipeline with no decoding arguments: keep what can be compared of a sampled output (its
    shape, and whether it depends on the seed; those runs stop at 16 new tokens to keep the suite fast)."""
    first = pipeline(inputs)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(pipeline(inputs, max_new_tokens=16))
    text = first[0]["generated_text"]
    shape = [(r["role"], type(r["content"]).__name__) for r in text] if isinstance(text, list) else type(text).__name__
    return (type(first).__name__, len(first), sorted(first[0]), shape, outs[0] == outs[1], outs[0] == outs[2])


def phi_pipeline_bf16(lib, _, folder):  # 001:16
    pipeline = lib.pipeline(task="text-generation", model=str(folder), device="cpu", dtype=torch.bfloat16)
    # The seed's literal `"pipeline('''def print_prime(n): """ Print ... n"""''')"` is not valid Python (the inner
    # `"""` ends the string); this is the text it means, inner quotes escaped.
    prompt = "pipeline('''def print_prime(n): \"\"\" Print all primes between 1 and n\"\"\"''')"
    result = _sampled_pipeline(pipeline, prompt)
    return (*result, pipeline(prompt, max_new_tokens=4)[0]["generated_text"].startswith(prompt))


def phi_static_cache(lib, tok_lib, folder, dtype=torch.float16):  # 001:25
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    model = lib.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map="cpu",
                                                     attn_implementation="sdpa")
    input_ids = tokenizer(PRIME, return_tensors="pt").to(model.device)
    output = model.generate(**input_ids, cache_implementation="static")
    return input_ids.input_ids.shape[1] > 20, output.shape, tokenizer.decode(output[0], skip_special_tokens=True)


def phi_bnb_4bit(lib, tok_lib, folder):  # 001:49
    bnb_config = lib.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                        bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    model = lib.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map="cpu",
                                                     attn_implementation="sdpa", quantization_config=bnb_config)
    input_ids = tokenizer(PRIME, return_tensors="pt").to(model.device)
    output = model.generate(**input_ids, cache_implementation="static")
    return tokenizer.decode(output[0], skip_special_tokens=True)


def phi3_pipeline_text(lib, _, folder):  # 002:35
    pipeline = lib.pipeline(task="text-generation", model=str(folder), dtype="auto",)
    return _sampled_pipeline(pipeline, "Plants create energy through a process known as photosynthesis.")


def phi3_generate_max_length_50(lib, tok_lib, folder):  # 002:46
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    model = lib.AutoModelForCausalLM.from_pretrained(folder, dtype="auto",)
    inputs = tokenizer("Plants create energy through a process known as photosynthesis.", return_tensors="pt")
    outputs = model.generate(**inputs, max_length=50)
    return tokenizer.decode(outputs[0])


def phi2_no_attention_mask(lib, tok_lib, folder):  # 003:42
    model = lib.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer('Can you help me write a formal email to a potential business partner proposing a joint '
                       'venture?', return_tensors="pt", return_attention_mask=False)
    outputs = model.generate(**inputs, max_length=30)
    return tokenizer.batch_decode(outputs)[0]


def phi_use_cache_new_tokens(lib, tok_lib, folder, dtype=None, attn=None):  # 003:58 (003:91 on CPU)
    kwargs = {} if dtype is None else {"torch_dtype": dtype, "attn_implementation": attn}
    model = lib.PhiForCausalLM.from_pretrained(folder, **kwargs).to("cpu")
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer("If I were an AI that had just achieved", return_tensors="pt").to("cpu")
    generated_output = model.generate(**tokens, use_cache=True, max_new_tokens=10)
    return tokenizer.batch_decode(generated_output)[0]


def phi_flash_attention(lib, tok_lib, folder):  # 003:91, as written but for .to("cuda")
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        pytest.skip("transformers cannot run attn_implementation='flash_attention_2' here: it needs the flash-attn "
                    "package and a CUDA GPU (the CPU rewrite with sdpa is the row '003:91/sdpa')")
    return phi_use_cache_new_tokens(lib, tok_lib, folder, torch.float16, "flash_attention_2")


def phi_sdpa_fp32(lib, tok_lib, folder):  # 003:91 rewritten for a CPU: sdpa, float32
    return phi_use_cache_new_tokens(lib, tok_lib, folder, torch.float32, "sdpa")


def phi_token_classification(lib, tok_lib, folder):  # 003:643
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    model = lib.PhiForTokenClassification.from_pretrained(folder)
    inputs = tokenizer("HuggingFace is a company based in Paris and New York", add_special_tokens=False,
                       return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    predicted_token_class_ids = logits.argmax(-1)
    predicted_tokens_classes = [model.config.id2label[t.item()] for t in predicted_token_class_ids[0]]
    labels = predicted_token_class_ids
    loss = model(**inputs, labels=labels).loss
    return logits, predicted_tokens_classes, loss


def phimoe_pipeline_chat(lib, _, folder):  # 004:34
    pipeline = lib.pipeline(task="text-generation", model=str(folder), dtype="auto",)
    return _sampled_pipeline(pipeline, PLANTS)


def phimoe_chat_generate(lib, tok_lib, folder):  # 004:51
    tokenizer = tok_lib.AutoTokenizer.from_pretrained(folder)
    model = lib.AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    inputs = tokenizer.apply_chat_template(PLANTS, tokenize=True, return_tensors="pt")
    outputs = model.generate(**inputs, max_length=200)
    return tokenizer.decode(outputs[0], skip_special_tokens=True)


IDIOMS: list[Idiom] = [
    Idiom("000:33/return_dict=False", phi3_chat_generate_ids),
    Idiom("000:128", config_then_base_model),
    Idiom("000:367", class_generate_max_length),
    Idiom("001:16", phi_pipeline_bf16, model="phi"),
    Idiom("001:25", phi_static_cache, model="phi"),
    Idiom("001:25/fp32", lambda a, b, f: phi_static_cache(a, b, f, torch.float32), model="phi",),
    Idiom("001:66", phi_config_then_base_model, model="phi"),
    Idiom("001:335", phi_generate_max_length, model="phi"),
    Idiom("002:35", phi3_pipeline_text),
    Idiom("002:46", phi3_generate_max_length_50),
    Idiom("003:42", phi2_no_attention_mask, model="phi"),
    Idiom("003:58", phi_use_cache_new_tokens, model="phi"),
    Idiom("003:91", phi_flash_attention, model="phi"),
    Idiom("003:91/sdpa", phi_sdpa_fp32, model="phi"),
    Idiom("003:177", phi_config_then_base_model, model="phi"),
    Idiom("003:376", phi_example_script, model="phi"),
    Idiom("003:643", phi_token_classification, model="phi/tok"),
    Idiom("004:34", phimoe_pipeline_chat, model="phimoe"),
    Idiom("004:51", phimoe_chat_generate, model="phimoe"),
]

# seed snippet -> the rows (here, or `tests/dropin/test_cli_idioms.py` for the shell line) that run it
SEEDS: dict[str, tuple[str, ...]] = {
    "000_12ce4d9a145c3d2a:33": ("as-written:000:33", "000:33/return_dict=False"),  # + test_seed_000_33_as_written
    "000_12ce4d9a145c3d2a:128": ("000:128",),
    "000_12ce4d9a145c3d2a:367": ("000:367",),
    "001_040e7ef431021b04:16": ("001:16",),
    "001_040e7ef431021b04:25": ("001:25", "001:25/fp32"),
    "001_040e7ef431021b04:40": ("cli:run_text_classification",),
    "001_040e7ef431021b04:49": ("bnb:001:49",),  # test_seed_bnb_4bit
    "001_040e7ef431021b04:66": ("001:66",),
    "001_040e7ef431021b04:335": ("001:335",),
    "002_d0afb40c3a9e08b5:35": ("002:35",),
    "002_d0afb40c3a9e08b5:46": ("002:46",),
    "003_b4ae5bab1deb3444:42": ("003:42",),
    "003_b4ae5bab1deb3444:58": ("003:58",),
    "003_b4ae5bab1deb3444:91": ("003:91", "003:91/sdpa"),
    "003_b4ae5bab1deb3444:177": ("003:177",),
    "003_b4ae5bab1deb3444:376": ("003:376",),
    "003_b4ae5bab1deb3444:643": ("003:643",),
    "004_9591aaf8d95db4ff:34": ("004:34",),
    "004_9591aaf8d95db4ff:51": ("004:51",),
}


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_seed_snippet(idiom, folders):
    check(idiom, folders)


def test_seed_000_33_as_written(folders):
    """000:33 as written: transformers 5's apply_chat_template returns a BatchEncoding (return_dict=True is its
    default now) and its generate() cannot take one as `inputs` (it reads `.shape`), so the reference fails; the
    row '000:33/return_dict=False' runs what the snippet means. phikit takes either."""
    folder = folders["phi3"]
    with pytest.raises(AttributeError):
        phi3_chat_generate(transformers, transformers, folder)
    assert phi3_chat_generate(phikit, phikit, folder) == phi3_chat_generate_ids(transformers, transformers, folder)


def test_seed_bnb_4bit(folders):
    """001:49: BitsAndBytesConfig(load_in_4bit=True) needs the bitsandbytes package in transformers (and a CUDA GPU
    for its kernels); phikit refuses it the same way, with a clear ImportError that names the package and the
    CPU alternative, instead of silently quantizing some other way."""
    folder = folders["phi"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed: this checks the refusal without it")
    with pytest.raises(ImportError, match="bitsandbytes") as info:
        phi_bnb_4bit(phikit, phikit, folder)
    assert "Int4WeightOnlyConfig" in str(info.value)
    with pytest.raises(ImportError, match="bitsandbytes"):
        phi_bnb_4bit(transformers, transformers, folder)
