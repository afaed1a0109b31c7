"""Streaming, pipeline and the `phikit` command, on tiny random models saved with real Phi tokenizers."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading

import pytest
import torch

import phikit
from phikit.generation.streamers import IncrementalDetokenizer

from .oracle import randomize
from .tokenizer_cases import TOKENIZERS, llama_cpp_cases, require_fixtures

require_fixtures()

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phi3_tokenizer():
    return phikit.AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")


@pytest.fixture(scope="module")
def phi2_tokenizer():
    return phikit.AutoTokenizer.from_pretrained(TOKENIZERS / "phi-2")


def _stream(tokenizer, ids: list[int], **kw) -> str:
    detok = IncrementalDetokenizer(tokenizer, **kw)
    return "".join(detok.push([i]) for i in ids) + detok.flush()


@pytest.mark.parametrize("which", ["phi3_tokenizer", "phi2_tokenizer"])
def test_streamed_text_equals_full_decode_on_the_hardest_strings(which: str, request) -> None:
    tokenizer = request.getfixturevalue(which)
    cases = [text for text, _ in llama_cpp_cases("phi-3")]
    assert any("\u200d" in t or "🦙" in t for t in cases) and any("   " in t for t in cases)
    for text in cases + ["<|user|>\n東京は 🌸  spaces\t\ttabs<|end|>\n<|assistant|>"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for kw in ({}, {"skip_special_tokens": True}):
            assert _stream(tokenizer, ids, **kw) == tokenizer.decode(ids, **kw), repr(text)


def test_stream_holds_back_incomplete_utf8(phi3_tokenizer) -> None:
    ids = phi3_tokenizer.encode("🌸", add_special_tokens=False)  # byte-fallback pieces
    assert len(ids) > 1
    detok = IncrementalDetokenizer(phi3_tokenizer)
    pieces = [detok.push([i]) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1].endswith("🌸")
    assert "\ufffd" not in "".join(pieces)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, phi3_tokenizer) -> pathlib.Path:
    """A tiny random Phi-3 with the real Phi-3-mini tokenizer and chat template, saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny-phi3")
    config = phikit.Phi3Config(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=512, pad_token_id=32000,
                               eos_token_id=32000, bos_token_id=1)
    model = phikit.Phi3ForCausalLM(config)
    randomize(model, seed=3)
    model.generation_config = phikit.GenerationConfig(eos_token_id=[32000, 32001, 32007], pad_token_id=32000)
    model.save_pretrained(folder)
    phi3_tokenizer.save_pretrained(folder)
    return folder


def test_generate_streams_what_it_returns(model_dir) -> None:
    model = phikit.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = phikit.AutoTokenizer.from_pretrained(model_dir)
    assert model.tokenizer_vocab_size == len(tokenizer) == 32011
    enc = tokenizer("Hello 東京", return_tensors="pt")
    streamer = phikit.TextIteratorStreamer(tokenizer, skip_prompt=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ids", model.generate(
        **enc, max_new_tokens=40, do_sample=True, streamer=streamer)))
    torch.manual_seed(0)
    thread.start()
    text = "".join(streamer)
    thread.join()
    new = result["ids"][0, enc["input_ids"].shape[1]:]
    assert text == tokenizer.decode(new)
    assert int(new.max()) < 32011  # never an id past the tokenizer's end


def test_pipeline_takes_text_chat_and_batches(model_dir) -> None:
    pipe = phikit.pipeline("text-generation", model=str(model_dir), dtype=torch.float32, device="cpu")
    out = pipe("def fibonacci(n):", max_new_tokens=5, do_sample=False)  # the pipeline samples by default
    assert out[0]["generated_text"].startswith("def fibonacci(n):")
    only_new = pipe("def fibonacci(n):", max_new_tokens=5, return_full_text=False, do_sample=False)
    assert out[0]["generated_text"] == "def fibonacci(n):" + only_new[0]["generated_text"]
    chat = [{"role": "user", "content": "Hi there"}]
    reply = pipe(chat, max_new_tokens=5)[0]["generated_text"]
    assert reply[:1] == chat and reply[1]["role"] == "assistant"
    batch = pipe(["a", "bb bb bb", "c c"], max_new_tokens=4, batch_size=3, do_sample=False)
    alone = [pipe(t, max_new_tokens=4, do_sample=False)[0]["generated_text"] for t in ["a", "bb bb bb", "c c"]]
    assert [b[0]["generated_text"] for b in batch] == alone


def _cli(*args: str, stdin: str = "", env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "phikit.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_run_reads_stdin(model_dir) -> None:
    out = _cli("run", "--task", "text-generation", "--model", str(model_dir), "--max-new-tokens", "5",
               stdin="def add(a, b):")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("def add(a, b):") and "loaded Phi3ForCausalLM" in out.stderr


def test_cli_generate_flags_are_reproducible(model_dir) -> None:
    args = ("generate", "--model", str(model_dir), "Once upon a time", "--max-new-tokens", "8", "--do-sample",
            "--temperature", "0.8", "--top-p", "0.9", "--seed", "7")
    first, second = _cli(*args), _cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("Once upon a time")
    assert first.stdout.count("Once upon a time") == 1  # the prompt is printed once, then the stream
    greedy = _cli("generate", "--model", str(model_dir), "Once upon a time", "--max-new-tokens", "8", "--no-stream")
    model = phikit.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = phikit.AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer("Once upon a time", return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=8, tokenizer=tokenizer)
    assert greedy.stdout == "Once upon a time" + tokenizer.decode(ids[0, enc["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True) + "\n"


def test_cli_chat_commands(model_dir) -> None:
    out = _cli("chat", "--model", str(model_dir), "--max-new-tokens", "4",
               stdin="hello\n/system You are terse.\nhi again\n/reset\n/bogus\nbye\n/exit\nnever read\n")
    assert out.returncode == 0, out.stderr
    assert "system prompt set" in out.stderr and "conversation reset" in out.stderr
    assert "unknown command /bogus" in out.stderr


@pytest.mark.parametrize("args,stdin,message", [
    (("run", "--model", "/nonexistent/model"), "hi", "not a local folder"),
    (("run", "--model", "microsoft/phi-2"), "hi", "offline"),
    (("generate", "--model", "{model}", "x", "--max-new-tokens", "100000"), "", "lower max_new_tokens"),
    (("run", "--model", "{model}"), "", "no prompt on stdin"),
])
def test_cli_errors_are_one_line_with_nonzero_exit(model_dir, tmp_path, args, stdin, message) -> None:
    args = tuple(a.replace("{model}", str(model_dir)) for a in args)
    out = _cli(*args, stdin=stdin, env_extra={"HF_HOME": str(tmp_path)})
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("phikit: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bad_flag_and_help() -> None:
    bad = _cli("generate", "--model")
    assert bad.returncode == 2 and "expected one argument" in bad.stderr
    helptext = _cli("chat", "--help")
    assert helptext.returncode == 0 and "/reset" in helptext.stdout and "--max-new-tokens" in helptext.stdout


def test_cli_run_text_classification_prints_label_and_score_per_line(tmp_path, phi3_tokenizer) -> None:
    config = phikit.Phi3Config(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, pad_token_id=32000, eos_token_id=32000, num_labels=3)
    model = phikit.Phi3ForSequenceClassification(config)
    model.save_pretrained(tmp_path)
    phi3_tokenizer.save_pretrained(tmp_path)
    out = _cli("run", "--task", "text-classification", "--model", str(tmp_path), stdin="I loved it\n\nawful\n")
    assert out.returncode == 0, out.stderr
    import json

    rows = [json.loads(line) for line in out.stdout.splitlines()]
    pipe = phikit.pipeline("text-classification", model=str(tmp_path))
    assert len(rows) == 2 and rows[0]["label"] == pipe("I loved it")[0]["label"]
    assert rows[1]["score"] == pytest.approx(pipe("awful")[0]["score"])
    assert "newly initialised" not in out.stderr


def test_cli_says_when_a_head_is_not_in_the_checkpoint(tmp_path, phi3_tokenizer) -> None:
    """The seeds' `run --task text-classification` on a causal-LM checkpoint: the head is initialised at random (as
    transformers does), and the command says so instead of printing labels as if they meant something."""
    config = phikit.Phi3Config(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, pad_token_id=32000, eos_token_id=32000)
    phikit.Phi3ForCausalLM(config).save_pretrained(tmp_path)
    phi3_tokenizer.save_pretrained(tmp_path)
    out = _cli("run", "--task", "text-classification", "--model", str(tmp_path), stdin="I loved it\n")
    assert out.returncode == 0, out.stderr
    assert "score.weight not in the checkpoint, newly initialised at random" in out.stderr


def test_cli_bad_task_names_the_tasks() -> None:
    out = _cli("run", "--task", "summarization")
    assert out.returncode == 2 and "text-classification" in out.stderr and "token-classification" in out.stderr


def test_cli_internal_error_is_one_line_and_debug_shows_the_traceback(model_dir) -> None:
    code = ("import sys, phikit.cli as c\n"
            "def boom(args): raise KeyError('x')\n"
            "c.COMMANDS['doctor'] = boom\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run([sys.executable, "-c", code, "doctor"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 3 and "Traceback" not in quiet.stderr
    assert "bug in phikit" in quiet.stderr and "PHIKIT_DEBUG=1" in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code, "doctor"], capture_output=True, text=True,
                          env={**env, "PHIKIT_DEBUG": "1"})
    assert "Traceback" in loud.stderr and "KeyError" in loud.stderr
