"""Which of transformers 5's `PreTrainedModel.from_pretrained` arguments phikit honours, ignores, or refuses.

Every argument transformers documents (or pops from its keywords) is classified here, so none of them becomes a
silent config attribute (`load_in_4bit=True` must not load an unquantized model):

* honoured by `load_pretrained` itself (explicit parameters): config, cache_dir, ignore_mismatched_sizes,
  local_files_only, token, revision, use_safetensors, weights_only (True), disable_mmap, output_loading_info, dtype,
  torch_dtype, device_map (one device), quantization_config, subfolder, variant, generation_config, tqdm_class,
  attn_implementation, tp_plan ("auto"), tp_size and device_mesh (tensor parallelism, phikit/parallel),
  trust_remote_code (never runs code: phikit implements every Phi family itself),
  low_cpu_mem_usage (phikit always loads on the meta device first), force_download and proxies (for a local folder
  nothing is downloaded, so they change nothing; for a hub id they are refused, below);
* `NO_OPS`: accepted where they change nothing a user can observe (each says why);
* `REFUSED`: an error naming the argument and what to do instead, unless it has its harmless default value.

Anything else is a config override (set on the config, as transformers does).
"""

from __future__ import annotations

from typing import Any, Callable

TP = ("distributed_config (FSDP) is not built in phikit; drop it (tensor parallelism: tp_plan='auto'; or pass "
      "device_map='cuda:N' for one GPU)")

# argument -> why accepting it changes nothing observable
NO_OPS: dict[str, str] = {
    "_from_pipeline": "telemetry tag of transformers' pipelines",
    "_from_auto": "telemetry tag of transformers' Auto classes",
    "_commit_hash": "transformers 5 no longer uses it (revision is resolved instead)",
    "mirror": "ignored by transformers 5 as well",
    "_fast_init": "ignored by transformers 5 as well; phikit never initialises weights it then overwrites",
    "offload_state_dict": "ignored by transformers 5 as well; phikit holds one copy of the weights while loading",
}


def _default(*values: Any) -> Callable[[Any], bool]:
    return lambda v: any(v is x or (type(v) is type(x) and v == x) for x in values)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, (dict, list, tuple)) and not v)


# argument -> (is this value harmless?, what to do instead)
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "load_in_4bit": (_default(False, None), "pass quantization_config=phikit.Int4WeightOnlyConfig(group_size=64) for "
                     "4-bit weights (or phikit.BitsAndBytesConfig(load_in_4bit=True), which names the same "
                     "alternative where bitsandbytes cannot run)"),
    "load_in_8bit": (_default(False, None), "pass quantization_config=phikit.Int8WeightOnlyConfig() for 8-bit weights "
                     "(or phikit.BitsAndBytesConfig(load_in_8bit=True))"),
    "distributed_config": (_default(None), TP),
    "max_memory": (_empty, "phikit places the whole model on one device and does not cap memory per device; drop "
                   "it, or quantize (quantization_config=phikit.Int4WeightOnlyConfig()) to fit a smaller budget"),
    "offload_folder": (_default(None), "phikit does not offload weights to disk; drop it (the weights are mapped "
                       "from the checkpoint file copy-on-write, so memory holds about one copy)"),
    "offload_buffers": (_default(False, None), "phikit does not offload; drop it"),
    "state_dict": (_default(None), "build the model and load the tensors: model = cls(config); "
                   "model.load_state_dict(state_dict)"),
    "gguf_file": (_default(None), "phikit loads safetensors and pytorch_model.bin checkpoints (it writes GGUF with "
                  "`phikit export`); convert the GGUF file to a Hugging Face checkpoint first"),
    "key_mapping": (_empty, "rename the tensors once (load them, rename, save with safetensors.torch.save_file) so "
                    "they carry the Hugging Face names"),
    "adapter_kwargs": (_empty, "load the base model, then phikit.lora.load_adapter(model, adapter_folder)"),
    "adapter_name": (_default("default", None), "phikit holds one LoRA adapter per model: "
                     "phikit.lora.load_adapter(model, adapter_folder)"),
    "fusion_config": (_empty, "phikit has no fusion passes (its kernels are chosen per device); drop it"),
    "use_kernels": (_default(False, None), "phikit does not load hub kernels (it ships its own CPU kernels and "
                    "chooses them itself); drop it"),
    "kernel_config": (_default(None), "phikit does not load hub kernels; drop it"),
    "allow_all_kernels": (_default(False, None), "phikit does not load hub kernels; drop it"),
    "experts_implementation": (_default(None, "eager"), "phikit runs PhiMoE experts one after another, as "
                               "transformers' 'eager'; pass experts_implementation='eager' or drop it"),
    "from_tf": (_default(False, None), "phikit reads safetensors and pytorch_model.bin only; convert the TensorFlow "
                "checkpoint with transformers first"),
    "from_flax": (_default(False, None), "phikit reads safetensors and pytorch_model.bin only; convert the Flax "
                  "checkpoint with transformers first"),
    "use_auth_token": (_default(None), "pass token=... (use_auth_token was renamed to token)"),
}
BNB_PREFIXES = ("bnb_4bit_", "llm_int8_")


def screen_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse arguments phikit does not honour (ValueError naming the argument and the alternative), drop the no-ops;
    return the rest (config overrides). `kwargs` is not changed."""
    rest = {}
    for key, value in kwargs.items():
        if key in NO_OPS:
            continue
        if key in REFUSED:
            harmless, instead = REFUSED[key]
            if not harmless(value):
                raise ValueError(f"from_pretrained({key}={value!r:.80}) is not supported by phikit: {instead}")
            continue
        if key.startswith(BNB_PREFIXES):
            raise ValueError(f"from_pretrained({key}={value!r:.80}) is a bitsandbytes option; phikit does not read "
                             f"it from keywords: pass quantization_config=phikit.Int4WeightOnlyConfig(group_size=64) "
                             f"or phikit.Int8WeightOnlyConfig() (or phikit.BitsAndBytesConfig({key}=...))")
        rest[key] = value
    return rest


def check_network_arguments(is_local: bool, force_download: Any, proxies: Any) -> None:
    """force_download and proxies change nothing for a local folder; for a hub id phikit's download helper honours
    neither, so they are refused rather than ignored."""
    if force_download not in (False, None, True):
        raise ValueError(f"force_download={force_download!r} must be True or False")
    if is_local:
        return
    if force_download:
        raise ValueError("from_pretrained(force_download=True) is not supported by phikit's hub download: delete the "
                         "cached snapshot (huggingface-cli delete-cache) or run huggingface_hub.snapshot_download("
                         "repo_id, force_download=True) and pass the folder it returns")
    if proxies is not None:
        raise ValueError(f"from_pretrained(proxies={proxies!r:.80}) is not supported by phikit's hub download: set the "
                         f"HTTPS_PROXY / HTTP_PROXY environment variables, which huggingface_hub reads")
