"""The public model classes of the seeds (`PhiModel`, `Phi3ForCausalLM`, `PhimoeForSequenceClassification`, ...).

A thin facade over the generic `Decoder`: each class keeps the documented `forward` arguments and outputs and the
checkpoint parameter names (`model.layers.0...`, `lm_head`, `score`). Family differences live in the config.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torch.nn as nn

from ..ops import bind
from ..parallel import tied_head_rows
from ..ops.attention import check_attention_implementation
from ..ops.backends import adopt_dtype, default_ops
from ..generation.inputs import check_forward_inputs
from ..model.cache import CacheProtocol, DynamicCache, KVCache
from ..config import Phi3Config, PhiConfig, PhiKitConfig, PhimoeConfig
from ..model.decoder import Decoder, TrunkOutput
from ..generation.inputs import check_labels
from ..generation.utils import GenerationMixin
from ..generation_config import GenerationArgumentError, GenerationConfig
from ..model.layers import RMSNorm
from ..weights.loading import load_pretrained, save_pretrained
from .losses import (causal_lm_loss, load_balancing_loss, sequence_classification_loss,
                     token_classification_loss)
from ..model.moe import SparseMoE
from ..outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput, MoeCausalLMOutputWithPast,
                      MoeModelOutputWithPast, SequenceClassifierOutputWithPast, TokenClassifierOutput)


class PreTrainedMixin:
    """Helpers every public class shares: config checks, weight init, tying, device/dtype, checkpointing."""

    config_class: type[PhiKitConfig] = PhiKitConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def _check_config(self, config: PhiKitConfig) -> None:
        if not isinstance(config, self.config_class):
            raise UnknownForwardArgument(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}; build the config with {self.config_class.__name__}(...)")
        check_attention_implementation(config._attn_implementation)

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()
        bind(self, default_ops("cpu"))  # the CPU backend's table; its ops leave other devices to PyTorch

    def _apply(self, fn, recurse: bool = True):
        # `.to(torch.bfloat16)`, `.bfloat16()`, `.cpu()` after construction: the backend's module swaps for the
        # weights' new dtype, as a load in that dtype makes (bf16 on the CPU: FastLinear, where nn.Linear would run
        # PyTorch's bf16 GEMM, ~7x slower than fp32 below AVX-512)
        out = super()._apply(fn, recurse)
        first = next((p for p in self.parameters() if p.is_floating_point()), None)
        if first is not None:
            adopt_dtype(self, first.device, first.dtype)
        return out

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def tie_weights(self) -> None:
        head = self.get_output_embeddings()
        if head is not None and self.config.tie_word_embeddings:
            tp = getattr(self, "tensor_parallel", None)
            weight = self.get_input_embeddings().weight
            # a tensor-parallel rank's head is its vocabulary rows of the embedding (a view)
            head.weight = weight if tp is None else nn.Parameter(tied_head_rows(weight, tp))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return None

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the vocabulary rows (embedding, and an untied lm_head) as transformers does; see hf/resize.py."""
        if getattr(self, "tensor_parallel", None) is not None:
            raise ValueError("resize_token_embeddings on a tensor-parallel shard (tp_plan='auto') would resize one "
                             "rank's vocabulary rows only; resize the whole model, save it, then load it sharded")
        from .resize import resize_token_embeddings

        return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)

    @property
    def base_model(self) -> "DecoderModel":
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """How many parameters (as transformers: shared ones once; `exclude_embeddings` leaves out every
        nn.Embedding's weight, so a tied head is left out with it)."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings \
            else set()
        seen = {id(p): p for p in self.parameters()
                if (p.requires_grad or not only_trainable) and id(p) not in embeddings}
        # weights held in buffers (int8 / int4 / lossless 12-bit layers) are parameters of the model all the same
        held = 0 if only_trainable else sum(m.in_features * m.out_features for m in self.modules()
                                            if getattr(type(m), "weight_in_buffers", False))
        return sum(p.numel() for p in seen.values()) + held

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.base_model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.gradient_checkpointing

    @classmethod
    def from_config(cls, config: PhiKitConfig, **kwargs: Any):
        return cls(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Load from a local folder or hub id: `dtype` ("auto" by default), `device_map`, `attn_implementation`,
        `revision`, `local_files_only`, `trust_remote_code` (accepted; never runs code), `strict`,
        `output_loading_info`, and config overrides as keywords. See phikit/loading.py."""
        if model_args:
            raise TypeError(f"from_pretrained takes the path and keyword arguments only, got extra {model_args!r}")
        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = "5GB",
                        safe_serialization: bool = True, state_dict: dict[str, torch.Tensor] | None = None,
                        **kwargs: Any) -> None:
        """Write config.json, generation_config.json and model.safetensors (sharded past max_shard_size)."""
        save_pretrained(self, save_directory, max_shard_size, safe_serialization, state_dict)

    def _finish(self, output: ModelOutput, return_dict: bool | None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


class UnknownForwardArgument(GenerationArgumentError, TypeError):
    """forward() got an argument it does not take, or one of the wrong kind."""


def _reject_unknown(kwargs: dict[str, Any], forward: Any) -> None:
    """Refuse keyword arguments `forward` (a bound method) does not take, naming the ones it does."""
    # Keys transformers' generate or Trainer may pass that carry no meaning here.
    for key in ("num_items_in_batch", "output_router_logits", "token_type_ids"):
        kwargs.pop(key, None)
    if kwargs:
        takes = [n for n in inspect.signature(forward).parameters if n != "kwargs"]
        raise UnknownForwardArgument(f"forward() got unexpected arguments {sorted(kwargs)}; "
                                     f"{type(forward.__self__).__name__}.forward takes {', '.join(takes)}")


def _input_shape(input_ids: Any, inputs_embeds: Any) -> tuple[int, int] | None:
    """[B, T] of the input, or None where forward's own checks will refuse it."""
    source = input_ids if input_ids is not None else inputs_embeds
    return tuple(source.shape[:2]) if torch.is_tensor(source) and source.dim() >= 2 else None


class DecoderModel(PreTrainedMixin, Decoder):
    """The bare decoder: embeddings, layers and final norm, returning hidden states (transformers' `XModel`)."""

    def __init__(self, config: PhiKitConfig) -> None:
        self._check_config(config)
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.LongTensor | None = None,
                output_router_logits: bool | None = None, **kwargs: Any):
        """input_ids [B, T] (or inputs_embeds [B, T, hidden]); attention_mask [B, past + T] with 1 for real tokens.

        Returns `BaseModelOutputWithPast` (`MoeModelOutputWithPast` for PhiMoE): last_hidden_state [B, T, hidden],
        past_key_values (the cache, when use_cache), hidden_states (embeddings + one per layer, the last one
        normed) and attentions ([B, H, T, S] per layer) when asked.
        """
        if kwargs.get("labels", 0) is None:
            del kwargs["labels"]  # a wrapper (PEFT without a task type) passes labels=None to a bare model
        if "labels" in kwargs:
            raise UnknownForwardArgument(f"{type(self).__name__} returns hidden states and computes no loss, so it "
                                         f"takes no labels; load a ...ForCausalLM / ...ForSequenceClassification "
                                         f"class for a loss")
        _reject_unknown(kwargs, self.forward)
        trunk, cache = self._trunk(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                   use_cache, output_attentions, output_hidden_states, cache_position,
                                   output_router_logits)
        if self.config.architecture().mlp == "moe":
            out: BaseModelOutputWithPast = MoeModelOutputWithPast(trunk.last_hidden_state, cache, trunk.hidden_states,
                                                                  trunk.attentions, trunk.router_logits)
        else:
            out = BaseModelOutputWithPast(trunk.last_hidden_state, cache, trunk.hidden_states, trunk.attentions)
        return self._finish(out, return_dict)

    def _trunk(self, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
               output_attentions, output_hidden_states, cache_position, output_router_logits, keep_last: int = 0
               ) -> tuple[TrunkOutput, KVCache | None]:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise GenerationArgumentError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, hidden_size]")
        if past_key_values is not None and not (isinstance(past_key_values, KVCache)  # the fast check first
                                                or isinstance(past_key_values, CacheProtocol)):
            raise UnknownForwardArgument(
                f"past_key_values must be a phikit cache (DynamicCache, StaticCache, or a class with every member "
                f"of phikit.model.cache.CacheProtocol), got {type(past_key_values).__name__}; pass back the "
                f"`past_key_values` a forward returned")
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        check_forward_inputs(config, input_ids, attention_mask, position_ids, past, inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputing a layer must not append to the cache twice
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        cache = past_key_values if use_cache or past_key_values is not None else None
        if cache_position is not None:
            start = int(cache_position[0])
        else:
            start = cache.get_seq_length() if cache is not None else 0
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_router_logits = bool(output_router_logits if output_router_logits is not None
                                    else getattr(config, "output_router_logits", False))
        trunk = self.run(inputs_embeds, attention_mask, position_ids, cache, start, output_attentions,
                         output_hidden_states, output_router_logits, keep_last=keep_last)
        return trunk, (cache if use_cache else None)


class CausalLM(PreTrainedMixin, GenerationMixin, nn.Module):
    """Decoder + `lm_head`: next-token logits, the shifted cross-entropy loss, and the cache for decoding."""

    base_class: type[DecoderModel] = DecoderModel

    def __init__(self, config: PhiKitConfig) -> None:
        self._check_config(config)
        super().__init__()
        self.config = config
        self.model = self.base_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.architecture().lm_head_bias)
        self.generation_config = GenerationConfig.from_model_config(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                cache_position: torch.LongTensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                output_router_logits: bool | None = None, **kwargs: Any):
        """Returns `CausalLMOutputWithPast` (`MoeCausalLMOutputWithPast` for PhiMoE) with logits [B, T', V];
        T' = T, or the last `logits_to_keep` positions (an int), or the positions a 1D index tensor names.
        `labels` [B, T] (-100 = ignore) gives the mean next-token cross entropy in `loss`."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        _reject_unknown(kwargs, self.forward)
        if labels is not None and (shape := _input_shape(input_ids, inputs_embeds)) is not None:
            check_labels("labels", labels, shape, self.config.vocab_size, "vocab_size")
        is_moe = self.config.architecture().mlp == "moe"
        if output_router_logits is None:
            output_router_logits = getattr(self.config, "output_router_logits", False)
        packed = getattr(past_key_values, "packed", False)  # a packed forward keeps an index tensor's rows itself
        keep_last = logits_to_keep if isinstance(logits_to_keep, int) or packed else 0
        trunk, cache = self.model._trunk(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                         use_cache, output_attentions, output_hidden_states, cache_position,
                                         is_moe and output_router_logits, keep_last)
        hidden = trunk.last_hidden_state  # [B, T, hidden], or only the last `keep_last` positions
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        if trunk.kept:
            keep = slice(None)  # the trunk returned just those positions
        logits = self.lm_head(hidden[:, keep, :])  # [B, T', V]
        loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        if not is_moe:
            out: ModelOutput = CausalLMOutputWithPast(loss, logits, cache, trunk.hidden_states, trunk.attentions)
            return self._finish(out, return_dict)
        aux_loss = None
        if output_router_logits:
            aux_loss = load_balancing_loss(trunk.router_logits, self.config.num_local_experts,
                                           self.config.num_experts_per_tok, attention_mask)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        out = MoeCausalLMOutputWithPast(loss, aux_loss, logits, cache, trunk.hidden_states, trunk.attentions,
                                        trunk.router_logits)
        return self._finish(out, return_dict)


class SequenceClassification(PreTrainedMixin, nn.Module):
    """Decoder + `score` (no bias) read at each sequence's last real token."""

    base_class: type[DecoderModel] = DecoderModel

    def __init__(self, config: PhiKitConfig) -> None:
        self._check_config(config)
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.model = self.base_class(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                cache_position: torch.LongTensor | None = None, **kwargs: Any):
        """Returns `SequenceClassifierOutputWithPast` with logits [B, num_labels] taken at the last real token:
        the last position the attention mask marks, else the last token that is not `pad_token_id`."""
        _reject_unknown(kwargs, self.forward)
        trunk, cache = self.model._trunk(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                         use_cache, output_attentions, output_hidden_states, cache_position, False)
        logits = self.score(trunk.last_hidden_state)  # [B, T, num_labels]
        b, t = logits.shape[:2]
        last = _last_real_token(input_ids, attention_mask, self.config.pad_token_id, b, t, logits.device)
        pooled = logits[torch.arange(b, device=logits.device), last]  # [B, num_labels]
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        out = SequenceClassifierOutputWithPast(loss, pooled, cache, trunk.hidden_states, trunk.attentions)
        return self._finish(out, return_dict)


def _last_real_token(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, pad_token_id: int | None,
                     batch: int, length: int, device: torch.device) -> torch.Tensor:
    """[B] index of each row's last real token. The mask wins over ids: Phi-3's pad id is also <|endoftext|>."""
    index = torch.arange(length, device=device)
    if attention_mask is not None:
        real = attention_mask[:, -length:].to(device=device, dtype=torch.int64)
        return (index * real).argmax(-1)
    if pad_token_id is None:
        if batch != 1:
            raise ValueError("a batch of more than one sequence needs an attention_mask or config.pad_token_id "
                             "to find each sequence's last token")
        return torch.full((batch,), length - 1, device=device)
    if input_ids is None:
        return torch.full((batch,), length - 1, device=device)
    real = (input_ids != pad_token_id).to(device=device, dtype=torch.int64)
    return (index * real).argmax(-1)


class TokenClassification(PreTrainedMixin, nn.Module):
    """Decoder + dropout + `score` (with bias) on every token."""

    base_class: type[DecoderModel] = DecoderModel

    def __init__(self, config: PhiKitConfig) -> None:
        self._check_config(config)
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.model = self.base_class(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else 0.1
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                cache_position: torch.LongTensor | None = None, **kwargs: Any):
        """Returns `TokenClassifierOutput` with logits [B, T, num_labels]; labels [B, T] (-100 = ignore)."""
        _reject_unknown(kwargs, self.forward)
        if labels is not None and (shape := _input_shape(input_ids, inputs_embeds)) is not None:
            check_labels("labels", labels, shape, self.num_labels, "num_labels")
        trunk, _ = self.model._trunk(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                     use_cache, output_attentions, output_hidden_states, cache_position, False)
        logits = self.score(self.dropout(trunk.last_hidden_state))
        loss = token_classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return self._finish(TokenClassifierOutput(loss, logits, trunk.hidden_states, trunk.attentions), return_dict)


# ----- the seeds' classes ------------------------------------------------------------------------------------------
class PhiModel(DecoderModel):
    config_class = PhiConfig


class PhiForCausalLM(CausalLM):
    config_class, base_class = PhiConfig, PhiModel


class PhiForSequenceClassification(SequenceClassification):
    config_class, base_class = PhiConfig, PhiModel


class PhiForTokenClassification(TokenClassification):
    config_class, base_class = PhiConfig, PhiModel


class Phi3Model(DecoderModel):
    config_class = Phi3Config


class Phi3ForCausalLM(CausalLM):
    config_class, base_class = Phi3Config, Phi3Model


class Phi3ForSequenceClassification(SequenceClassification):
    config_class, base_class = Phi3Config, Phi3Model


class Phi3ForTokenClassification(TokenClassification):
    config_class, base_class = Phi3Config, Phi3Model


class PhimoeModel(DecoderModel):
    config_class = PhimoeConfig


class PhimoeForCausalLM(CausalLM):
    config_class, base_class = PhimoeConfig, PhimoeModel


class PhimoeForSequenceClassification(SequenceClassification):
    config_class, base_class = PhimoeConfig, PhimoeModel


__all__ = ["PhiModel", "PhiForCausalLM", "PhiForSequenceClassification", "PhiForTokenClassification",
           "Phi3Model", "Phi3ForCausalLM", "Phi3ForSequenceClassification", "Phi3ForTokenClassification",
           "PhimoeModel", "PhimoeForCausalLM", "PhimoeForSequenceClassification", "SparseMoE"]
