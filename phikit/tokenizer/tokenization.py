"""`PhiTokenizer`: a transformers `PreTrainedTokenizerFast` look-alike on `tokenizers.Tokenizer`, and `AutoTokenizer`.

Text goes straight to the `tokenizers` backend built from the checkpoint's own files, so Phi-3 keeps its per-segment
`▁` after special tokens (transformers 5.x's `LlamaTokenizer` loses it, see the fixtures README) and phi-2 keeps its
whitespace tokens. Padding, truncation and tensors follow transformers' arguments and defaults; chat templates are
rendered by `phikit.chat_template` in a sandbox.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer

from .batch_encoding import BatchEncoding, pad_sequences, padded_length
from .call_inputs import (UnknownArgumentError, check_encodable, check_ids, check_one_text, check_positive, check_texts,
                          extra_fields, id_rows)
from .chat_template import ChatTemplateError, render_chat, select_template
from .settings_check import check_max_length, check_settings
from .special_tokens import SpecialTokensMixin
from .tiktoken_vocab import read_tiktoken_ranks, tiktoken_to_tokenizer
from .tokenizer_files import (ORIGINS_KEY, SPECIAL_TOKEN_KEYS, TokenizerLoadError, added_tokens_from_config,
                              load_folder, load_gguf, read_settings, resolve_tokenizer_path, save_folder, token_content)

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
_HUB_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "trust_remote_code", "use_fast",
               "subfolder", "force_download", "proxies", "legacy")
_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
             "add_bos_token", "add_eos_token", "chat_template", "additional_special_tokens", "extra_special_tokens",
             "model_input_names", *SPECIAL_TOKEN_KEYS)

TextInput = str | Sequence[str]


class PhiTokenizer(SpecialTokensMixin):
    """Tokenizer for Phi checkpoints with the API of transformers' fast tokenizers.

    Build it with `PhiTokenizer.from_pretrained(folder | hub id | file.gguf)` (or `AutoTokenizer.from_pretrained`),
    or directly from a `tokenizers.Tokenizer` and the settings of a `tokenizer_config.json`.
    """

    def __init__(self, tokenizer: Tokenizer, *, name_or_path: str = "", **settings: Any) -> None:
        origins = settings.pop(ORIGINS_KEY, None) or {}
        unknown = set(settings) - set(_SETTINGS) - {"added_tokens_decoder", "tokenizer_class"}
        if unknown:
            raise UnknownArgumentError(f"PhiTokenizer got unknown settings {sorted(unknown)}; known: {sorted(_SETTINGS)}.")
        check_settings("tokenizer settings", settings)
        self._tokenizer = tokenizer
        # Padding and truncation are applied per call; a tokenizer.json that switches them on must not leak in.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._lock = threading.Lock()  # the backend's truncation setting is per call (set, encode, reset)
        self.name_or_path = name_or_path
        self.init_kwargs = dict(settings)
        self.model_max_length = check_max_length("tokenizer settings", "model_max_length",
                                                 settings.get("model_max_length")) or VERY_LARGE_INTEGER
        self.padding_side = settings.get("padding_side") or "right"
        self.truncation_side = settings.get("truncation_side") or "right"
        self.clean_up_tokenization_spaces = bool(settings.get("clean_up_tokenization_spaces", False))
        self.model_input_names = list(settings.get("model_input_names") or ["input_ids", "attention_mask"])
        self.chat_template: str | dict[str, str] | None = settings.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": ..., "template": ...}] as in tokenizer_config.json
            self.chat_template = {item["name"]: item["template"] for item in self.chat_template}
        self._template_origins: dict[str, str] = dict(origins)  # template text -> its file, for errors
        self._special: dict[str, str | None] = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = token_content(settings.get(key))
            if value is not None:
                self._add_missing_special(value)
            self._special[key] = value
        extra = settings.get("additional_special_tokens") or settings.get("extra_special_tokens") or []
        if isinstance(extra, dict):
            extra = list(extra.values())
        self.additional_special_tokens: list[str] = []
        for tok in extra:
            content = token_content(tok)
            if content not in self.additional_special_tokens:
                self._add_missing_special(content)
                self.additional_special_tokens.append(content)
        self._add_bos = settings.get("add_bos_token")
        self._add_eos = settings.get("add_eos_token")
        if self._add_bos is not None or self._add_eos is not None:
            self._update_post_processor()

    # ---------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PhiTokenizer:
        """Load from a folder (tokenizer.json or tokenizer.model + configs), a `.gguf` file, or a hub id.

        Keyword arguments override the saved settings (`padding_side="left"`, `pad_token=...`, `model_max_length`,
        `chat_template`, `add_bos_token`, ...); hub arguments (`revision`, `local_files_only`, `cache_dir`, `token`)
        apply to hub ids. `trust_remote_code` is accepted and never executes code.
        """
        unknown = set(kwargs) - set(_SETTINGS) - set(_HUB_KWARGS)
        if unknown:
            raise UnknownArgumentError(f"from_pretrained got unknown keyword arguments {sorted(unknown)}; tokenizer settings "
                            f"are {sorted(_SETTINGS)}.")
        hub = {k: kwargs.pop(k) for k in ("revision", "local_files_only", "cache_dir", "token") if k in kwargs}
        for k in _HUB_KWARGS:
            kwargs.pop(k, None)
        path = resolve_tokenizer_path(pretrained_model_name_or_path, **hub)
        if path.is_file() and path.suffix == ".gguf":
            backend, settings = load_gguf(path)
        elif path.is_dir():
            backend, settings = load_folder(path)
        else:
            raise TokenizerLoadError(f"{path}: expected a tokenizer folder or a .gguf file.")
        check_settings("from_pretrained keyword arguments", kwargs)
        settings.update(kwargs)
        return cls(backend, name_or_path=os.fspath(pretrained_model_name_or_path),
                   **{k: v for k, v in settings.items() if k in _SETTINGS or k == ORIGINS_KEY})

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, **kwargs: Any) -> PhiTokenizer:
        """Load the vocabulary of a GGUF file (llama.cpp); keyword arguments override its settings."""
        backend, settings = load_gguf(path)
        check_settings("from_gguf keyword arguments", kwargs)
        settings.update(kwargs)
        return cls(backend, name_or_path=os.fspath(path), **settings)

    @classmethod
    def from_tiktoken(cls, ranks_file: str | os.PathLike, pattern: str,
                      config_folder: str | os.PathLike | None = None, **kwargs: Any) -> PhiTokenizer:
        """Build from a tiktoken rank file and its split regex (Phi-4: cl100k_base, Phi-4-mini: o200k_base).

        `config_folder` supplies tokenizer_config.json (added tokens at their ids, special tokens, chat template),
        for checkpoints whose tokenizer.json is not at hand; keyword arguments override its settings.
        """
        settings = read_settings(Path(config_folder)) if config_folder is not None else {}
        added = added_tokens_from_config(settings.get("added_tokens_decoder") or {})
        backend = tiktoken_to_tokenizer(read_tiktoken_ranks(ranks_file), pattern, added)
        settings.update(kwargs)
        return cls(backend, name_or_path=os.fspath(config_folder or ranks_file),
                   **{k: v for k, v in settings.items() if k in _SETTINGS or k == ORIGINS_KEY})

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json and the chat template; transformers' AutoTokenizer loads them.

        The class written is `PreTrainedTokenizerFast`, which loads tokenizer.json as it is: naming `LlamaTokenizer`
        would make transformers 5.x rebuild the normalizer and lose Phi-3's `▁` after special tokens.
        """
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length, "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "model_input_names": self.model_input_names,
            **{k: v for k, v in self._special.items() if v is not None},
        }
        if self._add_bos is not None:
            config["add_bos_token"] = bool(self._add_bos)
        if self._add_eos is not None:
            config["add_eos_token"] = bool(self._add_eos)
        if self.additional_special_tokens:
            config["extra_special_tokens"] = list(self.additional_special_tokens)
        return save_folder(save_directory, self._tokenizer, config, self.chat_template)

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work."""
        return self._tokenizer

    @property
    def add_bos_token(self) -> bool:
        return bool(self._add_bos)

    @property
    def add_eos_token(self) -> bool:
        return bool(self._add_eos)

    # ---------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        """Vocabulary size including added tokens (may be smaller than the model's embedding rows)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        """Id of a token (or list); an unknown token maps to `unk_token_id` (None when there is no unk token)."""
        if isinstance(tokens, str):
            idx = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if idx is None else idx
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Token string of an id (or list of ids)."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            return self._id_to_token_checked(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token_checked(i) for i in check_ids(ids, len(self), "ids") if i not in special]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """Token strings of `text` (no special tokens added unless asked, as transformers)."""
        check_one_text(text, "text")
        if pair is not None:
            check_one_text(pair, "pair")
        check_encodable([text] if pair is None else [text, pair])
        enc = self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens)
        return enc.tokens

    # ---------------------------------------------------------------- encoding

    def __call__(
        self,
        text: TextInput,
        text_pair: TextInput | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Tokenize one text or a batch (optionally with `text_pair`) into a `BatchEncoding` of input_ids and masks.

        Padding: False / True or "longest" / "max_length". Truncation: True or "longest_first", "only_first",
        "only_second"; None truncates only when `max_length` is given without `padding="max_length"` (as
        transformers). `return_tensors="pt"` gives `[B, T]` tensors (`[1, T]` for one text). `offset_mapping`
        (character spans per token), `special_tokens_mask` and `length` come back on request, as transformers'.
        """
        if kwargs:
            raise UnknownArgumentError(f"unexpected keyword arguments {sorted(kwargs)} to the tokenizer call; the supported "
                             "ones are those of transformers' fast tokenizers (padding, truncation, max_length, "
                             "return_tensors, return_offsets_mapping, ...).")
        batched, texts = check_texts(text, "text")
        pairs = None
        if text_pair is not None:
            pair_batched, pairs = check_texts(text_pair, "text_pair")
            if pair_batched != batched or len(pairs) != len(texts):
                raise ValueError(f"text has {len(texts)} entries and text_pair {len(pairs)} "
                                 f"({'a list' if pair_batched else 'one str'}); give one str each or two lists of "
                                 "the same length.")
        check_positive("max_length", max_length)
        check_positive("pad_to_multiple_of", pad_to_multiple_of)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side={side!r}; use 'left' or 'right'.")
        encodings = self._encode(texts, pairs, add_special_tokens, truncation, max_length, padding)
        ids = [e.ids for e in encodings]
        out = BatchEncoding()
        target = padded_length([len(r) for r in ids], padding,
                               max_length if max_length is not None else self._finite_max_length(), pad_to_multiple_of)
        if target is not None:
            if self.pad_token_id is None:
                raise ValueError("padding needs a pad token and this tokenizer has none. Set one, e.g. "
                                 "tokenizer.pad_token = tokenizer.eos_token (or pass padding=False).")
            ids, mask = pad_sequences(ids, target, self.pad_token_id, side)
        else:
            mask = [[1] * len(r) for r in ids]
        out["input_ids"] = ids
        if return_attention_mask if return_attention_mask is not None else "attention_mask" in self.model_input_names:
            out["attention_mask"] = mask
        out.update(extra_fields(encodings, target, side, return_offsets_mapping, return_special_tokens_mask,
                                return_length, ids))
        if not batched and return_tensors is None:
            for key in out:
                if key != "length":  # transformers keeps `length` a list of one for one text
                    out[key] = out[key][0]
        return out.convert_to_tensors(return_tensors)

    def _finite_max_length(self) -> int | None:
        return self.model_max_length if self.model_max_length < VERY_LARGE_INTEGER else None

    def _encode(self, texts: list[str], pairs: list[str] | None, add_special_tokens: bool,
                truncation: bool | str | None, max_length: int | None, padding: bool | str) -> list[Any]:
        if truncation is None:
            truncation = max_length is not None and padding != "max_length"
        strategy = "longest_first" if truncation is True else truncation
        if strategy not in (False, "do_not_truncate", *TRUNCATION_STRATEGIES):
            raise ValueError(f"truncation={truncation!r}; use True/False or one of {TRUNCATION_STRATEGIES}.")
        check_encodable(texts, "text")
        if pairs is not None:
            check_encodable(pairs, "text_pair")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        with self._lock:
            if strategy not in (False, "do_not_truncate"):
                limit = max_length if max_length is not None else self._finite_max_length()
                if limit is None:
                    raise ValueError("truncation needs max_length=... (this tokenizer has no model_max_length).")
                self._tokenizer.enable_truncation(limit, strategy=strategy, direction=self.truncation_side)
            try:
                return self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except Exception as exc:
                raise ValueError(f"tokenizers could not encode the input: {exc}") from exc
            finally:
                self._tokenizer.no_truncation()

    def encode(self, text: str, text_pair: str | None = None, *, add_special_tokens: bool = True,
               return_tensors: str | None = None, **kwargs: Any) -> list[int] | Any:
        """Ids of one text (a `[1, T]` tensor with `return_tensors="pt"`); takes `__call__`'s other arguments."""
        check_one_text(text, "text")
        enc = self(text, text_pair, add_special_tokens=add_special_tokens, return_tensors=return_tensors, **kwargs)
        return enc["input_ids"]

    # ---------------------------------------------------------------- decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **_: Any) -> str | list[str]:
        """Text of a list of ids (int, list, tensor, or BatchEncoding); a 2-D input decodes as a batch.

        Every id must be in 0..len(tokenizer)-1: an id the tokenizer does not have is a `ValueError` naming it
        (transformers drops such ids silently)."""
        batched, rows = id_rows(token_ids)
        if batched:
            return self.batch_decode(rows, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=clean_up_tokenization_spaces)
        text = self._tokenizer.decode(check_ids(rows[0], len(self)), skip_special_tokens=skip_special_tokens)
        # transformers 5.x never applies the WordPiece-era clean-up to BPE vocabularies (it strips real spaces
        # before punctuation); every Phi vocabulary is BPE, so only non-BPE models get it.
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean and type(self._tokenizer.model).__name__ != "BPE":
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Texts of a batch of id lists (or a `[B, T]` tensor)."""
        rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        if isinstance(rows, (str, bytes)) or not isinstance(rows, (list, tuple)):
            raise ValueError(f"batch_decode takes a list of id lists or a [B, T] tensor; got {type(rows).__name__}.")
        for n, row in enumerate(rows):
            check_ids(row, len(self), f"sequences[{n}]")
        return [self.decode(check_ids(r, len(self)), skip_special_tokens=skip_special_tokens, **kwargs) for r in rows]

    # ---------------------------------------------------------------- chat

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template string `apply_chat_template` would use."""
        return self._select_template(chat_template, tools)[0]

    def _select_template(self, chat_template: str | None, tools: list | None) -> tuple[str, str]:
        templates = self.chat_template
        texts = templates.items() if isinstance(templates, dict) else [("default", templates)]
        origins = {name: self._template_origins[text] for name, text in texts
                   if isinstance(text, str) and text in self._template_origins}
        return select_template(templates, chat_template, tools, origins)

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | BatchEncoding:
        """Render the conversation(s) with the checkpoint's chat template and (by default) tokenize them.

        As transformers 5.x: `return_dict=True` by default, so a tokenized result is a `BatchEncoding`; pass
        `return_dict=False` for bare ids, `tokenize=False` for the text. The rendered text carries its own special
        tokens, so none are added. A list of conversations gives a batch. Extra keyword arguments become template
        variables next to the special tokens (`bos_token`, `eos_token`, ...).
        """
        template, origin = self._select_template(chat_template, tools)
        conversation = getattr(conversation, "messages", conversation)
        if isinstance(conversation, (str, bytes, dict)) or not isinstance(conversation, (list, tuple)):
            raise ChatTemplateError(f"conversation is a {type(conversation).__name__}; it must be a list of message "
                                    "dicts such as [{'role': 'user', 'content': 'Hi'}] (or a list of such lists for "
                                    "a batch).")
        if len(conversation) == 0:
            raise ChatTemplateError("cannot apply a chat template to an empty conversation; give at least one "
                                    "message.")
        if tokenizer_kwargs is not None and not isinstance(tokenizer_kwargs, dict):
            raise ValueError(f"tokenizer_kwargs must be a dict of tokenizer call arguments; got "
                             f"{type(tokenizer_kwargs).__name__}.")
        first = conversation[0]
        batched = isinstance(first, (list, tuple)) or hasattr(first, "messages")
        conversations = list(conversation) if batched else [conversation]
        variables = {**self.special_tokens_map, **template_kwargs}
        rendered = render_chat(template, conversations, tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, origin=origin, **variables)
        if not tokenize:
            return rendered if batched else rendered[0]
        enc = self(rendered if batched else rendered[0], add_special_tokens=False, padding=padding,
                   truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                   **(tokenizer_kwargs or {}))
        return enc if return_dict else enc["input_ids"]

    def __repr__(self) -> str:
        return (f"PhiTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
                f"padding_side={self.padding_side!r}, special_tokens={self.special_tokens_map})")

    def __deepcopy__(self, memo: dict) -> PhiTokenizer:
        clone = copy.copy(self)
        clone._tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
        clone._lock = threading.Lock()
        clone._special = dict(self._special)
        clone.additional_special_tokens = list(self.additional_special_tokens)
        return clone


class AutoTokenizer:
    """transformers-style entry point: `AutoTokenizer.from_pretrained(path)` returns a `PhiTokenizer`."""

    def __init__(self) -> None:
        raise TypeError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained(path).")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PhiTokenizer:
        """Load the tokenizer of a folder, hub id or `.gguf` file (see `PhiTokenizer.from_pretrained`)."""
        return PhiTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)


__all__ = ["AutoTokenizer", "BatchEncoding", "PhiTokenizer"]
