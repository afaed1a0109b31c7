"""Run every fuzz target in this folder for a bounded time, one after another; print each one's executions.

    python tests/fuzz/run.py --seconds 600 [--only NAME]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def targets() -> list[pathlib.Path]:
    return sorted(HERE.glob("fuzz_*.py"))


def run(target: pathlib.Path, seconds: int, workdir: pathlib.Path) -> tuple[int, int, str]:
    """Fuzz one target; returns (exit code, executions run, the output's last lines)."""
    proc = subprocess.run([sys.executable, str(target), f"-max_total_time={seconds}", "-timeout=10",
                           "-rss_limit_mb=4096", "-print_final_stats=1"],
                          capture_output=True, text=True, cwd=workdir, timeout=seconds * 3 + 120)
    text = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    return proc.returncode, int(runs[-1]) if runs else 0, "\n".join(text.splitlines()[-30:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    failed = 0
    for target in targets():
        if args.only and args.only not in target.stem:
            continue
        rc, runs, tail = run(target, args.seconds, pathlib.Path.cwd())
        print(f"{target.stem}: {runs} executions, exit {rc}")
        if rc:
            failed += 1
            print(tail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
