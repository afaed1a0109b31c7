"""The bundled default model: it loads offline, the README's main command prints a completion, and on held-out
standard-library files it is far better than a unigram model of those very files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import phikit

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDER = ROOT / "phikit" / "default_model"

if not (FOLDER / "model.safetensors").is_file():
    pytest.skip("no bundled model in phikit/default_model (train it with scripts/train_default_model.py)",
                allow_module_level=True)


def _script():
    spec = importlib.util.spec_from_file_location("train_default_model", ROOT / "scripts" / "train_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_model_is_small_and_documented() -> None:
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size <= 20e6
    record = json.loads((FOLDER / "TRAINING.json").read_text())
    assert record["held_out_perplexity"] < record["unigram_perplexity"] / 10
    readme = (ROOT / "README.md").read_text()
    assert f"{record['held_out_perplexity']:.1f}" in readme and record["command"] in readme


def test_held_out_loss_far_below_a_unigram_model_of_the_same_files() -> None:
    script = _script()
    _, held = script.corpus_files()
    tokenizer = phikit.AutoTokenizer.from_pretrained(FOLDER)
    model = phikit.AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32)
    ids = script.encode_all(tokenizer, script.read(held[:8]))
    loss = script.evaluate(model, ids, block=256, max_blocks=16)
    counts = torch.bincount(ids, minlength=len(tokenizer)).double()
    probs = counts[counts > 0] / counts.sum()
    unigram = float(-(probs * probs.log()).sum())  # entropy of the files' own unigram fit: no unigram does better
    assert math.exp(loss) < math.exp(unigram) / 5, (loss, unigram)


def test_main_command_prints_a_completion_offline() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "phikit.cli", "generate", "def fibonacci(n):",
                          "--max-new-tokens", "24"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("def fibonacci(n):") and out.stdout.count("def fibonacci(n):") == 1
    assert len(out.stdout.strip()) > len("def fibonacci(n):") + 5
