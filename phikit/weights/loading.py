"""`from_pretrained` and `save_pretrained`: build on the meta device, fill from the checkpoint, account for every
tensor.

The accountant: every model parameter must be filled and every checkpoint tensor consumed, with matching shapes;
otherwise `CheckpointError` lists the names and the fix, before any weight is read. With `strict=False` what fits is
loaded, the rest is initialised and reported in `model.loading_info`. A head the checkpoint does not have (e.g.
`score` when a causal-LM checkpoint is loaded for classification) is always initialised and reported, and the
checkpoint's `lm_head` is then skipped, as transformers does: that is how fine-tuning starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, CheckpointReader, find_weight_files
from ..config import PhiKitConfig
from ..cpu import hugepages
from ..formats import lossless
from ..cpu.gemm import FastLinear
from ..ops.backends import prepare as prepare_for_device
from ..generation_config import GenerationConfig
from .load_options import (DTYPES, pick_dtype, resolve_checkpoint_folder, resolve_config, resolve_device,
                           resolve_dtype, resolve_generation_config)
from .pretrained_args import check_network_arguments, screen_arguments
from ..formats.lossless import LosslessBf16Config
from .name_maps import plan_sources
from ..parallel import Shard, shard_for_loading, wants_tp
from ..parallel import finish as finish_tensor_parallel
from ..parallel.group import device_for_rank
from ..formats.configs import config_from_dict as quant_config_from_dict
from ..formats.configs import resolve_quantization_config
from ..formats.streaming import StreamingQuantizer, finalize_quantized_model, prepare_quantized_model

HEAD_PREFIXES = ("lm_head.", "score.")
@contextlib.contextmanager
def _skip_init():
    """Constructors and `post_init` initialise weights; on the meta device before loading that is wasted work
    (and slow through meta kernels), so the torch.nn.init functions do nothing inside this block."""
    names = ("normal_", "uniform_", "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_",
             "xavier_uniform_", "xavier_normal_", "constant_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = module._parameters.get(leaf)
    if old is not None:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[leaf] = value


def _short(names: list[str], limit: int = 8) -> str:
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_pretrained(cls, path_or_id: str | os.PathLike, *, config: PhiKitConfig | str | os.PathLike | None = None,
                    dtype: Any = None, torch_dtype: Any = None, device_map: Any = None,
                    attn_implementation: str | None = None, revision: str | None = None,
                    local_files_only: bool = False, trust_remote_code: bool = False, strict: bool = True,
                    output_loading_info: bool = False, quantization_config: Any = None, cache_dir: str | None = None,
                    token: str | bool | None = None, low_cpu_mem_usage: bool | None = None,
                    show_progress: bool = False, subfolder: str = "", variant: str | None = None,
                    use_safetensors: bool | None = None, ignore_mismatched_sizes: bool = False,
                    weights_only: bool = True, disable_mmap: bool | None = None, generation_config: Any = None,
                    tqdm_class: Any = None, force_download: bool = False, proxies: dict | None = None,
                    tp_plan: str | None = None, tp_size: int | None = None, device_mesh: Any = None,
                    **config_overrides: Any):
    """Load `cls` (a phikit model class) from a local folder or hub id. `trust_remote_code` is accepted for
    compatibility and never executes code: phikit implements every Phi family itself. transformers' other
    arguments are honoured or refused by name (`pretrained_args.py`); the rest are config overrides. Everything is
    checked before any weight is read, and the caller's `config=` object is never changed. `tp_plan="auto"` loads
    this rank's shard for tensor parallelism (phikit/parallel), reading only its slices of the checkpoint."""
    overrides = screen_arguments(config_overrides)
    if weights_only is not True:
        raise ValueError(f"weights_only={weights_only!r}: phikit reads pytorch_model.bin weights-only (no pickled "
                         f"code runs) and cannot do otherwise; convert the checkpoint to safetensors")
    if tqdm_class is not None and not callable(tqdm_class):
        raise ValueError(f"tqdm_class={tqdm_class!r:.80} must be a tqdm-like class")
    check_network_arguments(os.path.isdir(os.fspath(path_or_id)) if isinstance(path_or_id, (str, os.PathLike))
                            else False, force_download, proxies)
    requested_dtype = pick_dtype(dtype, torch_dtype)
    folder = resolve_checkpoint_folder(path_or_id, subfolder, variant, revision, local_files_only, cache_dir, token)
    config = resolve_config(folder, config, cls, overrides, attn_implementation)
    device = resolve_device(device_map)
    tensor_parallel = wants_tp(tp_plan, tp_size, device_mesh)
    if tensor_parallel:
        device = device_for_rank(device)
    if not isinstance(requested_dtype, str) or requested_dtype != "auto":
        resolve_dtype(requested_dtype, config, None)  # a bad dtype fails before the weights are opened
    gen_config = resolve_generation_config(folder, generation_config, config)
    saved, quant = _quantization_plan(config, quantization_config, device, folder)
    files = find_weight_files(folder, variant, use_safetensors)
    with CheckpointReader(files, use_mmap=not disable_mmap) as reader:
        target_dtype = resolve_dtype(requested_dtype, config, reader)
        if isinstance(quant, LosslessBf16Config):
            quant = lossless.applicable(quant, target_dtype, device)
        with torch.device("meta"), _skip_init():
            model = cls(config)
        shards = shard_for_loading(model, tp_size, device_mesh, device) if tensor_parallel else None
        quantizer = None
        prepare_for_device(model, device, target_dtype)  # the backend's ops and module swaps (phikit/backends)
        if saved is not None:
            prepare_quantized_model(model, saved, reader.refs.keys(), target_dtype)
        elif quant is not None:
            quantizer = StreamingQuantizer(model, quant)  # each weight is quantized right after it is read
        progress = tqdm_class if tqdm_class is not None else (_tqdm() if show_progress else None)
        info = _fill(model, reader, folder, target_dtype, device, strict, progress, quantizer,
                     ignore_mismatched_sizes, shards)
        if quantizer is not None:
            quantizer.finish(model)
        if saved is not None:
            finalize_quantized_model(model, reader)
    model.tie_weights()
    if tensor_parallel:
        finish_tensor_parallel(model)
    model.eval()
    config.dtype = target_dtype  # a torch.dtype, as transformers holds it; to_dict writes its name
    config._name_or_path = os.fspath(path_or_id)
    model.loading_info = info
    model.generation_config = gen_config
    model.name_or_path = os.fspath(path_or_id)
    model.tokenizer_vocab_size = _tokenizer_size(folder)
    return (model, info) if output_loading_info else model


def _tqdm() -> Any:
    from tqdm.auto import tqdm

    return tqdm


def _quantization_plan(config: PhiKitConfig, requested: Any, device: torch.device, folder: str):
    """(phikit quantization already in the checkpoint, quantization to apply while loading): at most one is set.
    A checkpoint quantized by another method (e.g. bitsandbytes) raises naming the phikit alternative."""
    saved = getattr(config, "quantization_config", None)
    phikit_saved = isinstance(saved, dict) and saved.get("quant_method") == "phikit"
    if saved is not None and not phikit_saved:
        resolve_quantization_config(saved, device)
    if not phikit_saved:
        return None, resolve_quantization_config(requested, device)
    if isinstance(requested, LosslessBf16Config) and not requested.required:
        return saved, None  # "where it applies": not to weights already quantized
    if requested is not None and resolve_quantization_config(requested, device) != quant_config_from_dict(saved):
        raise ValueError(f"{folder} is already quantized ({saved}); load it without quantization_config")
    return saved, None


def _tokenizer_size(folder: str) -> int | None:
    """How many ids the checkpoint's tokenizer has (generate never samples past it), if tokenizer.json is there."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path).get_vocab_size(with_added_tokens=True)
    except Exception:  # a broken tokenizer.json is reported when the tokenizer itself is loaded
        return None


def _fill(model: nn.Module, reader: CheckpointReader, folder: str, dtype: torch.dtype, device: torch.device,
          strict: bool, progress: Any = None, quantizer: Any = None, ignore_mismatched: bool = False,
          shards: dict[str, Shard] | None = None) -> dict[str, list]:
    """Check the whole plan first (names and shapes from headers), then read tensors one at a time. `shards`
    (tensor parallelism): the parameters this rank holds part of; the plan is checked against their full shapes,
    and only the rank's slices are copied out of the checkpoint."""
    config = model.config
    shards = shards or {}
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    local = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items() if n not in tied}
    params = {n: shards[n].full_shape if n in shards else shape for n, shape in local.items()}
    checkpoint = {n: ref.shape for n, ref in reader.refs.items()}
    plan = plan_sources(config, checkpoint, params)
    missing = [n for n in params if n not in plan.sources]
    new_heads = [n for n in missing if n.startswith(HEAD_PREFIXES)]
    missing = [n for n in missing if n not in new_heads]
    unused = [n for n in plan.unused if not (new_heads and n.startswith(HEAD_PREFIXES))]
    if tied:  # a tied checkpoint may still carry its lm_head copy
        unused = [n for n in unused if n not in ("lm_head.weight",)]
    mismatched = [(n, src.shape, params[n]) for n, src in plan.sources.items()
                  if src.shape is not None and tuple(src.shape) != params[n]]
    if strict:
        if mismatched and not ignore_mismatched:
            name, got, want = mismatched[0]
            raise CheckpointError(
                f"tensor {name} has shape {tuple(got)} in the checkpoint at {folder} but the model built from its "
                f"config.json expects {want} ({len(mismatched)} mismatched in all); config.json does not describe "
                f"these weights (check hidden_size, intermediate_size, num_*_heads, vocab_size), or pass "
                f"ignore_mismatched_sizes=True to initialise those tensors instead")
        if missing:
            raise CheckpointError(
                f"the checkpoint at {folder} lacks {len(missing)} tensors the model needs: {_short(missing)}; it is "
                f"not a complete {config.model_type} checkpoint for this config (pass strict=False to load the rest "
                f"and initialise these randomly)")
        if unused:
            raise CheckpointError(
                f"the checkpoint at {folder} has {len(unused)} tensors this {type(model).__name__} does not use: "
                f"{_short(unused)}; config.json does not match the weights (e.g. num_hidden_layers), or pass "
                f"strict=False to skip them")
    skip = {n for n, _, _ in mismatched}
    items = plan.sources.items()
    if progress is not None:
        items = progress(items, desc="Loading weights", unit="tensor", leave=False)
    for name, source in items:
        if name in skip:
            continue
        tensor = source.build([reader.get(src) for src in source.names])
        if tuple(tensor.shape) != params[name]:  # shapes only known after building (fused splits)
            raise CheckpointError(f"tensor {name} built from {', '.join(source.names)} in {folder} has shape "
                                  f"{tuple(tensor.shape)}, the model expects {params[name]}")
        shard = shards.get(name)
        if shards:  # tensor parallelism: count what this rank copies out of the checkpoint
            full = tensor.numel() * tensor.element_size()
            if shard is not None:  # this rank's rows or columns: a view, so only those file pages are read
                tensor = shard.take(tensor)
            read = tensor.numel() * tensor.element_size() if shard is None or shard.reads else 0
            model.tensor_parallel.reads[name] = (read, full)
        placed = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        release_rows = _file_rows(placed, tensor, reader, source.names) if placed.device.type == "cpu" else None
        if quantizer is not None and quantizer.wants(name):
            whole_rows = model.tensor_parallel.row_absmax if shard is not None and shard.dim == 1 else None
            quantizer.consume(model, name, placed, release_rows, whole_rows)  # float rows go as they are quantized
            for src in source.names:
                reader.release(src)
            _return_freed_memory()
            continue
        owner = model.get_submodule(name.rpartition(".")[0]) if name.endswith(".weight") else None
        packed = isinstance(owner, FastLinear) and placed.dtype == torch.bfloat16 and FastLinear.needs_packing()
        if not packed and placed.device.type == "cpu" and placed.data_ptr() == tensor.data_ptr():
            # Private memory (transparent huge pages, advised: hugepages.py) streams faster than the file's page
            # cache at decode time; copied in slices whose file pages go at once, so memory holds one copy plus a
            # slice.
            placed = _private_copy(placed, release_rows)
        _set_tensor(model, name, placed)
        if packed:
            owner.pack()  # the packed copy is what runs; the file-backed original stays for state_dict()
        if packed or placed.data_ptr() != tensor.data_ptr():  # the file pages are no longer needed now
            for src in source.names:
                reader.release(src)
    uninitialised = missing + new_heads + sorted(skip)
    _materialise(model, uninitialised, dtype, device)
    return {"missing_keys": missing, "unexpected_keys": unused, "newly_initialized_keys": new_heads,
            "mismatched_keys": mismatched}


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _return_freed_memory() -> None:
    """Hand memory freed by quantization temporaries back to the OS: glibc keeps freed heap chunks resident, which
    raised the peak of an int4 load by ~0.1 GB per GB of weights."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _file_rows(view: torch.Tensor, tensor: torch.Tensor, reader: CheckpointReader, names: list[str]
               ) -> Callable[[int, int], None] | None:
    """For `view`, still the mapped bytes of the one checkpoint tensor `names[0]`: a callback that drops the file pages
    of its rows [a, b) once they have been copied or quantized. None where `view` is not such a view."""
    if len(names) != 1 or view.data_ptr() != tensor.data_ptr() or view.dim() == 0 or not view.is_contiguous():
        return None
    name, ref = names[0], reader.refs[names[0]]
    offset = view.data_ptr() - reader.get(name).data_ptr()  # where the view starts inside the tensor's bytes
    if not 0 <= offset < ref.end - ref.begin:  # a small private read, not the mapped file
        return None
    row_bytes = view[0].numel() * view.element_size()
    return lambda a, b: reader.release(name, offset + a * row_bytes, offset + b * row_bytes)


def _private_copy(view: torch.Tensor, release_rows: Callable[[int, int], None] | None,
                  slice_bytes: int = 16 << 20) -> torch.Tensor:
    """A copy of `view` in private memory, in slices of rows whose file pages go as soon as they are copied."""
    out = hugepages.empty_like(view)  # 2 MB pages where the host hands them out on request (hugepages.py)
    if release_rows is None:
        return out.copy_(view)
    rows = max(1, slice_bytes // max(1, view[0].numel() * view.element_size()))
    for start in range(0, view.shape[0], rows):
        stop = min(view.shape[0], start + rows)
        out[start:stop].copy_(view[start:stop])
        release_rows(start, stop)
    return out


def _materialise(model: nn.Module, names: list[str], dtype: torch.dtype, device: torch.device) -> None:
    """Give parameters the checkpoint did not fill real storage and the model's own initialisation."""
    modules = set()
    for name in names:
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        meta = getattr(module, leaf)
        _set_tensor(model, name, torch.empty(meta.shape, dtype=dtype, device=device))
        modules.add(module_name)
    for module_name in sorted(modules):
        model._init_weights(model.get_submodule(module_name))


def save_pretrained(model: nn.Module, folder: str | os.PathLike, max_shard_size: int | str = "5GB",
                    safe_serialization: bool = True, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write config.json, generation_config.json and safetensors (sharded past max_shard_size) that transformers
    and phikit both load. Tied lm_head weights are not written twice."""
    from .checkpoint import write_safetensors

    if getattr(model, "tensor_parallel", None) is not None:
        raise ValueError(f"this model is rank {model.tensor_parallel.rank}'s shard of a tp={model.tensor_parallel.tp} "
                         f"model (tp_plan='auto'); saving it would write a partial checkpoint. Save from a model "
                         f"loaded without tp_plan")
    if not safe_serialization:
        raise ValueError("phikit writes safetensors only (pickles can run code when loaded); drop "
                         "safe_serialization=False")
    folder = os.fspath(folder)
    state = dict(state_dict if state_dict is not None else model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    os.makedirs(folder, exist_ok=True)
    write_safetensors(state, folder, max_shard_size)
    config = model.config
    config.dtype = str(next(iter(state.values())).dtype).replace("torch.", "") if state else None
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    generation_config = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(config)
    generation_config.save_pretrained(folder)
