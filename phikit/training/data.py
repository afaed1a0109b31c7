"""Training data: plain text files chunked into blocks, and JSONL chat records with the loss on assistant turns only.

Every example is {"input_ids": [T], "labels": [T]} (labels not shifted: the model shifts; -100 = no loss). The
collator pads to the longest example and masks padding through the attention mask, never by token id: Phi-3's pad id
is `<|endoftext|>` (32000), which is also a real token that ends documents and must keep its label.

Assistant spans are found from the checkpoint's own chat template, not a hand-written one: the conversation up to
assistant turn i rendered with `add_generation_prompt=True` is a prefix of the whole rendering, and the turn starts
where that prefix ends. The turn runs through its content and the special token that closes it (`<|end|>` on
Phi-3/3.5/4-mini, `<|im_end|>` on Phi-4), which keeps its label so the model learns to stop. The template's
end-of-conversation token (`<|endoftext|>` on Phi-3) is not part of any turn and gets no label.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch

from ..hf.losses import IGNORE_INDEX

TEXT_SUFFIXES = (".txt", ".text", ".md", ".py", ".rst")
CHAT_SUFFIXES = (".jsonl",)
_READ_CHUNK = 1 << 20  # tokenize big text files in ~1 MB pieces cut at line ends


class TokenDataset(torch.utils.data.Dataset):
    """A list of examples {"input_ids": LongTensor [T], "labels": LongTensor [T]}."""

    def __init__(self, examples: list[dict[str, torch.Tensor]], skipped: int = 0) -> None:
        self.examples = examples
        self.skipped = skipped  # records dropped because truncation left them no labelled token

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[i]

    @property
    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)

    def __add__(self, other: TokenDataset) -> TokenDataset:
        return TokenDataset(self.examples + other.examples, self.skipped + other.skipped)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); convert it, e.g. iconv -t utf-8") from e


def _pieces(text: str) -> list[str]:
    """Cut a long text at line ends into ~1 MB pieces (one tokenizer call on 100 MB is slow and memory-hungry)."""
    pieces, start = [], 0
    while start < len(text):
        stop = text.find("\n", start + _READ_CHUNK)
        stop = len(text) if stop < 0 else stop + 1
        pieces.append(text[start:stop])
        start = stop
    return pieces


def text_dataset(paths: Sequence[str | os.PathLike], tokenizer, block_size: int) -> TokenDataset:
    """Concatenate the files (each ended by the eos token, so documents are separated as in pretraining) and cut the
    stream into blocks of `block_size` tokens; the last shorter block is kept (the collator pads it). Labels = ids."""
    if block_size < 2:
        raise ValueError(f"block_size={block_size} is too small; a block needs at least 2 tokens (typical: 512-4096)")
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for path in paths:
        text = _read_text(os.fspath(path))
        if not text.strip():
            raise ValueError(f"{path} is empty; give a file with training text")
        for ids in _encode(tokenizer, _pieces(text)):
            stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    examples = []
    for start in range(0, len(stream), block_size):
        block = torch.tensor(stream[start:start + block_size], dtype=torch.long)
        if len(block) >= 2:  # one token predicts nothing
            examples.append({"input_ids": block, "labels": block.clone()})
    return TokenDataset(examples)


def _messages(record: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: expected a record {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}, "
                         f"got {keys}")
    for j, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content", ""), str):
            raise ValueError(f"{where}: message {j} must be {{\"role\": str, \"content\": str}}, got {m!r:.80}")
    return record["messages"]


def assistant_char_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, [(start, content_end) per assistant turn]) in characters of the rendering."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ValueError("the conversation starts with an assistant message; start with a system or user turn")
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not full.startswith(prefix):
            raise ValueError(f"the chat template renders the conversation before assistant message {i} differently "
                             f"from the start of the whole conversation, so its turn cannot be located; the "
                             f"template must render conversations incrementally")
        content = (message.get("content") or "").strip()
        at = full.find(content, len(prefix)) if content else len(prefix)
        if at < 0:
            raise ValueError(f"assistant message {i}'s content does not appear in the rendered conversation (the "
                             f"template rewrites it); cannot place its labels")
        spans.append((len(prefix), at + len(content)))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict[str, Any]], max_length: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Chat template applied and tokenized: input_ids [T]; labels [T] = ids on assistant content tokens and on the
    special token closing each assistant turn, -100 elsewhere. Truncated to max_length (right)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} has no backend_tokenizer (with character offsets); use "
                        f"phikit.AutoTokenizer")
    full, spans = assistant_char_spans(tokenizer, messages)
    enc = backend.encode(full, add_special_tokens=False)
    ids, offsets = enc.ids, enc.offsets
    special = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    labels = [IGNORE_INDEX] * len(ids)
    for start, content_end in spans:
        j = 0
        while j < len(ids) and offsets[j][0] < start:
            j += 1
        while j < len(ids) and offsets[j][0] < content_end:
            labels[j] = ids[j]
            j += 1
        # the closing token: the first special token after the content, with only whitespace tokens between
        k = j
        while k < len(ids) and ids[k] not in special and not full[offsets[k][0]:offsets[k][1]].strip():
            k += 1
        if k < len(ids) and ids[k] in special:
            for m in range(j, k + 1):
                labels[m] = ids[m]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def chat_dataset(paths: Sequence[str | os.PathLike], tokenizer, max_length: int) -> TokenDataset:
    """JSONL files of {"messages": [...]} records, one example per record (truncated to max_length tokens)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template, which JSONL chat records need; train on a .txt file "
                         "instead or use the instruct checkpoint's tokenizer")
    examples, skipped = [], 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{os.fspath(path)}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON record") from e
                messages = _messages(record, where)
                if not any(m["role"] == "assistant" for m in messages):
                    raise ValueError(f"{where}: the record has no assistant message, so nothing to learn from")
                try:
                    example = tokenize_chat(tokenizer, messages, max_length)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from e
                if bool((example["labels"][1:] != IGNORE_INDEX).any()):
                    examples.append(example)
                else:
                    skipped += 1
    if not examples:
        raise ValueError(f"no chat record in {[os.fspath(p) for p in paths]} has an assistant token within "
                         f"{max_length} tokens; raise --block-size")
    return TokenDataset(examples, skipped)


def load_dataset(paths: Sequence[str | os.PathLike], tokenizer, block_size: int) -> TokenDataset:
    """Text files (.txt, .md, .py, ...) and JSONL chat files (.jsonl) in one dataset."""
    if not paths:
        raise ValueError("no data files given; pass a .txt or .jsonl file")
    text, chat = [], []
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise OSError(f"data file {path} does not exist")
        if not path.endswith(CHAT_SUFFIXES + TEXT_SUFFIXES):
            raise ValueError(f"{path}: unknown data format; use .jsonl for chat records ({{\"messages\": [...]}} per "
                             f"line) or a text file ({', '.join(TEXT_SUFFIXES)})")
        (chat if path.endswith(CHAT_SUFFIXES) else text).append(path)
    out = TokenDataset([])
    if text:
        out = out + text_dataset(text, tokenizer, block_size)
    if chat:
        out = out + chat_dataset(chat, tokenizer, block_size)
    return out


class DataCollator:
    """Pads examples (right side) into a batch: input_ids, attention_mask and labels, each [B, T_max].

    Labels are -100 wherever attention_mask == 0, so padding never counts in the loss whatever the pad id is."""

    def __init__(self, pad_token_id: int | None = None, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(e.get("labels", e["input_ids"]))
        labels = labels.masked_fill(mask == 0, IGNORE_INDEX)  # the rule itself, whatever labels an example carried
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
