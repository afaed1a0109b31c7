"""Logits processors against transformers 5.x (the test-only oracle): same arguments, same scores, equal results;
filters checked on exact probabilities; `build_logits_processors` against `GenerationMixin._get_logits_processor`."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from phikit.generation import logits_process as P
from phikit.generation_config import GenerationConfig

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")
T = pytest.importorskip("transformers.generation.logits_process")

V = 64  # vocabulary of the random scores
INF = math.inf


def _scores(batch: int = 3, seed: int = 0, vocab: int = V) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _ids(batch: int = 3, length: int = 12, seed: int = 1, high: int = V) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def _tied_scores() -> torch.Tensor:
    """Scores with many ties (integers 0..3), and some -inf already present."""
    s = torch.randint(0, 4, (3, V), generator=torch.Generator().manual_seed(7)).float()
    s[0, :10] = -INF
    s[2, ::3] = -INF
    return s


def _with_neg_inf() -> torch.Tensor:
    s = _scores(seed=3)
    s[:, V // 2:] = -INF
    return s


# Repetitions so that repetition / n-gram / bad-word processors all trigger: row 0 repeats a 3-gram, row 1 ends with
# the prefix [7, 8] of a bad word, row 2 holds the same token many times.
HISTORY = torch.tensor([[3, 4, 5, 9, 3, 4, 5, 1, 3, 4],
                        [2, 7, 8, 1, 7, 8, 0, 2, 7, 8],
                        [6, 6, 6, 6, 1, 6, 6, 2, 6, 6]])

SCORE_SETS = {"random": _scores(), "ties": _tied_scores(), "neg_inf": _with_neg_inf(),
              "batch1": _scores(batch=1, seed=5)}

BAD = ([7, 8, 2], [8, 3], [5], [4, 5, 9, 3], list(range(1, 13)))  # the last is longer than the history

# (id, phikit processor, transformers processor)
CASES = [
    ("temperature-0.7", P.TemperatureLogitsWarper(0.7), T.TemperatureLogitsWarper(0.7)),
    ("temperature-2", P.TemperatureLogitsWarper(2), T.TemperatureLogitsWarper(2.0)),
    *[(f"top_k-{k}-keep{m}", P.TopKLogitsWarper(k, min_tokens_to_keep=m), T.TopKLogitsWarper(k, min_tokens_to_keep=m))
      for k, m in [(1, 1), (5, 1), (1, 3), (V, 1), (V + 10, 1)]],
    ("top_k-filter-value", P.TopKLogitsWarper(3, filter_value=-100.0), T.TopKLogitsWarper(3, filter_value=-100.0)),
    *[(f"top_p-{p}-keep{m}", P.TopPLogitsWarper(p, min_tokens_to_keep=m), T.TopPLogitsWarper(p, min_tokens_to_keep=m))
      for p, m in [(0.1, 1), (0.5, 1), (0.9, 1), (1.0, 1), (0.3, 4)]],
    *[(f"min_p-{p}-keep{m}", P.MinPLogitsWarper(p, min_tokens_to_keep=m), T.MinPLogitsWarper(p, min_tokens_to_keep=m))
      for p, m in [(0.0, 1), (0.05, 1), (0.3, 1), (1.0, 1), (0.9, 3)]],
    *[(f"typical-{p}-keep{m}", P.TypicalLogitsWarper(p, min_tokens_to_keep=m),
       T.TypicalLogitsWarper(p, min_tokens_to_keep=m)) for p, m in [(0.2, 1), (0.9, 1), (0.99, 1), (0.5, 3)]],
    ("repetition-1.3", P.RepetitionPenaltyLogitsProcessor(1.3), T.RepetitionPenaltyLogitsProcessor(1.3)),
    ("repetition-0.7", P.RepetitionPenaltyLogitsProcessor(0.7), T.RepetitionPenaltyLogitsProcessor(0.7)),
    ("repetition-ignore-int", P.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=4),
     T.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=4)),
    ("repetition-ignore-rows", P.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor([0, 3, 9])),
     T.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor([0, 3, 9]))),
    *[(f"no_repeat-{n}", P.NoRepeatNGramLogitsProcessor(n), T.NoRepeatNGramLogitsProcessor(n))
      for n in (1, 2, 3, 4, 11)],
    ("bad-single", P.NoBadWordsLogitsProcessor([[5], [9]]), T.NoBadWordsLogitsProcessor([[5], [9]])),
    ("bad-multi", P.NoBadWordsLogitsProcessor(list(BAD)), T.NoBadWordsLogitsProcessor(list(BAD))),
    ("bad-same-last", P.NoBadWordsLogitsProcessor([[7, 8, 2], [6, 6, 2], [4, 2]]),
     T.NoBadWordsLogitsProcessor([[7, 8, 2], [6, 6, 2], [4, 2]])),
    ("bad-eos-dropped", P.NoBadWordsLogitsProcessor([[1], [2], [0, 1]], eos_token_id=[1, 3]),
     T.NoBadWordsLogitsProcessor([[1], [2], [0, 1]], eos_token_id=[1, 3])),
    ("min_length-active", P.MinLengthLogitsProcessor(11, [1, 2]), T.MinLengthLogitsProcessor(11, [1, 2])),
    ("min_length-done", P.MinLengthLogitsProcessor(10, 1), T.MinLengthLogitsProcessor(10, 1)),
    ("min_new-active", P.MinNewTokensLengthLogitsProcessor(6, 5, 1), T.MinNewTokensLengthLogitsProcessor(6, 5, 1)),
    ("min_new-done", P.MinNewTokensLengthLogitsProcessor(6, 4, [1, 70]),
     T.MinNewTokensLengthLogitsProcessor(6, 4, [1, 70])),
    ("suppress", P.SuppressTokensLogitsProcessor([0, 5, 63, 100]), T.SuppressTokensLogitsProcessor([0, 5, 63, 100])),
    ("suppress-none", P.SuppressTokensLogitsProcessor([]), T.SuppressTokensLogitsProcessor([])),
    ("suppress-begin-now", P.SuppressTokensAtBeginLogitsProcessor([1, 2], 10),
     T.SuppressTokensAtBeginLogitsProcessor([1, 2], 10)),
    ("suppress-begin-later", P.SuppressTokensAtBeginLogitsProcessor([1, 2], 9),
     T.SuppressTokensAtBeginLogitsProcessor([1, 2], 9)),
]


def _allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
    return [int(ids[-1]), batch_id, 40 + batch_id, 63]


for beams in (1, 3):
    CASES.append((f"prefix-beams{beams}", P.PrefixConstrainedLogitsProcessor(_allowed, beams),
                  T.PrefixConstrainedLogitsProcessor(_allowed, beams)))


@pytest.mark.parametrize("scores_name", list(SCORE_SETS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_processor_equals_transformers(case: tuple, scores_name: str) -> None:
    _, ours, theirs = case
    scores = SCORE_SETS[scores_name]
    ids = HISTORY[: scores.shape[0]]
    if isinstance(ours, P.RepetitionPenaltyLogitsProcessor) and isinstance(ours.prompt_ignore_length, torch.Tensor) \
            and scores.shape[0] != 3:
        with pytest.raises(ValueError, match="3 rows"):  # the per-row prompt lengths are for 3 rows
            ours(ids, scores)
        return
    if isinstance(ours, P.PrefixConstrainedLogitsProcessor) and scores.shape[0] % ours._num_beams:
        with pytest.raises(ValueError, match="num_beams=3"):
            ours(ids, scores)
        return
    expected = theirs(ids, scores.clone())
    got = ours(ids, scores.clone())
    assert got.shape == scores.shape and got.dtype == scores.dtype
    assert torch.equal(got, expected), f"max diff {(got - expected).nan_to_num().abs().max()}"


def test_processors_on_long_random_histories() -> None:
    """Bigger batch, longer histories, many random bad words: all equal transformers'."""
    ids, scores = _ids(batch=6, length=40, seed=11, high=8), _scores(batch=6, seed=12)
    bad = [torch.randint(0, 8, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in range(1, 6)]
    pairs = [(P.NoRepeatNGramLogitsProcessor(3), T.NoRepeatNGramLogitsProcessor(3)),
             (P.NoBadWordsLogitsProcessor(bad), T.NoBadWordsLogitsProcessor(bad)),
             (P.RepetitionPenaltyLogitsProcessor(1.1), T.RepetitionPenaltyLogitsProcessor(1.1))]
    for ours, theirs in pairs:
        assert torch.equal(ours(ids, scores.clone()), theirs(ids, scores.clone())), type(ours).__name__


def test_prefix_constraint_unsatisfiable_forces_allowed_tokens() -> None:
    scores = _scores(batch=2)
    scores[:, [0, 1]] = -INF
    ours, theirs = (M.PrefixConstrainedLogitsProcessor(lambda b, ids: [0, 1], 1) for M in (P, T))
    got = ours(HISTORY[:2], scores.clone())
    assert torch.equal(got, theirs(HISTORY[:2], scores.clone()))
    assert got[:, :2].eq(0).all() and got[:, 2:].isneginf().all()


def test_processor_list_applies_in_order_and_accepts_user_processors() -> None:
    class AddOne(T.LogitsProcessor):  # a user's transformers-style processor
        def __call__(self, input_ids, scores):
            return scores + 1

    scores = _scores()
    ours = P.LogitsProcessorList([P.TemperatureLogitsWarper(0.5), AddOne(), P.TopKLogitsWarper(4)])
    theirs = T.LogitsProcessorList([T.TemperatureLogitsWarper(0.5), AddOne(), T.TopKLogitsWarper(4)])
    assert torch.equal(ours(HISTORY, scores.clone()), theirs(HISTORY, scores.clone()))

    class NeedsStep(P.LogitsProcessor):
        def __call__(self, input_ids, scores, step):
            return scores * step

    with pytest.raises(ValueError, match="step"):
        P.LogitsProcessorList([NeedsStep()])(HISTORY, scores)
    assert torch.equal(P.LogitsProcessorList([NeedsStep()])(HISTORY, scores, step=2), scores * 2)


# ---------------------------------------------------------------------------------------- exact probabilities

def _kept(fn, probs: list[float], **kwargs) -> list[bool]:
    return fn(torch.tensor([probs]).log(), **kwargs)[0].isfinite().tolist()


@pytest.mark.parametrize("top_p, kept", [(0.8, [True, True, False, False]), (0.5, [True, False, False, False]),
                                         (0.51, [True, True, False, False]), (0.96, [True, True, True, True]),
                                         (1.0, [True, True, True, True]), (0.01, [True, False, False, False])])
def test_top_p_exact(top_p: float, kept: list[bool]) -> None:
    assert _kept(P.top_p_filter, [0.5, 0.3, 0.15, 0.05], top_p=top_p) == kept


def test_top_p_binary_exact_boundaries_and_zero_probability() -> None:
    probs = [0.5, 0.25, 0.125, 0.125]
    assert _kept(P.top_p_filter, probs, top_p=0.75) == [True, True, False, False]
    assert _kept(P.top_p_filter, probs, top_p=0.5) == [True, False, False, False]
    assert _kept(P.top_p_filter, probs, top_p=0.25, min_tokens_to_keep=2) == [True, True, False, False]
    # top_p = 1.0 keeps everything with probability > 0 and drops exact zeros
    assert _kept(P.top_p_filter, [0.5, 0.5, 0.0], top_p=1.0) == [True, True, False]


def test_top_k_exact_and_ties() -> None:
    assert _kept(P.top_k_filter, [0.1, 0.4, 0.2, 0.3], k=2) == [False, True, False, True]
    # ties with the k-th score are all kept
    assert _kept(P.top_k_filter, [0.3, 0.2, 0.2, 0.2, 0.1], k=2) == [True, True, True, True, False]
    assert _kept(P.top_k_filter, [0.25] * 4, k=1) == [True] * 4


def test_min_p_exact() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    assert _kept(P.min_p_filter, probs, min_p=0.3) == [True, True, True, False]  # threshold 0.15 keeps 0.15
    assert _kept(P.min_p_filter, probs, min_p=0.5) == [True, True, False, False]
    assert _kept(P.min_p_filter, probs, min_p=1.0) == [True, False, False, False]
    assert _kept(P.min_p_filter, probs, min_p=1.0, min_tokens_to_keep=3) == [True, True, True, False]
    assert _kept(P.min_p_filter, [0.25] * 4, min_p=1.0) == [True] * 4  # all equal: nothing goes


def test_typical_exact() -> None:
    # entropy 1.089 nats; surprisals 0.511, 1.609, 2.303, 2.303: 0.2 is the most typical token, then 0.6, then 0.1s
    probs = [0.6, 0.2, 0.1, 0.1]
    assert _kept(P.typical_filter, probs, mass=0.15) == [False, True, False, False]  # the most likely token goes
    assert _kept(P.typical_filter, probs, mass=0.5) == [True, True, False, False]
    assert _kept(P.typical_filter, probs, mass=0.85) == [True, True, True, True]


# ---------------------------------------------------------------------------------------- phikit-only and errors

def test_vocab_limit_bans_padding_rows() -> None:
    scores = _scores(vocab=V)
    out = P.VocabLimitLogitsProcessor(50)(HISTORY, scores)
    assert out[:, 50:].isneginf().all() and torch.equal(out[:, :50], scores[:, :50])
    assert P.VocabLimitLogitsProcessor(V)(HISTORY, scores) is scores
    assert out.argmax(-1).lt(50).all()


@pytest.mark.parametrize("make, message", [
    (lambda: P.TopPLogitsWarper(0.0), r"top_p.*\(0, 1\].*0.0"),
    (lambda: P.TopPLogitsWarper(1.5), r"top_p.*1.5"),
    (lambda: P.TopKLogitsWarper(0), r"top_k.*>= 1.*0"),
    (lambda: P.TemperatureLogitsWarper(0.0), r"temperature.*do_sample=False"),
    (lambda: P.MinPLogitsWarper(-0.1), r"min_p.*\[0, 1\]"),
    (lambda: P.TypicalLogitsWarper(1.0), r"typical_p.*\(0, 1\)"),
    (lambda: P.RepetitionPenaltyLogitsProcessor(0.0), r"penalty"),
    (lambda: P.NoRepeatNGramLogitsProcessor(0), r"ngram_size"),
    (lambda: P.NoBadWordsLogitsProcessor([[1], []]), r"bad_words_ids"),
    (lambda: P.NoBadWordsLogitsProcessor([1, 2]), r"bad_words_ids"),
    (lambda: P.MinLengthLogitsProcessor(5, None), r"eos_token_id"),
    (lambda: P.VocabLimitLogitsProcessor(0), r"vocab_size"),
    (lambda: P.TopKLogitsWarper(3, min_tokens_to_keep=0), r"min_tokens_to_keep"),
])
def test_bad_arguments_name_the_value_and_range(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_word_outside_vocabulary_is_an_error() -> None:
    with pytest.raises(ValueError, match="token id 99 .* 64"):
        P.NoBadWordsLogitsProcessor([[99]])(HISTORY, _scores())


# ---------------------------------------------------------------------------------------- builder vs transformers

@pytest.fixture(scope="module")
def tiny_model():
    config = transformers.Phi3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, pad_token_id=0)
    return transformers.Phi3ForCausalLM(config).eval()


class Shift(T.LogitsProcessor):
    """A user processor that is neither phikit's nor transformers' own."""

    def __call__(self, input_ids, scores):
        return scores - 0.5


SHIFT = Shift()

BUILD_CASES = {
    "greedy-defaults": dict(),
    "greedy-eos": dict(eos_token_id=[1, 5], min_length=12, min_new_tokens=3),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.95,
                     eos_token_id=1),
    "sampling-skips": dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0),
    "processors": dict(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[3], [7, 8, 2], [1]],
                       min_length=11, min_new_tokens=3, suppress_tokens=[6, 7], begin_suppress_tokens=[8, 9],
                       eos_token_id=1, do_sample=True, top_k=5),
    "beam-sampling": dict(do_sample=True, num_beams=3, top_k=1, top_p=0.3, min_p=0.9, eos_token_id=[1, 2]),
    "beam-sampling-no-eos": dict(do_sample=True, num_beams=3, top_k=1),
    "prefix": dict(num_beams=3, eos_token_id=1, prefix=True),
    "extra-merge": dict(eos_token_id=1, min_length=20, repetition_penalty=1.5, do_sample=True, temperature=0.5,
                        extra=True),
    "left-padding": dict(repetition_penalty=1.4, mask=True),
}


@pytest.mark.parametrize("name", list(BUILD_CASES))
def test_build_logits_processors_equals_transformers(name: str, tiny_model) -> None:
    options = dict(BUILD_CASES[name])
    prefix = _allowed if options.pop("prefix", False) else None
    use_extra = options.pop("extra", False)
    mask = torch.tensor([[1] * 10, [0, 0, 0] + [1] * 7, [0] * 9 + [1]]) if options.pop("mask", False) else None
    ours_cfg = GenerationConfig(**options)
    theirs_cfg = transformers.GenerationConfig(**ours_cfg.to_dict())
    tiny_model._prepare_special_tokens(theirs_cfg, True, device="cpu")
    ours_extra = [P.MinLengthLogitsProcessor(12, 1), SHIFT] if use_extra else None
    theirs_extra = T.LogitsProcessorList([T.MinLengthLogitsProcessor(12, 1), SHIFT] if use_extra else [])
    length = HISTORY.shape[1]
    with pytest.warns(UserWarning, match="MinLength.*replaces") if use_extra else contextlib.nullcontext():
        ours = P.build_logits_processors(ours_cfg, length, prefix_allowed_tokens_fn=prefix, extra=ours_extra,
                                         attention_mask=mask)
    theirs = tiny_model._get_logits_processor(theirs_cfg, input_ids_seq_length=length, prefix_allowed_tokens_fn=prefix,
                                              logits_processor=theirs_extra, device="cpu",
                                              model_kwargs={"attention_mask": mask} if mask is not None else {})
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]
    if use_extra:
        assert ours[1].min_length == 12 and ours[2] is SHIFT  # replaced in place; the rest before the warpers
    for scores in SCORE_SETS.values():
        if scores.shape[0] != 3:
            continue
        assert torch.equal(ours(HISTORY, scores.clone()), theirs(HISTORY, scores.clone()))
    # the step after the first new token (begin suppression, min_new_tokens and min_length move on)
    longer = torch.cat([HISTORY, HISTORY[:, :2]], dim=1)
    scores = _scores(seed=9)
    assert torch.equal(ours(longer, scores.clone()), theirs(longer, scores.clone()))


def test_build_puts_vocab_limit_first_and_beam_keep_count() -> None:
    cfg = GenerationConfig(do_sample=True, num_beams=2, top_k=1, eos_token_id=[1, 2, 3], repetition_penalty=1.1)
    procs = P.build_logits_processors(cfg, 4, vocab_limit=50)
    assert [type(p).__name__ for p in procs] == ["VocabLimitLogitsProcessor", "RepetitionPenaltyLogitsProcessor",
                                                 "TopKLogitsWarper"]
    assert procs[-1].top_k == 4  # max(top_k, len(eos) + 1)
    out = procs(HISTORY, _scores())
    assert out[:, 50:].isneginf().all()


def test_build_refuses_options_it_would_ignore() -> None:
    with pytest.raises(ValueError, match="epsilon_cutoff=0.1 .* logits_processor"):
        P.build_logits_processors(GenerationConfig(epsilon_cutoff=0.1), 4)
    # the "off" values of those options are fine (generation_config.json files often spell them out)
    P.build_logits_processors(GenerationConfig(epsilon_cutoff=0.0, renormalize_logits=False, forced_eos_token_id=None),
                              4)
