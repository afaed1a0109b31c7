"""The training loop and its data: loss goes down, accumulation is exact, resuming reproduces an uninterrupted run,
chat labels sit exactly on assistant turns (with their closing <|end|>), and padding is masked by the attention mask."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
from torch.testing import assert_close

import phikit
from phikit.lora import apply_lora
from phikit.training import (DataCollator, TokenDataset, Trainer, TrainingConfig, chat_dataset, latest_checkpoint,
                             load_dataset, text_dataset, tokenize_chat)

PHI3_TOKENIZER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tokenizers" / "phi-3-mini"
ASSISTANT, END, ENDOFTEXT = 32001, 32007, 32000

CHAT = [{"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4.\nIt is  four."},
        {"role": "user", "content": "And <b>3+3</b>?"},
        {"role": "assistant", "content": " Six "}]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    if not PHI3_TOKENIZER.is_dir():
        pytest.skip(f"no Phi-3-mini tokenizer fixture at {PHI3_TOKENIZER}")
    return phikit.AutoTokenizer.from_pretrained(PHI3_TOKENIZER)


def tiny_model(seed: int = 0, **overrides) -> phikit.Phi3ForCausalLM:
    torch.manual_seed(seed)
    config = phikit.Phi3Config(**{**dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, pad_token_id=0), **overrides})
    return phikit.Phi3ForCausalLM(config)


def repetitive_data(n: int = 24, width: int = 16, ragged: bool = False) -> TokenDataset:
    """Blocks of a periodic token stream; ragged=True varies lengths and hides some labels (as chats do)."""
    stream = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11] * 60)
    examples = []
    for i in range(n):
        length = width - (i % 5) * 2 if ragged else width
        ids = stream[i * 7:i * 7 + length]
        labels = ids.clone()
        if ragged:
            labels[: 2 + i % 4] = -100
        examples.append({"input_ids": ids, "labels": labels})
    return TokenDataset(examples)


def test_training_lowers_the_loss(tmp_path) -> None:
    model = tiny_model()
    data = repetitive_data()
    trainer = Trainer(model, TrainingConfig(str(tmp_path), learning_rate=3e-3, max_steps=30, batch_size=4,
                                            warmup_steps=3, progress=False), data, repetitive_data(4))
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    assert result.losses[30] < 0.5 * result.losses[1]
    assert result.eval_loss < 0.5 * before and result.eval_perplexity == pytest.approx(
        torch.tensor(result.eval_loss).exp().item())
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-30")
    entry = result.log_history[0]
    assert entry["tokens_per_second"] > 0 and entry["lr"] < 3e-3  # warmup starts below the peak


def test_gradient_accumulation_equals_one_big_batch(tmp_path) -> None:
    data = repetitive_data(8, ragged=True)  # unequal label counts per micro-batch: a mean of means would differ
    params = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model = tiny_model()
        trainer = Trainer(model, TrainingConfig(str(tmp_path / f"{accum}"), learning_rate=1e-2, max_steps=1,
                                                batch_size=batch_size, grad_accum=accum, progress=False), data)
        result = trainer.train()
        params.append((result.losses[1], {n: p.detach().clone() for n, p in model.named_parameters()}))
    assert_close(params[0][0], params[1][0])
    for n in params[0][1]:
        assert_close(params[0][1][n], params[1][1][n], msg=n)


@pytest.mark.parametrize("lora", [False, True])
def test_resuming_gives_the_losses_of_an_uninterrupted_run(lora: bool, tmp_path) -> None:
    def build():
        model = tiny_model(resid_pdrop=0.0 if lora else 0.1)  # dropout: the RNG state must be restored too
        if lora:
            apply_lora(model, r=4, alpha=8, dropout=0.1)
        return model

    def config(folder: str) -> TrainingConfig:
        return TrainingConfig(folder, learning_rate=5e-3, max_steps=6, batch_size=2, grad_accum=2, save_steps=3,
                              warmup_steps=2, max_grad_norm=0.5, progress=False)

    data = repetitive_data(10)  # 5 micro-batches per epoch: the run crosses epochs mid-step
    full = Trainer(build(), config(str(tmp_path / "a")), data).train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert sorted(os.listdir(tmp_path / "a")) == ["checkpoint-3", "checkpoint-6"]  # no temporary folders left
    assert (checkpoint / ("adapter_model.safetensors" if lora else "model.safetensors")).is_file()
    resumed_model = build()
    resumed = Trainer(resumed_model, config(str(tmp_path / "b")), data).train(resume_from=str(checkpoint))
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == full.losses[step], step


def test_checkpoints_are_pruned_and_resume_needs_a_checkpoint(tmp_path) -> None:
    config = TrainingConfig(str(tmp_path), max_steps=4, batch_size=4, save_steps=1, save_total_limit=2,
                            progress=False)
    Trainer(tiny_model(), config, repetitive_data(8)).train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-4"]
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and len(state["log_history"]) == 4
    with pytest.raises(ValueError, match="no checkpoint-N"):
        Trainer(tiny_model(), TrainingConfig(str(tmp_path / "empty"), progress=False),
                repetitive_data(4)).train(resume_from="latest")
    lora_model = apply_lora(tiny_model(), r=2)
    with pytest.raises(ValueError, match="holds full weights.*same --lora"):
        Trainer(lora_model, config, repetitive_data(8)).train(resume_from="latest")


def test_bf16_autocast_trains_with_fp32_master_weights(tmp_path) -> None:
    model = tiny_model()
    result = Trainer(model, TrainingConfig(str(tmp_path), learning_rate=3e-3, max_steps=3, batch_size=4,
                                           precision="bf16", progress=False), repetitive_data(8)).train()
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_training_settings_raise_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="grad_accum=0"):
        Trainer(tiny_model(), TrainingConfig(str(tmp_path), grad_accum=0), repetitive_data(4))
    with pytest.raises(ValueError, match="dataset is empty"):
        Trainer(tiny_model(), TrainingConfig(str(tmp_path)), TokenDataset([]))
    frozen = tiny_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, TrainingConfig(str(tmp_path)), repetitive_data(4))


# ---------------------------------------------------------------- data (real Phi-3-mini tokenizer)


def _expected_assistant_labels(ids: list[int]) -> list[int]:
    """Oracle by token search: after each <|assistant|> up to and including the next <|end|>."""
    labels, inside = [], False
    for tok in ids:
        labels.append(tok if inside else -100)
        if tok == ASSISTANT:
            inside = True
        elif tok == END and inside:
            inside = False
    return labels


def test_chat_labels_cover_assistant_turns_and_their_final_end(tokenizer) -> None:
    example = tokenize_chat(tokenizer, CHAT)
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    assert ids == tokenizer.apply_chat_template(CHAT, return_dict=False)  # exactly the template's tokens
    assert labels == _expected_assistant_labels(ids)
    assert ids[-2:] == [END, ENDOFTEXT] and labels[-2:] == [END, -100]  # the final <|end|> keeps its label
    assert ids.count(ASSISTANT) == 2 and all(labels[i] == -100 for i, t in enumerate(ids) if t == ASSISTANT)
    assert tokenizer.decode([t for t in labels if t != -100]) == "4.\nIt is  four.<|end|> Six <|end|>"


def test_padding_is_masked_by_attention_mask_not_by_token_id(tokenizer, tmp_path) -> None:
    (tmp_path / "a.txt").write_text("def add(a, b):\n    return a + b\n")
    (tmp_path / "b.txt").write_text("print(add(1, 2))\n")
    first = tokenizer("def add(a, b):\n    return a + b\n", add_special_tokens=False)["input_ids"]
    block = len(first) + 3  # the first block holds file a, the separator and the start of file b
    text = text_dataset([tmp_path / "a.txt", tmp_path / "b.txt"], tokenizer, block_size=block)
    stream = torch.cat([e["input_ids"] for e in text.examples]).tolist()
    want = first + [ENDOFTEXT] + tokenizer("print(add(1, 2))\n", add_special_tokens=False)["input_ids"] + [ENDOFTEXT]
    assert stream == want and len(text.examples) == 2 and len(text.examples[0]["input_ids"]) == block
    chat = tokenize_chat(tokenizer, CHAT)
    batch = DataCollator(tokenizer.pad_token_id)([text.examples[0], chat])
    assert tokenizer.pad_token_id == ENDOFTEXT
    row = batch["input_ids"][0]
    n = len(text.examples[0]["input_ids"])
    assert ENDOFTEXT in row[:n].tolist()  # a real <|endoftext|> (document separator) ...
    assert torch.equal(batch["labels"][0, :n], row[:n])  # ... keeps its label
    assert (row[n:] == ENDOFTEXT).all() and (batch["labels"][0, n:] == -100).all()  # padding of the same id: none
    assert torch.equal(batch["attention_mask"][0], (torch.arange(row.shape[0]) < n).long())
    labelled = (batch["labels"][1] != -100).nonzero().max()
    assert batch["input_ids"][1, labelled] == END  # the chat's last labelled token is its closing <|end|>


def test_chat_jsonl_dataset_and_its_errors(tokenizer, tmp_path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n\n" + json.dumps({"messages": CHAT[:3]}) + "\n")
    data = load_dataset([path], tokenizer, block_size=512)
    assert len(data) == 2 and data.skipped == 0
    # truncation: a record left without any labelled token is skipped (and counted), none left is an error
    short = {"messages": CHAT[1:3]}
    first_label = int((tokenize_chat(tokenizer, short["messages"])["labels"] != -100).nonzero().min())
    assert int((data[0]["labels"] != -100).nonzero().min()) > first_label + 1
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps(short) + "\n")
    truncated = chat_dataset([mixed], tokenizer, max_length=first_label + 2)
    assert len(truncated) == 1 and truncated.skipped == 1
    with pytest.raises(ValueError, match="within 4 tokens; raise --block-size"):
        chat_dataset([mixed], tokenizer, max_length=4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CHAT}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_dataset([bad], tokenizer, 512)
    bad.write_text(json.dumps({"messages": CHAT[:2]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: the record has no assistant message"):
        load_dataset([bad], tokenizer, 512)
    bad.write_text(json.dumps({"conversation": CHAT}) + "\n")
    with pytest.raises(ValueError, match=r"expected a record.*got \['conversation'\]"):
        load_dataset([bad], tokenizer, 512)
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="table.csv: unknown data format"):
        load_dataset([tmp_path / "table.csv"], tokenizer, 512)
    with pytest.raises(OSError, match="missing.txt does not exist"):
        load_dataset([tmp_path / "missing.txt"], tokenizer, 512)
