"""Stopping criteria against transformers 5.x (test-only oracle), stop strings on the real Phi-3 and Phi-2
tokenizers from the shared fixtures, and `build_stopping_criteria` against `_get_stopping_criteria`."""

from __future__ import annotations

import contextlib
import pathlib
import time

import pytest
import torch

from phikit.generation import stopping_criteria as S
from phikit.generation_config import GenerationConfig

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")
TS = pytest.importorskip("transformers.generation.stopping_criteria")
tokenizers = pytest.importorskip("tokenizers")

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tokenizers"

IDS = torch.tensor([[5, 6, 7, 1, 8], [5, 6, 7, 8, 9], [2, 2, 2, 9, 1]])


class Adapter:
    """The tokenizer interface StopStringCriteria needs, over a raw `tokenizers.Tokenizer`."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.tok.id_to_token(i) for i in ids]


class ToyTokenizer:
    """Each id decodes to a fixed string, so the examples of transformers' docstring can be spelled out."""

    PIECES = ["st", "op", "stop", "opera", "las", "topper", "s", "to", "pped", "at", "tion", "x"]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.PIECES[i] for i in ids)

    def encode(self, pieces: str) -> list[int]:
        return [self.PIECES.index(p) for p in pieces.split()]


def _tokenizers(name: str):
    path = FIXTURES / name / "tokenizer.json"
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (the shared fixtures live beside the repository)")
    ours = Adapter(tokenizers.Tokenizer.from_file(str(path)))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    return ours, theirs


# ---------------------------------------------------------------------------------------- simple criteria

@pytest.mark.parametrize("max_length", [1, 4, 5, 6])
def test_max_length_equals_transformers(max_length: int) -> None:
    assert torch.equal(S.MaxLengthCriteria(max_length)(IDS, None), TS.MaxLengthCriteria(max_length)(IDS, None))


def test_max_length_warns_once_past_position_limit() -> None:
    criterion = S.MaxLengthCriteria(10, max_position_embeddings=3)
    with pytest.warns(UserWarning, match=r"max_position_embeddings \(3\)"):
        criterion(IDS, None)
    criterion(IDS, None)  # no second warning (pytest would report it as an error with -W error only)
    assert criterion._warned


@pytest.mark.parametrize("eos", [1, [1], [9, 1], [3], torch.tensor([8, 9])])
@pytest.mark.parametrize("new_tokens", [1, 2])
def test_eos_equals_transformers(eos, new_tokens: int) -> None:
    ours = S.EosTokenCriteria(eos)(IDS, None, new_token_length=new_tokens)
    theirs = TS.EosTokenCriteria(eos)(IDS, None, new_token_length=new_tokens)
    assert ours.dtype == torch.bool and ours.shape == (3,)
    assert torch.equal(ours, theirs)


def test_max_time() -> None:
    assert not S.MaxTimeCriteria(60.0)(IDS, None).any()
    assert S.MaxTimeCriteria(0.5, initial_timestamp=time.time() - 1)(IDS, None).all()
    start = time.time() - 1
    assert torch.equal(S.MaxTimeCriteria(0.5, start)(IDS, None), TS.MaxTimeCriteria(0.5, start)(IDS, None))


def test_list_ors_rows_and_reports_max_length() -> None:
    criteria = S.StoppingCriteriaList([S.EosTokenCriteria(1), S.MaxLengthCriteria(9)])
    assert criteria(IDS, None).tolist() == [False, False, True]
    assert criteria.max_length == 9 and S.StoppingCriteriaList().max_length is None


@pytest.mark.parametrize("make, message", [
    (lambda: S.MaxLengthCriteria(0), "max_length"),
    (lambda: S.MaxTimeCriteria(-1), "max_time"),
    (lambda: S.EosTokenCriteria([]), "eos_token_id"),
    (lambda: S.StopStringCriteria(ToyTokenizer(), []), "stop_strings"),
    (lambda: S.StopStringCriteria(ToyTokenizer(), ["ok", ""]), "stop_strings"),
    (lambda: S.StopStringCriteria(object(), "stop"), "decode"),
])
def test_bad_arguments(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------- stop strings

@pytest.mark.parametrize("pieces, done", [
    ("st op", True), ("stop", True), ("st opera", True), ("las topper", True), ("s to pped", True),
    ("x x s to pped", True),
    ("stop at", False), ("st op at", False), ("st opera tion", False), ("to pped", False), ("x", False),
])
def test_stop_string_rule_from_transformers_docstring(pieces: str, done: bool) -> None:
    tok = ToyTokenizer()
    criterion = S.StopStringCriteria(tok, "stop")
    assert criterion(torch.tensor([tok.encode(pieces)]), None).tolist() == [done]


def test_stop_string_batch_rows_independent() -> None:
    tok = ToyTokenizer()
    rows = torch.tensor([tok.encode("x st op"), tok.encode("x stop at"), tok.encode("x las topper")])
    assert S.StopStringCriteria(tok, ["stop", "xyz"])(rows, None).tolist() == [True, False, True]


def test_stop_string_longer_than_window_start() -> None:
    """A long stop string spread over many one-character tokens (a window of 4 x its length + 8 tokens)."""
    tok = ToyTokenizer()
    stop = "st" * 30
    rows = torch.tensor([[11] * 50 + [0] * 30])
    assert S.StopStringCriteria(tok, stop)(rows, None).tolist() == [True]
    assert S.StopStringCriteria(tok, "x" + stop)(rows, None).tolist() == [True]


PROMPT = "Question: where?\nAnswer:"
TEXTS = ["I live in Texas, near Austin. Texasville is elsewhere.", "Please stop here, unstoppable stopper.",
         "emoji 😀 then 😀😀 done", "日本語のテキスト、日本です。", "runs   of    spaces\n\n\nend \n\n",
         "tab\there\t\tx", "Привет, мир! stop"]
STOPS = ["Texas", " stop", "op", "😀", "\n\n", "日本", "   ", "\t\t", "мир", "Austin.", "x"]


@pytest.mark.parametrize("name, special", [("phi-3-mini", "<|end|>"), ("phi-2", "<|endoftext|>")])
def test_stop_strings_equal_transformers_on_real_tokenizer(name: str, special: str) -> None:
    """Every prefix of every generated text, on the real tokenizers (byte fallback and byte-level BPE): the row is
    done exactly when transformers' StopStringCriteria says so."""
    ours_tok, theirs_tok = _tokenizers(name)
    stops = STOPS + [special]
    ours, theirs = S.StopStringCriteria(ours_tok, stops), TS.StopStringCriteria(theirs_tok, stops)
    prompt = ours_tok.tok.encode(PROMPT, add_special_tokens=False).ids
    rows, hits = 0, 0
    for text in TEXTS + [f"fin{special}more"]:
        ids = ours_tok.tok.encode(text, add_special_tokens=False).ids
        # rows of equal length: the last 60 tokens of (prompt repeated, then the first k generated tokens)
        batch = torch.tensor([(prompt * 20 + ids[:k])[-60:] for k in range(1, len(ids) + 1)], dtype=torch.long)
        got, expected = ours(batch, None), theirs(batch, None)
        assert torch.equal(got, expected), (text, torch.nonzero(got != expected).flatten().tolist())
        rows, hits = rows + len(batch), hits + int(got.sum())
    assert hits > 15 and rows - hits > 50  # both outcomes are exercised


def test_stop_string_ending_mid_token_and_multi_token_on_phi3() -> None:
    tok, _ = _tokenizers("phi-3-mini")
    ids = tok.tok.encode("it was unstoppable", add_special_tokens=False).ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert len(pieces) >= 4
    criterion = S.StopStringCriteria(tok, ["unstop", "was un"])
    done = [criterion(torch.tensor([ids[:k]]), None).item() for k in range(1, len(ids) + 1)]
    # each stop string completes exactly once, in the token that holds its last character
    text_so_far = [tok.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    first = [k for k, t in enumerate(text_so_far) if "unstop" in t or "was un" in t]
    assert done.index(True) == first[0]


# ---------------------------------------------------------------------------------------- builder vs transformers

@pytest.fixture(scope="module")
def tiny_model():
    config = transformers.Phi3Config(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, pad_token_id=0, max_position_embeddings=64)
    return transformers.Phi3ForCausalLM(config).eval()


class Never(S.StoppingCriteria):
    def __call__(self, input_ids, scores=None, **kwargs):
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


NEVER = Never()


@pytest.mark.parametrize("options", [
    dict(), dict(max_length=30, eos_token_id=[32000, 32007]), dict(max_length=12, eos_token_id=32007, max_time=60.0),
    dict(max_length=12, stop_strings=["Texas", "\n\n"], eos_token_id=32000), dict(max_length=None, eos_token_id=1),
    dict(max_length=12, eos_token_id=32000, extra=True),
], ids=["defaults", "eos-list", "max-time", "stop-strings", "eos-only", "extra"])
def test_build_stopping_criteria_equals_transformers(options: dict, tiny_model) -> None:
    ours_tok, theirs_tok = _tokenizers("phi-3-mini")
    options = dict(options)
    use_extra = options.pop("extra", False)
    cfg = GenerationConfig(**options)
    theirs_cfg = transformers.GenerationConfig(**cfg.to_dict())
    tiny_model._prepare_special_tokens(theirs_cfg, True, device="cpu")
    ours_extra = [S.MaxLengthCriteria(14), NEVER] if use_extra else None
    theirs_extra = TS.StoppingCriteriaList([TS.MaxLengthCriteria(14), NEVER] if use_extra else [])
    with pytest.warns(UserWarning, match="MaxLength.*replaces") if use_extra else contextlib.nullcontext():
        ours = S.build_stopping_criteria(cfg, ours_tok, ours_extra, max_position_embeddings=64)
    theirs = tiny_model._get_stopping_criteria(theirs_cfg, theirs_extra, tokenizer=theirs_tok)
    assert [type(c).__name__ for c in ours] == [type(c).__name__ for c in theirs]
    if use_extra:
        assert ours.max_length == 14 and ours[-1] is NEVER
    prompt = ours_tok.tok.encode("We drove from Texas", add_special_tokens=False).ids
    for tail in ([], [32007], [32000], [13, 13], [1, 2, 3, 4, 5, 6, 7, 8]):
        rows = torch.tensor([(prompt + tail)[:-1] + [5], prompt + tail])
        assert torch.equal(ours(rows, None), theirs(rows, None)), tail


def test_build_stopping_criteria_resolves_max_new_tokens_and_needs_tokenizer() -> None:
    cfg = GenerationConfig(max_new_tokens=5, max_length=100, eos_token_id=None)
    assert S.build_stopping_criteria(cfg, input_ids_length=7).max_length == 12
    assert S.build_stopping_criteria(cfg).max_length == 100  # already resolved by the caller
    with pytest.raises(ValueError, match="stop_strings=.*tokenizer="):
        S.build_stopping_criteria(GenerationConfig(stop_strings="x"))
