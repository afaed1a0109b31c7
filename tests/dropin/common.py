"""The drop-in suite's shared parts: tiny saved models of every family with real tokenizer files, the `Idiom` row
(user code written once as a function of the library namespace), and the comparison that runs it against
transformers and phikit.

An idiom is `fn(a, b, folder)`: usually `a` is the library the model comes from and `b` the one the tokenizer comes
from, both `transformers` for the reference run and both `phikit` for ours. Some idioms (save in one library, load
in the other) pass other pairs; the first pair of a row is always the reference and every other pair must give the
same value: exact for ids, strings, shapes and dtypes, `torch.testing.assert_close` (fp32) for float tensors.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import phikit
from tests.bad_inputs.harness import TOKENIZERS, require_tokenizers, tiny_config
from tests.oracle import randomize

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")

FAMILIES = ("phi", "phi3", "phimoe")
TOKENIZER_OF = {"phi": "phi-2", "phi3": "phi-3-mini", "phimoe": "phi-3-mini"}
CLASS_OF = {"phi": "Phi", "phi3": "Phi3", "phimoe": "Phimoe"}
HEADS = {"causal": "ForCausalLM", "seq": "ForSequenceClassification", "tok": "ForTokenClassification",
         "base": "Model"}
TF_TF = (transformers, transformers)
PK_PK = (phikit, phikit)
SAME_LIB = (TF_TF, PK_PK)
VOCAB_LIMIT = ("phikit's generate() never emits an id the checkpoint's tokenizer lacks (-inf scores at ids >= "
               "len(tokenizer); Phi pads its embedding: phi-2 has 51200 rows for 50295 tokens), where transformers "
               "keeps their scores")


def save_family(folder: pathlib.Path, family: str, head: str = "causal", seed: int = 0,
                **overrides: Any) -> pathlib.Path:
    """A tiny phikit model of `family` with spread-out random weights (greedy decoding far from ties), saved by
    phikit with the family's real tokenizer.json / tokenizer_config.json next to it."""
    require_tokenizers()
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = getattr(phikit, CLASS_OF[family] + HEADS[head])(config)
    randomize(model, seed)
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and lm_head.bias is not None:
        # As in a trained phi-2, the embedding's padding rows past the tokenizer are never the likeliest ids. (On
        # random weights they can be, and there phikit deliberately differs: `deliberate(VOCAB_LIMIT)` rows.)
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(TOKENIZERS / TOKENIZER_OF[family] / "tokenizer.json")).get_vocab_size(True)
        with torch.no_grad():
            lm_head.bias[size:] = -100.0
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS / TOKENIZER_OF[family] / name, folder / name)
    return folder


class Folders:
    """The saved tiny models, built once per session: `folders["phi3"]`, `folders["phi/tok"]`, `folders["tied"]`."""

    # max_position_embeddings past what the pipelines' default 256 new tokens reach
    SPECS: dict[str, tuple[str, str, dict]] = {
        "phi": ("phi", "causal", {"max_position_embeddings": 512}),
        "phi3": ("phi3", "causal", {"max_position_embeddings": 512}),
        "phimoe": ("phimoe", "causal", {"max_position_embeddings": 512}),
        "tied": ("phi3", "causal", {"tie_word_embeddings": True}),
        "phi/tok": ("phi", "tok", {"num_labels": 3}),
        "phi/seq": ("phi", "seq", {"num_labels": 2, "pad_token_id": 50256}),
    }

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._built: dict[str, pathlib.Path] = {}

    def __getitem__(self, key: str) -> pathlib.Path:
        if key not in self._built:
            family, head, overrides = self.SPECS[key]
            target = self.root / key.replace("/", "-")
            self._built[key] = save_family(target, family, head, **overrides)
        return self._built[key]


@dataclass(frozen=True)
class Idiom:
    """One piece of user code: `fn(a, b, folder)` run with each pair in `pairs` on `folders[model]`; every pair
    must return what the first (the reference) returned."""

    id: str
    fn: Callable[[Any, Any, pathlib.Path], Any]
    model: str = "phi3"
    pairs: tuple = SAME_LIB
    marks: tuple = field(default=())
    rtol: float | None = None
    atol: float | None = None


def params(idioms: list[Idiom]) -> list:
    ids = [i.id for i in idioms]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, f"duplicate idiom ids {sorted(dupes)}"
    return [pytest.param(i, id=i.id, marks=list(i.marks)) for i in idioms]


def gap(what: str) -> pytest.MarkDecorator:
    """phikit fails this today: the test stays, and turns red (XPASS strict) once the gap is fixed."""
    return pytest.mark.xfail(strict=True, reason=f"issue 18 gap: {what}")


def new_gap(what: str) -> pytest.MarkDecorator:
    """A gap this suite found (not in the issue's known list): reported with a reproduction."""
    return pytest.mark.xfail(strict=True, reason=f"issue 18 gap (new, found by tests/dropin): {what}")


def deliberate(what: str) -> pytest.MarkDecorator:
    """phikit differs from transformers here on purpose: the row must keep failing (strict), and a positive test
    next to it states what phikit does instead."""
    return pytest.mark.xfail(strict=True, reason=f"deliberate difference: {what}")


def name(lib: Any) -> str:
    return lib.__name__.split(".")[0]


def assert_same(ref: Any, got: Any, where: str = "value", rtol: float | None = None,
                atol: float | None = None) -> None:
    """Exact for everything but floating tensors / floats, which are compared as fp32 with assert_close."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: expected a tensor, got {type(got).__name__}"
        assert ref.shape == got.shape, f"{where}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
        if ref.is_floating_point():
            assert got.dtype == ref.dtype, f"{where}: dtype {got.dtype} != {ref.dtype}"
            torch.testing.assert_close(got.float(), ref.float(), rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(ref, got), f"{where}: {got.tolist()} != {ref.tolist()}"
    elif isinstance(ref, dict):
        assert isinstance(got, dict), f"{where}: expected a dict, got {type(got).__name__}: {got!r}"
        assert list(ref) == list(got), f"{where}: keys {list(got)} != {list(ref)}"
        for k in ref:
            assert_same(ref[k], got[k], f"{where}[{k!r}]", rtol, atol)
    elif isinstance(ref, (list, tuple)):
        assert isinstance(got, (list, tuple)), f"{where}: expected a sequence, got {type(got).__name__}: {got!r}"
        assert len(ref) == len(got), f"{where}: length {len(got)} != {len(ref)}: {got!r} vs {ref!r}"
        for i, (r, g) in enumerate(zip(ref, got)):
            assert_same(r, g, f"{where}[{i}]", rtol, atol)
    elif isinstance(ref, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)), f"{where}: expected a number, got {type(got).__name__}: {got!r}"
        torch.testing.assert_close(torch.tensor(float(got)), torch.tensor(ref), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}: {m}")
    else:
        assert type(got) is type(ref) or (isinstance(ref, str) and isinstance(got, str)), \
            f"{where}: type {type(got).__name__} != {type(ref).__name__} ({got!r} vs {ref!r})"
        assert got == ref, f"{where}: {got!r} != {ref!r}"


def check(idiom: Idiom, folders: Folders) -> Any:
    """Run the idiom with every pair and compare each result with the reference's; returns the reference.

    With DROPIN_REFERENCE_ONLY=1 only the reference pair runs: every strict-xfail row must then XPASS, which proves
    the reference side of each known gap works (so the xfail is phikit's failure, not the test's)."""
    folder = folders[idiom.model]
    ref_a, ref_b = idiom.pairs[0]
    torch.manual_seed(0)
    ref = idiom.fn(ref_a, ref_b, folder)
    if os.environ.get("DROPIN_REFERENCE_ONLY") == "1":
        return ref
    for a, b in idiom.pairs[1:]:
        torch.manual_seed(0)
        got = idiom.fn(a, b, folder)
        assert_same(ref, got, f"{idiom.id} [{name(a)}, {name(b)}] vs [{name(ref_a)}, {name(ref_b)}]",
                    idiom.rtol, idiom.atol)
    return ref


def load(lib: Any, folder: pathlib.Path, cls: str = "AutoModelForCausalLM", **kwargs: Any) -> torch.nn.Module:
    """`lib.<cls>.from_pretrained(folder)` in eval mode (both libraries return eval-mode models already)."""
    return getattr(lib, cls).from_pretrained(folder, **kwargs)


def tokenizer(lib: Any, folder: pathlib.Path, **kwargs: Any) -> Any:
    return lib.AutoTokenizer.from_pretrained(folder, **kwargs)


SEEDS_DIR = TOKENIZERS.parents[1] / "seeds"


def seed_snippets() -> dict[str, str]:
    """Every code snippet of the seed docs, by `<seed file stem>:<line>` of its `from transformers import` line (or
    of its `transformers run` command line), mapped to that line. Fences in the seeds are not reliable (one file
    lost an opening fence), so a snippet is found by the line that starts it."""
    found = {}
    for path in sorted(SEEDS_DIR.glob("*.txt")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if "from transformers import" in line or "| transformers run" in line:
                found[f"{path.stem}:{number}"] = line.strip()
    return found
