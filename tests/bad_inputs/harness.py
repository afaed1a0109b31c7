"""The bad-input suite's shared parts: a case table row, the one assertion every row makes, snapshots that prove a
failed call changed nothing, tiny saved models with real tokenizer files, and a subprocess runner for inputs that
could hang or kill the interpreter.

Each `tests/bad_inputs/test_<boundary>.py` holds a `CASES` table of `Case` rows and one parametrized test over it;
`tests/bad_inputs/test_count.py` counts the rows of every table.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"

# Exceptions that say nothing to a user: a bad input must never surface as one of these.
GENERIC = (TypeError, KeyError, AttributeError, IndexError, RecursionError, MemoryError, OverflowError,
           UnicodeError, AssertionError, NotImplementedError, ZeroDivisionError)


@dataclass(frozen=True)
class Case:
    """One hostile input: `call(ctx)` must raise `error` (or a subclass) whose message contains every string in
    `names` (the field, value or file at fault). `ctx` is whatever the table's fixture builds (a folder, a model)."""

    id: str
    call: Callable[[Any], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    names: tuple[str, ...] = ()
    marks: tuple = field(default=())


def params(cases: list[Case]) -> list:
    """`pytest.param` rows for `@pytest.mark.parametrize("case", params(CASES))`; refuses duplicate ids."""
    ids = [c.id for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, f"duplicate case ids {sorted(dupes)}"
    return [pytest.param(c, id=c.id, marks=list(c.marks)) for c in cases]


def expect_clear_error(case: Case, ctx: Any = None) -> BaseException:
    """Run the case; assert it raised the expected, non-generic error naming what was wrong. Returns the error."""
    with pytest.raises(BaseException) as info:
        case.call(ctx)
    err = info.value
    assert isinstance(err, case.error), f"{case.id}: expected {case.error}, got {type(err).__name__}: {err}"
    # A subclass of ValueError that is also, say, a KeyError is fine; a bare generic exception is not.
    assert type(err) not in GENERIC, f"{case.id}: generic {type(err).__name__}: {err}"
    message = str(err)
    for name in case.names:
        assert name in message, f"{case.id}: message does not name {name!r}: {message}"
    return err


def folder_snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 of every file below `folder`, to assert a failed call left it as it was."""
    root = pathlib.Path(folder)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def model_snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Everything a failed call must not change on a model: parameter values, trainability, module types, config."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "config": model.config.to_dict() if hasattr(model, "config") else None,
    }


def assert_model_unchanged(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = model_snapshot(model)
    assert after["modules"] == before["modules"], "module tree changed"
    assert after["grad"] == before["grad"], "requires_grad changed"
    assert after["config"] == before["config"], "config changed"
    assert after["state"].keys() == before["state"].keys(), "state dict keys changed"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"


def require_tokenizers() -> None:
    if not (TOKENIZERS / "phi-3-mini" / "tokenizer.json").is_file():
        pytest.skip(f"tokenizer fixtures not found at {TOKENIZERS} (the repo's ../shared/fixtures)")


def tiny_config(family: str = "phi3", **overrides: Any):
    """A tiny random config of a family whose vocabulary fits the real tokenizer files' ids."""
    import phikit

    if family == "phi":
        base = dict(vocab_size=51200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=128)
        return phikit.PhiConfig(**{**base, **overrides})
    if family == "phi3":
        base = dict(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=128, pad_token_id=32000, eos_token_id=32000,
                    bos_token_id=1)
        return phikit.Phi3Config(**{**base, **overrides})
    if family == "phimoe":
        base = dict(vocab_size=32064, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                    max_position_embeddings=128, pad_token_id=32000, eos_token_id=32000, bos_token_id=1)
        return phikit.PhimoeConfig(**{**base, **overrides})
    raise ValueError(family)


def save_tiny(folder: str | os.PathLike, family: str = "phi3", seed: int = 0, **overrides: Any) -> pathlib.Path:
    """Save a tiny random model of `family` with the real tokenizer files of that family into `folder`."""
    import shutil

    import phikit

    require_tokenizers()
    folder = pathlib.Path(folder)
    torch.manual_seed(seed)
    cls = {"phi": phikit.PhiForCausalLM, "phi3": phikit.Phi3ForCausalLM, "phimoe": phikit.PhimoeForCausalLM}[family]
    model = cls(tiny_config(family, **overrides))
    model.save_pretrained(folder)
    source = TOKENIZERS / ("phi-2" if family == "phi" else "phi-3-mini")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return folder


def run_isolated(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for inputs that could hang or crash this one); a timeout fails the test."""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"did not finish within {timeout} s: {code[:200]}")
        raise AssertionError from e
