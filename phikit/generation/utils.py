"""`generate()`: greedy, sampling, beam search, assisted decoding and classifier-free guidance over a KV cache.

The argument handling and the defaults follow transformers 5.x `GenerationMixin.generate`, so greedy and beam outputs
are token-identical to the reference on the same weights (tested). The decode loops live in `decoding.py`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch

from ..model.cache import DynamicCache, KVCache, StaticCache
from ..generation_config import DEFAULT_NEW_TOKENS, GenerationArgumentError, GenerationConfig, merge_eos_ids
from .decoding import assisted_decode, beam_search, sample
from .guidance import ClassifierFreeGuidance
from .inputs import as_id_tensor, check_id_range, check_mask, split_generate_inputs

# Keyword arguments generate() understands besides GenerationConfig fields.
MODEL_INPUTS = ("input_ids", "attention_mask")


class GenerationMixin:
    """Adds `generate` to the causal-LM classes."""

    generation_config: GenerationConfig | None = None

    def compute_transition_scores(self, sequences: torch.Tensor, scores: tuple[torch.Tensor, ...],
                                  beam_indices: torch.Tensor | None = None, normalize_logits: bool = False
                                  ) -> torch.Tensor:
        """Each generated token's score at its step, [rows, steps] (transformers' method; see transition_scores)."""
        from .transition_scores import compute_transition_scores

        return compute_transition_scores(self, sequences, scores, beam_indices, normalize_logits)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, past_key_values: Any = None,
                                      attention_mask: torch.Tensor | None = None, inputs_embeds: Any = None,
                                      cache_position: torch.Tensor | None = None, use_cache: bool = True,
                                      logits_to_keep: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """The forward arguments of one generation step (transformers' contract): input_ids [B, L] holds every
        token so far; only those the cache lacks go in, with rope positions counted from each row's first real
        token: the arguments `step.forward_step` gives every forward of `generate()`, for tools that call it
        (PEFT's `PeftModelForCausalLM` reads it). Extra keyword arguments pass through to `forward`."""
        from .step import rope_positions

        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = rope_positions(attention_mask)
        if cache_position is None:
            cache_position = torch.arange(seen, input_ids.shape[1], device=input_ids.device)
        out: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": positions[:, seen:],
                               "past_key_values": past_key_values, "use_cache": use_cache and past_key_values
                               is not None, "cache_position": cache_position}
        if inputs_embeds is not None and seen == 0:
            out["inputs_embeds"] = inputs_embeds
        else:
            out["input_ids"] = input_ids[:, seen:]
        if logits_to_keep is not None:
            out["logits_to_keep"] = logits_to_keep
        out.update(kwargs)
        return out

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
        `tokenizer=` enables `stop_strings` and limits sampling to ids the tokenizer has. `grammar=` (a
        `phikit.structured.Grammar`, with `tokenizer=`) constrains every row to the grammar (greedy or sampling) and
        ends it with a stop id when the grammar is complete.
        """
        if "prepare_inputs_for_generation" in vars(self):
            # PEFT installs its own on the model it wraps only for prompt learning (prompt / prefix tuning,
            # p-tuning), whose virtual tokens change what the cache holds; phikit's loops feed the tokens the cache
            # lacks themselves, so that adapter would be silently ignored
            raise GenerationArgumentError(
                "generate() was given a replaced prepare_inputs_for_generation (a PEFT prompt-learning adapter: "
                "prompt tuning, prefix tuning or p-tuning); phikit's generate does not run those. Use a LoRA "
                "adapter (PEFT or phikit.lora), or call forward with the virtual-token embeddings yourself")
        config = self.config
        input_ids, attention_mask = split_generate_inputs(inputs, kwargs, config.vocab_size)
        tokenizer = kwargs.pop("tokenizer", None)
        grammar = kwargs.pop("grammar", None)
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise GenerationArgumentError(f"generation_config must be a phikit GenerationConfig, got "
                                          f"{type(generation_config).__name__}; pass options as keywords instead")
        gen = copy.deepcopy(generation_config or self.generation_config or GenerationConfig.from_model_config(
            config))
        unknown = gen.update(**kwargs)
        if unknown:
            raise UnknownGenerateArgument(
                f"generate() got arguments it does not know: {sorted(unknown)}; pass generation options by their "
                f"GenerationConfig names (max_new_tokens, do_sample, temperature, top_p, ...)")
        gen.validate(vocab_size=config.vocab_size)
        _check_arguments(gen, tokenizer, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                         assistant_model, streamer, negative_prompt_ids, negative_prompt_attention_mask, config)
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
        default_length = gen.max_new_tokens is None and gen.max_length is None
        if gen.max_new_tokens is not None:
            gen.max_length = prompt_len + gen.max_new_tokens
        elif default_length:  # transformers 5: 20 new tokens, within the context
            gen.max_length = min(prompt_len + DEFAULT_NEW_TOKENS, config.max_position_embeddings)
        _validate(gen, prompt_len, config, assistant_model, streamer, batch, default_length)

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
        if grammar is not None:
            processors.insert(1 if vocab_limit is not None else 0,
                              _grammar_processor(grammar, tokenizer, gen, config, assistant_model))
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


def _grammar_processor(grammar: Any, tokenizer: Any, gen: GenerationConfig, config: Any, assistant: Any):
    """generate(grammar=...): the processor, after the vocabulary limit and before everything else."""
    if tokenizer is None:
        raise GenerationArgumentError("grammar= needs the tokenizer to read the vocabulary; pass tokenizer=... to "
                                      "generate()")
    if gen.num_beams > 1 or assistant is not None:
        raise GenerationArgumentError(f"grammar= works with greedy decoding and sampling, one matcher per row; unset "
                                      f"num_beams={gen.num_beams} / assistant_model (they reorder or re-check rows)")
    if not gen.eos_token_id:
        raise GenerationArgumentError("grammar= ends a row with the model's stop ids, and there are none; set "
                                      "eos_token_id")
    from ..structured import GrammarLogitsProcessor
    return GrammarLogitsProcessor(grammar, tokenizer, config.vocab_size, gen.eos_token_id)


def _infer_attention_mask(input_ids: torch.Tensor, pad: int | None, eos: list[int]) -> torch.Tensor:
    """The reference rule: pad ids mark padding when pad is in the prompt and is not an eos id."""
    if pad is not None and bool((input_ids == pad).any()) and pad not in eos:
        return (input_ids != pad).long()
    return torch.ones_like(input_ids)


class UnknownGenerateArgument(GenerationArgumentError, TypeError):
    """generate() got a keyword that is neither a GenerationConfig field nor one of its arguments."""


def _check_callables(name: str, items: Any) -> None:
    if items is None:
        return
    if not isinstance(items, (list, tuple)) or not all(callable(x) for x in items):
        raise GenerationArgumentError(f"{name} must be a list of callables (processor(input_ids, scores)), got "
                                      f"{items!r}")


def _check_arguments(gen: GenerationConfig, tokenizer: Any, logits_processor: Any, stopping_criteria: Any,
                     prefix_allowed_tokens_fn: Any, assistant: Any, streamer: Any, negative_ids: Any,
                     negative_mask: Any, config) -> None:
    """generate()'s own arguments (not GenerationConfig fields): their types and what they need."""
    _check_callables("logits_processor", logits_processor)
    _check_callables("stopping_criteria", stopping_criteria)
    if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
        raise GenerationArgumentError(f"prefix_allowed_tokens_fn must be a function (batch_id, input_ids) -> "
                                      f"list of ids, got {type(prefix_allowed_tokens_fn).__name__}")
    if streamer is not None and not (callable(getattr(streamer, "put", None)) and
                                     callable(getattr(streamer, "end", None))):
        raise GenerationArgumentError(f"streamer must have put(ids) and end() (e.g. TextStreamer(tokenizer)), got "
                                      f"{type(streamer).__name__}")
    if assistant is not None and not isinstance(assistant, torch.nn.Module):
        raise GenerationArgumentError(f"assistant_model must be a loaded phikit model, got "
                                      f"{type(assistant).__name__}")
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
        raise GenerationArgumentError(f"tokenizer= must be a tokenizer with decode(ids), got "
                                      f"{type(tokenizer).__name__}")
    if gen.stop_strings is not None and tokenizer is None:
        raise GenerationArgumentError(f"stop_strings={gen.stop_strings!r} needs the tokenizer to read the generated "
                                      f"text; pass tokenizer=... to generate()")
    if negative_ids is not None:
        ids = as_id_tensor("negative_prompt_ids", negative_ids)
        if ids.dim() != 2:
            raise GenerationArgumentError(f"negative_prompt_ids must have shape [batch, tokens], got "
                                          f"{tuple(ids.shape)}")
        check_id_range("negative_prompt_ids", ids, config.vocab_size)
        if negative_mask is not None:
            check_mask("negative_prompt_attention_mask", negative_mask, tuple(ids.shape), "negative_prompt_ids")


def _validate(gen: GenerationConfig, prompt_len: int, config, assistant: Any, streamer: Any, batch: int,
              default_length: bool) -> None:
    limit = config.max_position_embeddings
    if prompt_len > limit:
        raise GenerationArgumentError(
            f"the prompt has {prompt_len} tokens but the model's context is max_position_embeddings={limit}; "
            f"shorten or truncate the prompt (tokenizer(..., truncation=True, max_length=...))")
    if gen.max_length > limit:
        what = f"max_new_tokens={gen.max_new_tokens}" if gen.max_new_tokens is not None else \
            f"max_length={gen.max_length}"
        raise GenerationArgumentError(
            f"{what}: prompt ({prompt_len} tokens) + new tokens reach {gen.max_length}, past the model's context "
            f"of {limit} tokens; lower max_new_tokens to at most {limit - prompt_len}")
    if gen.max_length <= prompt_len:
        if default_length:
            raise GenerationArgumentError(f"the {prompt_len}-token prompt fills the model's context "
                                          f"(max_position_embeddings={limit}); shorten the prompt")
        raise GenerationArgumentError(f"max_length={gen.max_length} (it counts the prompt) leaves no room after the "
                                      f"{prompt_len}-token prompt; pass max_new_tokens=N instead")
    if streamer is not None and (batch > 1 or gen.num_beams > 1):
        raise GenerationArgumentError(f"streaming works for one prompt without beam search (got batch={batch}, "
                                      f"num_beams={gen.num_beams}); pass a single prompt")
    if assistant is not None and (batch > 1 or gen.num_beams > 1 or gen.do_sample):
        raise GenerationArgumentError("assisted decoding (assistant_model) runs one prompt greedily: batch 1, "
                                      "num_beams=1, do_sample=False")


def _make_cache(gen: GenerationConfig, rows: int) -> KVCache | None:
    """Static (preallocated, written in place) unless asked otherwise; beam search reorders rows every step, which
    a growing dynamic cache does more cheaply."""
    if not gen.use_cache:
        return None
    implementation = gen.cache_implementation or ("dynamic" if gen.num_beams > 1 else "static")
    if implementation == "static":
        return StaticCache(max_cache_len=gen.max_length, max_batch_size=rows)
    return DynamicCache()
