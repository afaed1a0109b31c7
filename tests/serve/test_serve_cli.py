"""`phikit serve` without the serve extra says how to install it, in one line, and exits 1 (this module needs none
of the server packages: it hides FastAPI from a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HINT = "phikit: error: phikit serve needs the server extra: pip install 'phikit[serve]'"


def run_hidden(*argv: str, hidden: str = "fastapi") -> subprocess.CompletedProcess:
    code = (f"import sys; sys.modules[{hidden!r}] = None; from phikit.cli import main; "
            f"sys.exit(main(['serve', *sys.argv[1:]]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_the_extra_phikit_serve_prints_the_pip_hint():
    done = run_hidden(hidden="fastapi")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == HINT and done.stdout == ""


def test_serve_help_works_without_the_extra():
    done = run_hidden("--help")
    assert done.returncode == 0 and "--port-file" in done.stdout and "--api-key" in done.stdout
