"""The command line: the seeds' `echo ... | transformers run --task text-classification --model ... --device 0`
as `phikit run`. transformers 5.23 has no `run` command any more (its CLI offers chat, download, env, serve), so the
reference is what that command printed: the pipeline of the task applied to each line of stdin, `print(outputs)`."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tests.dropin.common import Idiom, load, params, tokenizer, transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The seed's shell line, verbatim but for the command (this worktree's phikit), the model (a tiny local folder) and
# `--device 0` (CPU). bash's quoting turns the inner `"""` into nothing, exactly as for the seed's users.
SEED_LINE = ('echo -e "\'\'\'def print_prime(n): """ Print all primes between 1 and n"""\'\'\'" | '
             '{phikit} run --task text-classification --model {model} --device cpu')
PHIKIT = f'"{sys.executable}" -c "import sys; from phikit.cli import main; sys.exit(main())"'


def run_shell(line: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def parse_printed(stdout: str) -> list:
    """The printed pipeline outputs: JSON or a Python literal, one per line or all in one."""
    rows = []
    for line in [ln for ln in stdout.splitlines() if ln.strip()]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = ast.literal_eval(line)
        rows.extend(value if isinstance(value, list) else [value])
    return rows


def seed_stdin() -> list[str]:
    """What `echo -e` in the seed line writes, split into the lines `transformers run` read one at a time."""
    out = run_shell(SEED_LINE.split(" | ")[0])
    return [line for line in out.stdout.splitlines() if line]


def classification_reference(folder: pathlib.Path) -> list:
    pipe = transformers.pipeline("text-classification", model=str(folder))
    rows = []
    for line in seed_stdin():
        rows.extend(pipe(line))
    return rows


IDIOMS: list[Idiom] = [
    Idiom("run_text_classification", lambda *_: None, model="phi/seq"),
    Idiom("run_text_generation", lambda *_: None, model="phi3"),
]
RUN = {i.id: i for i in IDIOMS}


@pytest.mark.parametrize("idiom", params(IDIOMS[:1]))
def test_run_text_classification(idiom, folders):
    """Same labels and scores as transformers' text-classification pipeline on the seed's stdin."""
    folder = folders[idiom.model]
    assert seed_stdin() == ["'''def print_prime(n):  Print all primes between 1 and n'''"]
    reference = classification_reference(folder)
    assert reference and set(reference[0]) == {"label", "score"}
    done = run_shell(SEED_LINE.format(phikit=PHIKIT, model=folder))
    assert done.returncode == 0, done.stderr[-2000:]
    got = parse_printed(done.stdout)
    assert [r["label"] for r in got] == [r["label"] for r in reference], done.stdout
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in got]),
                               torch.tensor([r["score"] for r in reference]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("idiom", params(IDIOMS[1:]))
def test_run_text_generation(idiom, folders):
    """`echo PROMPT | phikit run --task text-generation` prints transformers' greedy continuation of the prompt."""
    folder = folders[idiom.model]
    model, tok = load(transformers, folder), tokenizer(transformers, folder)
    enc = tok("Hello there\n", return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=8, do_sample=False)
    expected = tok.decode(ids[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    done = run_shell(f"echo 'Hello there' | {PHIKIT} run --task text-generation --model {folder} "
                     f"--max-new-tokens 8 --weights plain --dtype float32")
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected.strip() and expected.strip() in done.stdout, (expected, done.stdout)
