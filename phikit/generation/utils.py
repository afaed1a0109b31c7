"""`generate()`: greedy, sampling, beam search, assisted decoding and classifier-free guidance over a KV cache.

The argument handling and the defaults follow transformers 5.x `GenerationMixin.generate`, so greedy and beam outputs
are token-identical to the reference on the same weights (tested). The decode loops live in `decoding.py`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch

from ..model.cache import DynamicCache, KVCache, StaticCache
from ..generation_config import GenerationConfig, merge_eos_ids
from .decoding import assisted_decode, beam_search, sample
from .guidance import ClassifierFreeGuidance

# Keyword arguments generate() understands besides GenerationConfig fields.
MODEL_INPUTS = ("input_ids", "attention_mask")


class GenerationMixin:
    """Adds `generate` to the causal-LM classes."""

    generation_config: GenerationConfig | None = None

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
                 generation_config: GenerationConfig | None = None, logits_processor: list | None = None,
                 stopping_criteria: list | None = None,
                 prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
                 assistant_model: torch.nn.Module | None = None, streamer: Any = None,
                 negative_prompt_ids: torch.Tensor | None = None,
                 negative_prompt_attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """Generate continuations of `inputs` (ids [B, T], or the dict a tokenizer returns).

        Returns ids [B * num_return_sequences, T + new] (prompt included), or with `return_dict_in_generate=True`
        a `GenerateDecoderOnlyOutput` / `GenerateBeamDecoderOnlyOutput` with `sequences` and, when asked, `scores`
        and `logits`. Any `GenerationConfig` field may be passed as a keyword (max_new_tokens, do_sample, top_p, ...).
        `tokenizer=` enables `stop_strings` and limits sampling to ids the tokenizer has.
        """
        input_ids, attention_mask, kwargs = _split_inputs(inputs, kwargs)
        tokenizer = kwargs.pop("tokenizer", None)
        gen = copy.deepcopy(generation_config or self.generation_config or GenerationConfig.from_model_config(
            self.config))
        unknown = gen.update(**kwargs)
        if unknown:
            raise TypeError(f"generate() got arguments it does not know: {sorted(unknown)}; pass generation options "
                            f"by their GenerationConfig names (max_new_tokens, do_sample, temperature, top_p, ...)")
        device = self.device
        input_ids = input_ids.to(device)
        batch, prompt_len = input_ids.shape
        eos = merge_eos_ids(gen.eos_token_id, getattr(tokenizer, "eos_token_id", None) if tokenizer else None)
        gen.eos_token_id = eos or None
        if gen.pad_token_id is None and eos:
            gen.pad_token_id = eos[0]
        if attention_mask is None:
            attention_mask = _infer_attention_mask(input_ids, gen.pad_token_id, eos)
        attention_mask = attention_mask.to(device)
        if gen.max_new_tokens is not None:
            gen.max_length = prompt_len + gen.max_new_tokens
        _validate(gen, prompt_len, self.config, assistant_model, streamer, batch)

        from .logits_process import build_logits_processors
        from .stopping_criteria import build_stopping_criteria

        expand = gen.num_beams if gen.num_beams > 1 else gen.num_return_sequences
        if expand > 1:
            input_ids = input_ids.repeat_interleave(expand, dim=0)
            attention_mask = attention_mask.repeat_interleave(expand, dim=0)
        vocab_limit = len(tokenizer) if tokenizer is not None else getattr(self, "tokenizer_vocab_size", None)
        processors = build_logits_processors(gen, prompt_len, vocab_limit=vocab_limit,
                                             prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                                             extra=logits_processor, attention_mask=attention_mask)
        if gen.guidance_scale is not None and gen.guidance_scale != 1:
            processors.insert(0, ClassifierFreeGuidance(self, gen.guidance_scale, negative_prompt_ids,
                                                        negative_prompt_attention_mask))
        criteria = build_stopping_criteria(gen, tokenizer=tokenizer, extra=stopping_criteria)

        cache = _make_cache(gen, input_ids.shape[0])
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            if assistant_model is not None:
                return assisted_decode(self, assistant_model, input_ids, attention_mask, gen, processors, criteria,
                                       cache, streamer)
            if gen.num_beams > 1:
                return beam_search(self, input_ids, attention_mask, gen, processors, criteria, cache)
            return sample(self, input_ids, attention_mask, gen, processors, criteria, cache, streamer)
        finally:
            if streamer is not None:
                streamer.end()


def _split_inputs(inputs: Any, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Accept ids [B, T] or [T], a tokenizer's dict (BatchEncoding), or input_ids=/attention_mask= keywords."""
    attention_mask = kwargs.pop("attention_mask", None)
    if isinstance(inputs, Mapping):
        attention_mask = inputs.get("attention_mask", attention_mask)
        inputs = inputs["input_ids"]
    if inputs is None:
        inputs = kwargs.pop("input_ids", None)
    elif "input_ids" in kwargs:
        raise ValueError("pass the prompt once: either as `inputs` or as `input_ids=`, not both")
    if inputs is None:
        raise ValueError("generate() needs a prompt: token ids [batch, tokens] (e.g. tokenizer(text, "
                         "return_tensors='pt').input_ids)")
    if not torch.is_tensor(inputs):
        inputs = torch.tensor(inputs)
    if inputs.dim() == 1:
        inputs = inputs[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if inputs.dim() != 2 or inputs.shape[1] == 0:
        raise ValueError(f"prompt ids must have shape [batch, tokens] with at least one token, got "
                         f"{tuple(inputs.shape)}")
    return inputs.long(), attention_mask, kwargs


def _infer_attention_mask(input_ids: torch.Tensor, pad: int | None, eos: list[int]) -> torch.Tensor:
    """The reference rule: pad ids mark padding when pad is in the prompt and is not an eos id."""
    if pad is not None and bool((input_ids == pad).any()) and pad not in eos:
        return (input_ids != pad).long()
    return torch.ones_like(input_ids)


def _validate(gen: GenerationConfig, prompt_len: int, config, assistant: Any, streamer: Any, batch: int) -> None:
    limit = config.max_position_embeddings
    if prompt_len > limit:
        raise ValueError(f"the prompt has {prompt_len} tokens but the model's context is max_position_embeddings="
                         f"{limit}; shorten or truncate the prompt (tokenizer(..., truncation=True, max_length=...))")
    if gen.max_length > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) + new tokens reach {gen.max_length}, past the model's context "
                         f"of {limit} tokens; lower max_new_tokens to at most {limit - prompt_len}")
    if gen.max_length <= prompt_len:
        raise ValueError(f"max_length={gen.max_length} leaves no room after the {prompt_len}-token prompt; set "
                         f"max_new_tokens instead")
    if gen.num_beams < 1 or gen.num_return_sequences < 1:
        raise ValueError(f"num_beams={gen.num_beams} and num_return_sequences={gen.num_return_sequences} must be >= 1")
    if gen.num_beams > 1 and gen.num_return_sequences > gen.num_beams:
        raise ValueError(f"num_return_sequences={gen.num_return_sequences} cannot exceed num_beams={gen.num_beams}")
    if gen.num_beams == 1 and not gen.do_sample and gen.num_return_sequences > 1:
        raise ValueError(f"greedy decoding returns one sequence per prompt, not num_return_sequences="
                         f"{gen.num_return_sequences}; use do_sample=True or num_beams >= num_return_sequences")
    if streamer is not None and (batch > 1 or gen.num_beams > 1):
        raise ValueError("streaming works for one prompt without beam search; pass a single prompt")
    if assistant is not None and (batch > 1 or gen.num_beams > 1 or gen.do_sample):
        raise ValueError("assisted decoding (assistant_model) runs one prompt greedily: batch 1, num_beams=1, "
                         "do_sample=False")
    if gen.cache_implementation not in (None, "dynamic", "static"):
        raise ValueError(f"cache_implementation={gen.cache_implementation!r} is not one of 'dynamic', 'static'")
    if not gen.use_cache and gen.cache_implementation == "static":
        raise ValueError("cache_implementation='static' needs use_cache=True")


def _make_cache(gen: GenerationConfig, rows: int) -> KVCache | None:
    """Static (preallocated, written in place) unless asked otherwise; beam search reorders rows every step, which
    a growing dynamic cache does more cheaply."""
    if not gen.use_cache:
        return None
    implementation = gen.cache_implementation or ("dynamic" if gen.num_beams > 1 else "static")
    if implementation == "static":
        return StaticCache(max_cache_len=gen.max_length, max_batch_size=rows)
    return DynamicCache()
