"""pipeline() tasks against transformers' pipelines on the same tiny saved weights and real tokenizer files:
text-generation (greedy, the default sampling with a fixed seed, chats with and without the full text, a continued
assistant message), text-classification (top_k, function_to_apply) and token-classification."""

from __future__ import annotations

import warnings

import pytest
import torch

import phikit
from phikit.pipelines import PipelineError

from .bad_inputs.harness import require_tokenizers, save_tiny
from .oracle import transformers

require_tokenizers()
warnings.filterwarnings("ignore", message=".*max_length.*")


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    # vocab_size = the tokenizer's size, so transformers (which has no vocab limit) can emit only decodable ids
    return save_tiny(tmp_path_factory.mktemp("lm"), "phi3", vocab_size=32011)


def _save_head(folder, cls_name: str, **config):
    torch.manual_seed(0)
    from .bad_inputs.harness import TOKENIZERS, tiny_config
    import shutil

    model = getattr(phikit, cls_name)(tiny_config("phi3", vocab_size=32011, **config))
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS / "phi-3-mini" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def pipes(lm_folder):
    return phikit.pipeline("text-generation", model=str(lm_folder)), \
        transformers.pipeline("text-generation", model=str(lm_folder))


CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("inputs, kw", [
    ("def fibonacci(n):", dict(do_sample=False, max_new_tokens=8)),
    ("def fibonacci(n):", dict(max_new_tokens=8)),  # the pipelines' default: sampling at temperature 0.7
    ("def f(x):", dict(max_new_tokens=6, return_full_text=False)),
    (["one", "two three"], dict(do_sample=False, max_new_tokens=5)),
    (CHAT, dict(do_sample=False, max_new_tokens=6)),
    (CHAT, dict(do_sample=False, max_new_tokens=6, return_full_text=False)),
    (CHAT, dict(max_new_tokens=6, return_full_text=False)),
    (CHAT + [{"role": "assistant", "content": "It is"}], dict(do_sample=False, max_new_tokens=4)),
    ("seeded", dict(max_new_tokens=5, num_return_sequences=2)),
], ids=["greedy", "default-sampling", "new-text", "batch", "chat", "chat-new-text", "chat-sampling",
        "chat-continue", "two-samples"])
def test_text_generation_equals_transformers(pipes, inputs, kw) -> None:
    ours, ref = pipes
    torch.manual_seed(0)
    got = ours(inputs, **kw)
    torch.manual_seed(0)
    want = ref(inputs, **kw)
    assert got == want


def test_text_generation_follows_the_models_generation_config(lm_folder, tmp_path) -> None:
    import shutil

    folder = tmp_path / "greedy"
    shutil.copytree(lm_folder, folder)
    phikit.GenerationConfig(do_sample=False, eos_token_id=32000, max_new_tokens=7).save_pretrained(folder)
    ours, ref = phikit.pipeline("text-generation", model=str(folder)), \
        transformers.pipeline("text-generation", model=str(folder))
    torch.manual_seed(1)
    a = ours("x = ")
    torch.manual_seed(2)  # greedy: the seed must not matter
    assert a == ref("x = ") and len(ref.tokenizer(a[0]["generated_text"]).input_ids) <= 3 + 7 + 1


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    out = {}
    for labels in (3, 1):
        folder = _save_head(tmp_path_factory.mktemp(f"cls{labels}"), "Phi3ForSequenceClassification",
                            num_labels=labels)
        out[labels] = (phikit.pipeline("text-classification", model=str(folder)),
                       transformers.pipeline("text-classification", model=str(folder)))
    return out


def _close(a, b) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    else:
        assert a.keys() == b.keys() and a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("labels", [3, 1])
@pytest.mark.parametrize("inputs, kw", [
    ("I loved it", {}), (["great", "awful film", "meh"], {}), ("I loved it", dict(top_k=2)),
    ("I loved it", dict(top_k=None)), (["a", "b c"], dict(top_k=None)),
    ("I loved it", dict(function_to_apply="sigmoid")), ("I loved it", dict(function_to_apply="none", top_k=None)),
], ids=["one", "list", "top2", "all", "list-all", "sigmoid", "none"])
def test_text_classification_equals_transformers(classifiers, labels, inputs, kw) -> None:
    ours, ref = classifiers[labels]
    if labels == 1 and kw.get("top_k") == 2:
        kw = dict(top_k=1)
    _close(ours(inputs, **kw), ref(inputs, **kw))


def test_token_classification_equals_transformers(tmp_path) -> None:
    folder = _save_head(tmp_path, "Phi3ForTokenClassification", num_labels=3,
                        id2label={0: "O", 1: "B-X", 2: "I-X"})
    ours = phikit.pipeline("token-classification", model=str(folder))
    ref = transformers.pipeline("token-classification", model=str(folder))
    for text in ("Ada Lovelace wrote code", "Paris"):
        got, want = ours(text), ref(text)
        assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in got] == \
            [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in want]
        for a, b in zip(got, want):
            assert a["score"] == pytest.approx(float(b["score"]), rel=1e-5)


def test_unknown_task_names_the_supported_ones() -> None:
    with pytest.raises(PipelineError, match="text-classification"):
        phikit.pipeline("summarization", model="x")
