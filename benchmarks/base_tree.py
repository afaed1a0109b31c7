"""A base commit checked out beside this tree, for benchmarks that run old and new code in turn (ABBA)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def base_tree(commit: str, script: Path) -> Iterator[Path]:
    """A temporary git worktree at `commit` (removed on exit), with this tree's copies of `script` and of this file in
    it, so both sides run the same measuring code."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), commit], cwd=REPO, check=True)
        try:
            for path in (script, Path(__file__).resolve()):
                (base / path.relative_to(REPO)).write_text(path.read_text())
            yield base
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)


def abba(rounds: int, base: Path) -> Iterator[list[tuple[str, Path]]]:
    """Each round's order of the two trees: base first in even rounds, new first in odd ones."""
    for k in range(rounds):
        pair = [("base", base), ("new", REPO)]
        yield pair if k % 2 == 0 else pair[::-1]
