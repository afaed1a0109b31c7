"""Hostile `phikit` command lines and stdin, run in-process: each ends with exactly one `phikit: error:` line on
stderr naming what was wrong, a non-zero exit status and no traceback. A failing run raises `CliFailure` (a
ValueError holding that line) so the rows use the shared case table."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest

from phikit import cli

from .harness import Case, expect_clear_error, folder_snapshot, params, save_tiny


class CliFailure(ValueError):
    """The command exited non-zero; the message is its stderr error line."""


def run_cli(argv: list[str], stdin: bytes = b"") -> None:
    err = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse
                code = e.code
    finally:
        sys.stdin = old_stdin
    text = err.getvalue()
    assert "Traceback" not in text, text
    if code:
        lines = [line for line in text.splitlines() if "error:" in line]
        assert len(lines) == 1, text
        raise CliFailure(f"exit {code}: {lines[0]}")


def r(*args: str, stdin: bytes = b"hi"):
    return lambda folder: run_cli([a.replace("{m}", str(folder)) for a in args], stdin)


CASES: list[Case] = [
    Case("non-utf8-stdin", r("run", "--model", "{m}", stdin=b"caf\xe9\n"), CliFailure, ("stdin", "utf-8", "0xe9")),
    Case("non-utf8-stdin-classify", r("run", "--task", "text-classification", "--model", "{m}", stdin=b"\xff\xfe"),
         CliFailure, ("stdin", "utf-8")),
    Case("empty-stdin", r("run", "--model", "{m}", stdin=b"  \n"), CliFailure, ("no prompt on stdin",)),
    Case("bad-task", r("run", "--task", "summarization", "--model", "{m}"), CliFailure,
         ("exit 2", "text-classification", "token-classification")),
    Case("zero-new-tokens", r("run", "--model", "{m}", "--max-new-tokens", "0"), CliFailure,
         ("exit 1", "max_new_tokens=0")),
    Case("nan-temperature", r("run", "--model", "{m}", "--do-sample", "--temperature", "nan"), CliFailure,
         ("temperature=nan",)),
    Case("top-p-above-one", r("run", "--model", "{m}", "--top-p", "1.5"), CliFailure, ("top_p=1.5", "(0, 1]")),
    Case("negative-top-k", r("run", "--model", "{m}", "--top-k", "-3"), CliFailure, ("top_k=-3",)),
    Case("zero-beams", r("run", "--model", "{m}", "--num-beams", "0"), CliFailure, ("num_beams=0",)),
    Case("penalty-zero", r("run", "--model", "{m}", "--repetition-penalty", "0"), CliFailure,
         ("repetition_penalty=0.0",)),
    Case("missing-model", r("run", "--model", "{m}/nope"), CliFailure, ("exit 1", "nope")),
    Case("generate-past-context", r("generate", "--model", "{m}", "x", "--max-new-tokens", "99999"), CliFailure,
         ("max_new_tokens=99999",)),
    Case("non-int-flag", r("generate", "--model", "{m}", "x", "--max-new-tokens", "five"), CliFailure,
         ("exit 2", "five")),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("cli"), "phi3")


@pytest.mark.parametrize("case", params(CASES))
def test_bad_command_lines(case: Case, folder) -> None:
    before = folder_snapshot(folder)
    expect_clear_error(case, folder)
    assert folder_snapshot(folder) == before
