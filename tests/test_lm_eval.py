"""lm-evaluation-harness: phikit's model class (`phikit.integrations.lm_eval.PhikitLM`, registered as "phikit")
on phikit's own model and tokenizer gives the same loglikelihoods (fp32 tolerance) and the same greedy
`generate_until` strings as lm-eval's `HFLM` on the transformers model with the same weights. lm-eval's tasks need
datasets from a hub, so the requests are hand-built `Instance`s of each type, and the CLI runs a task defined
from a local YAML and JSON file."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from phikit.bundled import default_model_path  # noqa: E402
from phikit.integrations.lm_eval import PhikitLM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXTS = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n    def push(self, x):", "x = 1"]
CONTINUATIONS = ["\n    if n < 2:", "\nimport re", "\n        self.items.append(x)", " + 2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The bundled model without its generation_config's max_new_tokens: transformers lets that override the
    max_length HFLM passes, so HFLM would generate 64 tokens where max_gen_toks asks 24."""
    path = tmp_path_factory.mktemp("lm_eval") / "model"
    shutil.copytree(default_model_path(), path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "pad_token_id": 0}))
    return str(path)


@pytest.fixture(scope="module")
def pair(folder):
    ours = PhikitLM(pretrained=folder, dtype="float32", batch_size=3, max_gen_toks=24)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_gen_toks=24)
    return ours, theirs


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_registered_as_phikit():
    assert get_model("phikit") is PhikitLM


def test_loglikelihood_equals_hflm(pair):
    ours, theirs = pair
    reqs = instances("loglikelihood", list(zip(CONTEXTS, CONTINUATIONS)) + [("", "def main():")])
    got, want = ours.loglikelihood(reqs), theirs.loglikelihood(reqs)
    assert [g for _, g in got] == [g for _, g in want]
    for (a, _), (b, _) in zip(got, want):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4), (a, b)


def test_loglikelihood_rolling_equals_hflm(pair):
    ours, theirs = pair
    long_text = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(20))
    reqs = instances("loglikelihood_rolling", [(t,) for t in CONTEXTS + [long_text]])
    got, want = ours.loglikelihood_rolling(reqs), theirs.loglikelihood_rolling(reqs)
    for a, b in zip(got, want):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-3), (a, b)


def test_rolling_windows_past_max_length_equal_hflm(folder):
    ours = PhikitLM(pretrained=folder, dtype="float32", batch_size=2, max_length=64)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    theirs = HFLM(pretrained=model, tokenizer=transformers.AutoTokenizer.from_pretrained(folder), batch_size=2,
                  max_length=64)
    text = "\n".join(f"value_{i} = compute({i}, {i + 1})" for i in range(30))  # several 64-token windows
    reqs = instances("loglikelihood_rolling", [(text,)])
    assert len(ours.tok_encode(text)) > 3 * 64
    assert math.isclose(ours.loglikelihood_rolling(reqs)[0], theirs.loglikelihood_rolling(reqs)[0], rel_tol=1e-5)


def test_generate_until_equals_hflm(pair):
    ours, theirs = pair
    reqs = instances("generate_until", [(c, {"until": ["\n\n"], "max_gen_toks": 24}) for c in CONTEXTS]
                     + [(c, {"until": [":"], "max_gen_toks": 8, "do_sample": False}) for c in CONTEXTS[:2]])
    got, want = ours.generate_until(reqs), theirs.generate_until(reqs)
    assert got == want
    assert any(got) and all(":" not in g for g in got[-2:])


def test_chat_template_is_applied_when_asked(pair):
    ours, _ = pair
    ours.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
                                   "{% if add_generation_prompt %}<assistant>{% endif %}"
    try:
        assert ours.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
        assert ours.chat_template(True) == ours.tokenizer.chat_template
    finally:
        ours.tokenizer.chat_template = None


def test_phikit_eval_runs_a_local_task(tmp_path, capsys):
    """`phikit eval` on a task lm-eval reads from a local YAML and a local JSON file (no hub)."""
    rows = [{"question": "def add(a, b):\n    return a", "choices": [" + b", " * 0"], "label": 0},
            {"question": "import", "choices": [" os", " ???"], "label": 0}]
    (tmp_path / "data.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tiny_code.yaml").write_text(
        "task: tiny_code\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'data.json'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    from phikit.cli import main

    out = tmp_path / "results.json"
    assert main(["eval", "--model", default_model_path(), "--tasks", "tiny_code", "--include-path", str(tmp_path),
                 "--batch-size", "2", "--dtype", "float32", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["results"]["tiny_code"]
    assert 0.0 <= results["acc,none"] <= 1.0
    assert "tiny_code" in capsys.readouterr().out


def test_phikit_eval_bad_arguments_are_one_line(capsys):
    from phikit.cli import main

    assert main(["eval", "--model", default_model_path(), "--tasks", "", "--limit", "2"]) == 1
    assert "phikit: error:" in capsys.readouterr().err
