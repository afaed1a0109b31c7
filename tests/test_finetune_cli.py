"""`phikit finetune` end to end on a tiny Phi-3 with the real Phi-3-mini tokenizer: LoRA with evaluation and
checkpoints, resume, merge, full fine-tuning, and one-line user errors."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

import phikit
from phikit.finetune_cli import add_finetune_parser, run_finetune
from phikit.lora import load_adapter

PHI3_TOKENIZER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tokenizers" / "phi-3-mini"
CHATS = [
    '{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]}',
    '{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}, '
    '{"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}, '
    '{"role": "assistant", "content": "6"}]}',
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """A tiny Phi-3 checkpoint folder with the Phi-3-mini tokenizer, and data files next to it."""
    if not PHI3_TOKENIZER.is_dir():
        pytest.skip(f"no Phi-3-mini tokenizer fixture at {PHI3_TOKENIZER}")
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    config = phikit.Phi3Config(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=256, pad_token_id=32000,
                               eos_token_id=32000, bos_token_id=1)
    phikit.Phi3ForCausalLM(config).save_pretrained(root / "base")
    for f in PHI3_TOKENIZER.iterdir():
        shutil.copy(f, root / "base" / f.name)
    (root / "chats.jsonl").write_text("\n".join(CHATS * 3) + "\n")
    (root / "held_out.jsonl").write_text(CHATS[1] + "\n")
    (root / "code.txt").write_text("def add(a, b):\n    return a + b\n" * 8)
    return root


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="phikit")
    add_finetune_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["finetune", *argv])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[32010, 6324, 32007, 32001, 15043]])


def test_lora_finetune_evaluates_checkpoints_resumes_and_saves_a_peft_adapter(workspace, capsys) -> None:
    out = workspace / "lora"
    argv = ["--model", str(workspace / "base"), "--data", str(workspace / "chats.jsonl"), "--data",
            str(workspace / "code.txt"), "--eval-data", str(workspace / "held_out.jsonl"), "--output-dir", str(out),
            "--lora", "--lora-r", "4", "--lr", "1e-2", "--batch-size", "2", "--block-size", "64", "--save-steps", "2",
            "--no-progress"]
    assert run_finetune(_parse(*argv, "--max-steps", "3")) == 0
    captured = capsys.readouterr()
    assert "saved LoRA adapter (PEFT format)" in captured.out and "perplexity" in captured.err
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "checkpoint-2",
            "checkpoint-3"} <= {p.name for p in out.iterdir()}
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        run_finetune(_parse(*argv, "--max-steps", "5"))
    assert run_finetune(_parse(*argv, "--max-steps", "5", "--resume")) == 0
    assert (out / "checkpoint-5").is_dir()
    base = phikit.AutoModelForCausalLM.from_pretrained(workspace / "base")
    tuned = load_adapter(phikit.AutoModelForCausalLM.from_pretrained(workspace / "base"), out)
    assert not torch.allclose(_logits(base, IDS), _logits(tuned, IDS), atol=1e-4)


def test_merge_saves_a_full_model_equal_to_base_plus_adapter(workspace) -> None:
    out = workspace / "merged"
    assert run_finetune(_parse("--model", str(workspace / "base"), "--data", str(workspace / "chats.jsonl"),
                               "--output-dir", str(out), "--lora", "--lora-targets", "qkv_proj,down_proj", "--merge",
                               "--lr", "1e-2", "--max-steps", "2", "--block-size", "64", "--no-progress")) == 0
    merged = phikit.AutoModelForCausalLM.from_pretrained(out)
    with_adapter = load_adapter(phikit.AutoModelForCausalLM.from_pretrained(workspace / "base"), out / "adapter")
    assert_close(_logits(merged, IDS), _logits(with_adapter, IDS))


def test_full_finetune_changes_the_weights(workspace) -> None:
    out = workspace / "full"
    assert run_finetune(_parse("--model", str(workspace / "base"), "--data", str(workspace / "code.txt"),
                               "--output-dir", str(out), "--lr", "1e-3", "--max-steps", "2", "--block-size", "32",
                               "--gradient-checkpointing", "--no-progress")) == 0
    base = phikit.AutoModelForCausalLM.from_pretrained(workspace / "base")
    tuned = phikit.AutoModelForCausalLM.from_pretrained(out)
    assert not torch.allclose(_logits(base, IDS), _logits(tuned, IDS), atol=1e-4)


def test_user_errors_are_one_clear_message(workspace) -> None:
    base = ["--model", str(workspace / "base"), "--output-dir", str(workspace / "errors"), "--no-progress"]
    with pytest.raises(ValueError, match="--merge folds LoRA adapters.*add --lora"):
        run_finetune(_parse(*base, "--data", str(workspace / "code.txt"), "--merge"))
    with pytest.raises(OSError, match="nope.txt does not exist"):
        run_finetune(_parse(*base, "--data", str(workspace / "nope.txt"), "--block-size", "32"))
    with pytest.raises(ValueError, match="--block-size=4096 exceeds the model's max_position_embeddings=256"):
        run_finetune(_parse(*base, "--data", str(workspace / "code.txt"), "--block-size", "4096"))
    with pytest.raises(ValueError, match="matches no layer"):
        run_finetune(_parse(*base, "--data", str(workspace / "code.txt"), "--block-size", "32", "--lora",
                            "--lora-targets", "query_key_value"))


def test_phikit_command_runs_finetune(workspace) -> None:
    from phikit import cli

    if "finetune" not in cli.build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("`phikit finetune` is not wired into phikit/cli.py yet")
    out = workspace / "command"
    done = subprocess.run([sys.executable, "-m", "phikit.cli", "finetune", "--model", str(workspace / "base"),
                           "--data", str(workspace / "chats.jsonl"), "--output-dir", str(out), "--lora",
                           "--max-steps", "1", "--block-size", "64", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "adapter_model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "phikit.cli", "finetune", "--model", str(workspace / "base"),
                          "--data", str(workspace / "chats.jsonl"), "--output-dir", str(out), "--merge"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "phikit: error: --merge" in bad.stderr
