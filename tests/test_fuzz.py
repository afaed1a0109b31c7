"""Every fuzz target in tests/fuzz runs for a bounded time without a finding (a crash, a hang, or an exception other
than its parser's own error type). A longer run: `python tests/fuzz/run.py --seconds 600`."""

from __future__ import annotations

import os

import pytest

from tests.fuzz.run import run, targets

pytest.importorskip("atheris", reason="atheris runs the fuzz targets: pip install -e .[test]")

SECONDS = int(os.environ.get("PHIKIT_FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("target", targets(), ids=lambda p: p.stem)
def test_fuzz_target_finds_nothing(target, tmp_path):
    rc, runs, tail = run(target, SECONDS, tmp_path)
    assert rc == 0, f"{target.name} found a problem (inputs saved under {tmp_path}):\n{tail}"
    assert runs > 0, f"{target.name} ran no inputs:\n{tail}"
