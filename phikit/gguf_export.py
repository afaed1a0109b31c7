"""Export a phikit model and its tokenizer to GGUF, so llama.cpp and ollama run the very same weights.

Architectures (llama.cpp names): `phi2` for phi-1/1.5/2 (separate q/k/v with biases, parallel residual, LayerNorm,
partial rotary, gpt2 BPE vocabulary) and `phi3` for Phi-3 / 3.5 / Phi-4-mini (fused `attn_qkv`, fused gate+up as
`ffn_up`, RMSNorm, LongRoPE factors as `rope_factors_long` / `rope_factors_short` tensors, SentencePiece `llama`
vocabulary with scores and token types, or a BPE one for Phi-4-mini). Names come from the `gguf` package's own
tensor name map; metadata follows llama.cpp's `convert_hf_to_gguf.py` (Phi2Model, Phi3MiniModel).

Output types: f32, f16, bf16, q8_0 and q4_0, the last two in blocks of 32 values with one fp16 scale d: q8_0 keeps
int8 round(x / d) with d = max|x| / 127, q4_0 keeps 4 bits min(15, round(x / d) + 8) with d = -max / 8, max being the
block's signed value of largest magnitude (`gguf.quants`, bit-exact with ggml). As llama.cpp does, 1-D tensors (norms,
biases, rope factors) stay f32, and a q8_0 or q4_0 matrix whose rows are not a multiple of 32 is written f16.
llama.cpp's convert_hf_to_gguf.py has no q4_0 output type (q4_0 files come from its llama-quantize, which keeps
`output`, or a tied `token_embd`, at 6 bits or more: q6_k, a type gguf cannot write), so phikit's q4_0 writes that
head in q8_0 (as phikit's own int4 keeps its head at int8) and every other eligible matrix, the token embedding
included, in q4_0. A phikit-quantized model is exported from its dequantized weights.

Tensors are converted and written one at a time (tensor infos first, from shapes alone), so exporting needs about
one tensor of memory beyond the model. Needs `pip install phikit[gguf]` (gguf==0.19.0).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
Q8_BLOCK = 32  # values per q8_0 block; a block is 2 bytes of fp16 scale + 32 int8
Q4_BLOCK = 32  # values per q4_0 block; a block is 2 bytes of fp16 scale + 16 bytes of 4-bit values
_O200K_MARK = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("GGUF export needs the gguf package: pip install 'phikit[gguf]' (or gguf==0.19.0)") from e
    return gguf


@dataclass
class _Planned:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # torch order ([out, in] for matrices)
    qtype: Any  # gguf.GGMLQuantizationType
    get: Callable[[], torch.Tensor]  # loads the float tensor when it is written


# ----- tensors --------------------------------------------------------------------------------------------------
def _float_tensors(model: nn.Module) -> Iterator[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]]:
    """(checkpoint name, shape, loader) for every tensor in state_dict order; phikit-quantized linears give their
    dequantized `weight` (computed when written) and their bias."""
    from .formats.int4 import Int4Linear
    from .formats.int8 import Int8Linear

    for module_name, module in model.named_modules():
        prefix = module_name + "." if module_name else ""
        if isinstance(module, (Int8Linear, Int4Linear)):
            yield prefix + "weight", (module.out_features, module.in_features), module.dequantize
            if module.bias is not None:
                yield prefix + "bias", tuple(module.bias.shape), (lambda b=module.bias: b.detach())
            continue
        tensors = [*module._parameters.items(),
                   *((n, b) for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set)]
        for name, tensor in tensors:
            if tensor is not None:
                yield prefix + name, tuple(tensor.shape), (lambda t=tensor: t.detach())


def _qtype_for(shape: tuple[int, ...], outtype: str, gguf, head: bool = False) -> Any:
    """The GGUF type of one tensor; `head`: the matrix that computes the logits (`output`, or a tied `token_embd`)."""
    Q = gguf.GGMLQuantizationType
    if len(shape) == 1 or outtype == "f32":
        return Q.F32
    if outtype == "q8_0" or (outtype == "q4_0" and head):  # q4_0 files keep the head at 8 bits (module docstring)
        return Q.Q8_0 if shape[-1] % Q8_BLOCK == 0 else Q.F16
    if outtype == "q4_0":
        return Q.Q4_0 if shape[-1] % Q4_BLOCK == 0 else Q.F16
    return Q.BF16 if outtype == "bf16" else Q.F16


def _nbytes(shape: tuple[int, ...], qtype: Any, gguf) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _encode(tensor: torch.Tensor, qtype: Any, gguf) -> np.ndarray:
    """float tensor -> the bytes (as a numpy array) of one GGUF tensor of `qtype`."""
    Q = gguf.GGMLQuantizationType
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)  # BF16 (round to nearest even), Q8_0 and Q4_0, as ggml does


def _check_supported(config) -> str:
    if config.model_type == "phimoe":
        raise NotImplementedError(
            "GGUF export of PhiMoE is not supported: llama.cpp's phimoe graph routes with a softmax over the top-2 "
            "experts, not PhiMoE's sparsemixer, so it would not reproduce this model; export a phi or phi3 model")
    if config.model_type not in ("phi", "phi3"):
        raise NotImplementedError(f"GGUF export supports phi and phi3 models, not model_type={config.model_type!r}")
    if config.model_type == "phi" and getattr(config, "qk_layernorm", False):
        raise NotImplementedError("llama.cpp's phi2 architecture has no q/k layernorm; this phi model (qk_layernorm="
                                  "True) cannot be exported to GGUF")
    return "phi2" if config.model_type == "phi" else "phi3"


def _plan_tensors(model: nn.Module, arch_name: str, outtype: str, gguf) -> list[_Planned]:
    config = model.config
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    plan: list[_Planned] = []
    for name, shape, get in _float_tensors(model):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when `output` is absent
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"tensor {name} {shape} has no {arch_name} GGUF name in gguf's tensor map; this model "
                             f"has a part llama.cpp's {arch_name} graph does not run")
        head = name == "lm_head.weight" or (name.endswith("embed_tokens.weight") and config.tie_word_embeddings)
        plan.append(_Planned(target, shape, _qtype_for(shape, outtype, gguf, head), get))
    rp = config.rope_parameters
    if rp.get("rope_type") == "longrope":
        for kind in ("long", "short"):
            factors = torch.tensor(rp[f"{kind}_factor"], dtype=torch.float32)
            name = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, f"ROPE_FACTORS_{kind.upper()}")] + ".weight"
            plan.append(_Planned(name, tuple(factors.shape), gguf.GGMLQuantizationType.F32, lambda f=factors: f))
    return plan


# ----- metadata ---------------------------------------------------------------------------------------------------
def _write_hparams(writer, model: nn.Module, arch_name: str, outtype: str, gguf) -> None:
    from .model.rope import longrope_attention_factor

    config = model.config
    source = os.path.basename(str(getattr(model, "name_or_path", "") or "").rstrip("/"))
    writer.add_name(source or f"phikit {arch_name}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.rotary_dim)
    rp = config.rope_parameters
    writer.add_rope_freq_base(float(rp["rope_theta"]))
    if arch_name == "phi2":
        writer.add_layer_norm_eps(float(config.layer_norm_eps))
    else:
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        # 0 tells llama.cpp "no sliding window" (how it tells Phi-4 from Phi-3)
        writer.add_sliding_window(int(config.sliding_window or 0))
        original = rp.get("original_max_position_embeddings") or getattr(
            config, "original_max_position_embeddings", None) or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(int(original))
        if rp.get("rope_type") == "longrope":
            writer.add_rope_scaling_attn_factors(longrope_attention_factor(rp, config.max_position_embeddings))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[outtype]
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def vocabulary_for_gguf(tokenizer, vocab_size: int) -> dict[str, Any]:
    """The `tokenizer.ggml.*` arrays of a phikit tokenizer, padded to the embedding's `vocab_size` rows.

    SentencePiece-style BPE (Phi-3: byte fallback, `▁` spaces) becomes model "llama" with tokens, scores and types;
    scores are minus the rank of the merge that first builds each piece, so llama.cpp's score-ordered merging
    follows the same order as the tokenizer.json merges. Byte-level BPE becomes model "gpt2" with merges.
    """
    gguf = _gguf()
    T = gguf.TokenType
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise NotImplementedError(f"GGUF export handles BPE tokenizers; this one is {model.get('type')!r}")
    id_to_token = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    size = max([*id_to_token, *added]) + 1
    if size > vocab_size:
        raise ValueError(f"the tokenizer has {size} tokens but the model's embedding has {vocab_size} rows; this "
                         f"tokenizer does not belong to this model")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    spm = bool(model.get("byte_fallback")) or "▁" in json.dumps(data.get("normalizer"))
    tokens, scores, types = [], [], []
    rank: dict[str, int] = {}
    if spm:
        for r, m in enumerate(merges):
            rank.setdefault(m.replace(" ", ""), r)
    for i in range(vocab_size):
        if i in added:
            a = added[i]
            tokens.append(a["content"])
            types.append(int(T.CONTROL if a.get("special") else T.USER_DEFINED))
            scores.append(-1000.0)
        elif i in id_to_token:
            tok = id_to_token[i]
            tokens.append(tok)
            is_byte = spm and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">")
            types.append(int(T.BYTE if is_byte else T.NORMAL))
            scores.append(0.0 if is_byte or tok not in rank else -float(rank[tok]))
        else:  # embedding rows past the tokenizer (32064 vs 32011): placeholders llama.cpp never produces
            tokens.append(f"[PAD{i}]")
            types.append(int(T.UNUSED))
            scores.append(-10000.0)
    out: dict[str, Any] = {"tokens": tokens, "types": types}
    if spm:
        out.update(model="llama", pre="default", scores=scores)
    else:
        out.update(model="gpt2", pre=_bpe_pre(data), merges=merges)
    return out


def _bpe_pre(data: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json."""
    pre = data.get("pre_tokenizer") or {}
    text = json.dumps(pre)
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "phi-2"  # GPT-2's split regex (llama.cpp treats "phi-2" as "gpt-2")
    if _O200K_MARK in text or _O200K_MARK.replace("\\", "\\\\") in text:
        return "gpt-4o"  # Phi-4-mini's o200k vocabulary
    raise NotImplementedError(f"this byte-level BPE tokenizer's pre-tokenizer ({text[:200]}...) has no known "
                              f"llama.cpp name; GGUF export supports Phi-2's GPT-2 split and Phi-4-mini's o200k split")


def _write_tokenizer(writer, tokenizer, model: nn.Module) -> None:
    vocab = vocabulary_for_gguf(tokenizer, model.config.vocab_size)
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    if ids["eos"] is None:
        eos = model.config.eos_token_id
        ids["eos"] = eos[0] if isinstance(eos, list) else eos
    for key, value in ids.items():
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(int(value))
    end = tokenizer.get_vocab().get("<|end|>")
    if end is not None:  # Phi-3 chat turns end with <|end|> (32007): llama.cpp must stop there too
        writer.add_eot_token_id(int(end))
    writer.add_add_bos_token(bool(tokenizer.add_bos_token))
    writer.add_add_eos_token(bool(tokenizer.add_eos_token))
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


# ----- entry point ----------------------------------------------------------------------------------------------
def export_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, dtype: str = "f16") -> str:
    """Write `model` (phi or phi3, float or phikit-quantized) and `tokenizer` (a `PhiTokenizer`, or None for a
    weights-only file) to the GGUF file `path` with matrices in `dtype` ("f32", "f16", "bf16", "q8_0" or "q4_0").
    Returns the path written. The file is written under a temporary name and renamed when complete."""
    gguf = _gguf()
    if dtype not in OUTTYPES:
        raise ValueError(f"dtype={dtype!r} is not a GGUF output type phikit writes; use one of {OUTTYPES}")
    arch_name = _check_supported(model.config)
    path = os.fspath(path)
    plan = _plan_tensors(model, arch_name, dtype, gguf)
    tmp = path + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch_name)
    try:
        _write_hparams(writer, model, arch_name, dtype, gguf)
        if tokenizer is not None:
            _write_tokenizer(writer, tokenizer, model)
        for t in plan:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.qtype, gguf),
                                   raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with torch.no_grad():
            for t in plan:  # one tensor in memory at a time
                writer.write_tensor_data(_encode(t.get(), t.qtype, gguf))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


__all__ = ["export_gguf", "vocabulary_for_gguf", "OUTTYPES"]
