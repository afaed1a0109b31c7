"""phikit now against phikit at an older commit: prefill and decode speed, same machine, same checkpoint.

    .venv/bin/python benchmarks/against_commit.py [--base 3a83389] [--shapes phi-1.5,phi-3-mini]
        [--weights bf16,lossless,int8,int4] [--prompt-len 512] [--new-tokens 16] [--rounds 5] [--threads 2]

"old" is the base commit, checked out into a temporary git worktree (removed at the end); "new" is this working tree
as it is, uncommitted edits included (or `--new COMMIT`, in a second worktree: a tree others keep editing changes
under a long run). Both run with the same Python (this one), each on its own tree through PYTHONPATH, on the same
random-weight checkpoint of the real shape (`~/.cache/phikit/bench/<shape>`, the one `phikit bench` writes).

Every measurement is a fresh process (`python benchmarks/against_commit.py --child ...`): load the checkpoint with
the top-level API of phikit (`AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
quantization_config=...)`, int4 with group size 128 as `phikit bench` uses), one warm-up generation of 2 tokens,
then one greedy generation of NEW_TOKENS + 1 tokens after a PROMPT_LEN-token prompt, each token clocked as it
arrives -- what `phikit bench` measures: prefill tok/s = PROMPT_LEN / time to the first token, decode tok/s = the
rate of the NEW_TOKENS tokens after it.

This host's memory bandwidth drifts by 15-25% between minutes, so old and new run in turn: each round measures every
(shape, weights) once on each side, back to back, old first in one round and new first in the next (ABBA), and the
figure that counts is the median over rounds of the per-round ratio new / old, printed with its lowest and highest
("within 3%": both medians >= 0.97; "s per round": the wall time of one old + one new child). The host's load
average is taken as each child starts; the report says so when other work shared the CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.abspath(__file__)
WEIGHTS = ("bf16", "lossless", "int8", "int4")
INT4_GROUP_SIZE = 128  # as phikit/bench/engines.py::load_model (and bench.py at 3a83389)
# the CPU flags worth naming in the header: what phikit's CPU levels and PyTorch's kernels key on
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
         "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "bf16", "sve")
ENV_KEYS = ("PHIKIT_", "ATEN_CPU_CAPABILITY", "ONEDNN_", "DNNL_", "OMP_", "KMP_", "MKL_", "GOMP_")
# parameters per shape (phikit bench's SHAPES): the size a missing checkpoint would take, for the message
SHAPE_PARAMS = {"phi-1.5": 1.42e9, "phi-2": 2.78e9, "phi-3-mini": 3.82e9, "phi-3.5-moe": 41.9e9}


# ---------------------------------------------------------------------------------------------------------------
# the child: one side, one (checkpoint, weights), one measurement; prints one line of JSON

def child(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="against_commit.py --child")
    p.add_argument("--folder", required=True)
    p.add_argument("--weights", required=True, choices=WEIGHTS)
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--new-tokens", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--expect-root", required=True, help="the tree phikit must be imported from")
    args = p.parse_args(argv)
    # this file's folder is sys.path[0]; phikit must come from PYTHONPATH (the side's tree), nothing else
    sys.path[:] = [s for s in sys.path if os.path.abspath(s or ".") != os.path.dirname(HERE)]

    import torch

    torch.set_num_threads(args.threads)
    import phikit

    got = os.path.dirname(os.path.dirname(os.path.abspath(phikit.__file__)))
    if os.path.realpath(got) != os.path.realpath(args.expect_root):
        raise SystemExit(f"phikit came from {got}, not {args.expect_root}: PYTHONPATH did not take")

    kw: dict[str, Any] = {}
    if args.weights != "bf16":  # top-level names only: present at both commits
        kw["quantization_config"] = {"lossless": phikit.LosslessBf16Config(),
                                     "int8": phikit.Int8WeightOnlyConfig(),
                                     "int4": phikit.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)}[args.weights]
    start = time.perf_counter()
    model = phikit.AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.bfloat16, **kw).eval()
    load_s = time.perf_counter() - start
    ids = torch.randint(100, 30000, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))

    # its own streamer, not phikit.bench.engines.Clock: this child runs an old tree too, which may lack it
    class Clock:  # a streamer: generate() hands it the prompt, then each new token as it is chosen
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(n: int) -> tuple[float, list[float], list[int]]:  # as phikit/bench/engines.py::torch_engine
        clock = Clock()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, streamer=clock)
        return t0, clock.times[1:], out[0, ids.shape[1]:].tolist()  # the first put is the prompt

    run(2)  # warm-up: kernels, allocator, page cache (a full prompt, like the timed run)
    t0, times, tokens = run(args.new_tokens + 1)
    ttft = times[0] - t0
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    decode = (len(times) - 1) / (times[-1] - times[0])
    print(json.dumps({"prefill_tok_s": args.prompt_len / ttft, "decode_tok_s": decode, "ttft_s": ttft,
                      "load_s": load_s, "peak_rss_gb": peak / 1e9, "phikit": got,
                      "tokens_sha": hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:12],
                      "native": _native_status(), "threads": torch.get_num_threads()}))
    return 0


def _native_status() -> str:
    """Diagnostics, not timed: whether the native kernels loaded, in either commit's layout (phikit.cpu.kernels now,
    phikit.native_kernels at 3a83389), and the CPU level where the tree has one. Only modules already imported."""
    parts = []
    for name in ("phikit.cpu.kernels", "phikit.native_kernels"):
        mod = sys.modules.get(name)
        if mod is None or not hasattr(mod, "_library"):
            continue
        try:
            lib = mod._library()
            parts.append("native kernels loaded" if lib is not None else f"no native kernels: {mod.build_error}")
        except Exception as e:  # noqa: BLE001 - a diagnostic must not fail the measurement
            parts.append(f"native kernels: {type(e).__name__}: {e}")
    features = sys.modules.get("phikit.cpu.features")
    if features is not None:
        try:
            parts.append(f"level {features.level()}")
        except Exception as e:  # noqa: BLE001
            parts.append(f"level: {e}")
    return "; ".join(parts) or "unknown"


# ---------------------------------------------------------------------------------------------------------------
# the parent: worktree, checkpoints, rounds, report

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True, text=True).stdout.strip()


def cpu_header(threads: int) -> list[str]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    missing = [f for f in ("avx2", "avx512f", "avx512_bf16") if f not in flags]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"CPU: {model} ({platform.machine()}), {cpus} CPUs usable, {mem:.0f} GiB memory; {threads} threads",
             f"flags: {' '.join(have) or '-'}" + (f"  (no {', '.join(missing)})" if missing else "")]
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_KEYS)}
    if env:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    return lines


def torch_version() -> str:
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def checkpoint_folder(cache: str, shape: str) -> str:
    return os.path.join(cache, shape)


def has_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json")) and any(
        os.path.isfile(os.path.join(folder, f)) for f in ("model.safetensors", "model.safetensors.index.json"))


def checkpoint_mismatch(folder: str, shape: str) -> str | None:
    """Where the checkpoint's config.json disagrees with phikit bench's SHAPES entry (this tree's), if it does."""
    sys.path.insert(0, REPO)
    try:
        from phikit.bench.engines import SHAPES
    except Exception as e:  # noqa: BLE001 - a tree mid-edit: measure anyway, say so
        print(f"could not check {folder} against phikit.bench.engines.SHAPES ({type(e).__name__}: {e})",
              file=sys.stderr)
        return None
    finally:
        sys.path.pop(0)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    for key, want in SHAPES[shape].items():
        have = config.get(key, (config.get("rope_parameters") or {}).get(key))
        if key in config or key in (config.get("rope_parameters") or {}):
            if have != want:
                return f"{key} is {have!r}, {shape} has {want!r}"
    return None


def write_checkpoint(shape: str, folder: str) -> None:
    """This tree's phikit bench writer, in a child process (random bf16 weights of the shape, safetensors)."""
    code = "import sys; from phikit.bench.engines import write_checkpoint; write_checkpoint(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, shape, folder], check=True, env={**os.environ, "PYTHONPATH": REPO})


def measure(side: str, root: str, folder: str, weights: str, args: argparse.Namespace) -> dict[str, Any] | None:
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, HERE, "--child", "--folder", folder, "--weights", weights, "--prompt-len",
           str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
           "--expect-root", root]
    load = os.getloadavg()[0]  # the host's 1-minute load as the child starts (this run's own child counts ~threads)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    wall = time.perf_counter() - start
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        print(f"    {side}: failed: {tail}", file=sys.stderr, flush=True)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"], result["loadavg"] = wall, load
    return result


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def report(rows: list[dict[str, Any]], threads: int) -> list[str]:
    lines = ["| shape | weights | rounds | prefill tok/s old | new | prefill new/old [min, max] | "
             "decode tok/s old | new | decode new/old [min, max] | within 3% | s per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pairs = [(o, n) for o, n in zip(r["old"], r["new"]) if o and n]
        if not pairs:
            lines.append(f"| {r['shape']} | {r['weights']} | 0 | failed | | | | | | | |")
            continue
        cells = []
        ok = True
        for key in ("prefill_tok_s", "decode_tok_s"):
            old, new = (statistics.median(p[i][key] for p in pairs) for i in (0, 1))
            m, lo, hi = spread([n[key] / o[key] for o, n in pairs])
            ok &= m >= 0.97
            fmt = ".1f" if key == "prefill_tok_s" else ".2f"
            cells += [f"{old:{fmt}}", f"{new:{fmt}}", f"{m:.3f}x [{lo:.3f}, {hi:.3f}]"]
        per_round = statistics.median(o["wall_s"] + n["wall_s"] for o, n in pairs)
        lines.append(f"| {r['shape']} | {r['weights']} | {len(pairs)} | " + " | ".join(cells) +
                     f" | {'yes' if ok else 'NO'} | {per_round:.0f} |")
    notes = []
    for r in rows:
        for side in ("old", "new"):
            native = {x["native"] for x in r[side] if x}
            if len(native) > 1 or any(not s.startswith("native kernels loaded") for s in native):
                notes.append(f"{r['shape']} {r['weights']} {side}: {'; '.join(sorted(native))}")
        same = [o["tokens_sha"] == n["tokens_sha"] for o, n in zip(r["old"], r["new"]) if o and n]
        if same and not all(same):
            notes.append(f"{r['shape']} {r['weights']}: the greedy tokens differ between old and new (random weights"
                         " give near-flat logits, so rounding differences flip them; informational)")
    loads = [x["loadavg"] for r in rows for side in ("old", "new") for x in r[side] if x]
    if loads and max(loads) > threads + 1:
        notes.append(f"the host's 1-minute load average reached {max(loads):.1f} (median {statistics.median(loads):.1f}"
                     f") as children started, with {threads} threads of this run's own: other work shared the "
                     "CPUs; rerun on a quiet machine before reading these figures")
    if notes:
        lines += ["", "notes:"] + [f"* {n}" for n in notes]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="3a83389", help="the commit to compare against (default 3a83389)")
    p.add_argument("--new", default=None,
                   help="a commit for the new side, in a second worktree (default: this working tree as it is, "
                        "uncommitted edits included)")
    p.add_argument("--shapes", default="phi-1.5,phi-3-mini")
    p.add_argument("--weights", default=",".join(WEIGHTS), help="comma-separated subset of " + ",".join(WEIGHTS))
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens: the prefill figure (default 512)")
    p.add_argument("--new-tokens", type=int, default=16, help="decoded tokens timed (default 16)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "phikit", "bench"),
                   help="where the checkpoints are, one folder per shape (default ~/.cache/phikit/bench)")
    p.add_argument("--write-checkpoints", action="store_true",
                   help="write a missing checkpoint with this tree's phikit bench writer (Phi-3-mini: 7.6 GB)")
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    weights = [w for w in args.weights.split(",") if w]
    bad = [w for w in weights if w not in WEIGHTS] + [s for s in shapes if s not in SHAPE_PARAMS]
    if bad:
        p.error(f"unknown shape or weights: {', '.join(bad)}")

    folders = {}
    for shape in shapes:
        folder = checkpoint_folder(args.cache, shape)
        if not has_checkpoint(folder):
            if not args.write_checkpoints:
                p.error(f"no {shape} checkpoint at {folder}; write it with --write-checkpoints, or `.venv/bin/python "
                        f"-c \"from phikit.bench.engines import write_checkpoint; write_checkpoint('{shape}', "
                        f"'{folder}')\"` (random bf16 weights, {SHAPE_PARAMS[shape] * 2 / 1e9:.1f} GB)")
            print(f"writing random {shape} weights at {folder} ...", file=sys.stderr, flush=True)
            write_checkpoint(shape, folder)
        problem = checkpoint_mismatch(folder, shape)
        if problem:
            p.error(f"{folder} is not a {shape} checkpoint: {problem}")
        folders[shape] = folder

    base = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    new = git("rev-parse", "--verify", f"{args.new}^{{commit}}") if args.new else None
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    # SIGTERM (and SIGINT where a shell left it ignored) unwinds through the finally: the worktrees go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = tempfile.mkdtemp(prefix="phikit-against-")
    trees = []  # the worktrees added, removed in the finally
    start = time.perf_counter()
    try:
        sides = {}
        for side, commit in (("old", base), ("new", new)):
            if commit is None:
                sides[side] = REPO
                continue
            trees.append(os.path.join(tmp, side))
            git("worktree", "add", "--detach", trees[-1], commit)
            sides[side] = trees[-1]
        new_line = (f"new: {new[:10]} {git('log', '-1', '--format=%s', new)[:80]}" if new else
                    f"new: the working tree {REPO} at {head[:10]}" +
                    (f" + uncommitted edits in {len(dirty.splitlines())} tracked files" if dirty else ""))
        header = [f"old: {base[:10]} {git('log', '-1', '--format=%s', base)[:80]}", new_line,
                  f"python {platform.python_version()}, torch {torch_version()}", *cpu_header(args.threads),
                  f"batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, {args.rounds} rounds, "
                  "each measurement a fresh process, old and new back to back (ABBA)"]
        print("\n".join(header), file=sys.stderr, flush=True)
        rows = [{"shape": s, "weights": w, "old": [], "new": []} for s in shapes for w in weights]
        for r in range(args.rounds):
            for i, row in enumerate(rows):
                order = ("old", "new") if (r + i) % 2 == 0 else ("new", "old")
                got = {side: measure(side, sides[side], folders[row["shape"]], row["weights"], args) for side in order}
                for side in ("old", "new"):
                    row[side].append(got[side])
                msg = "  ".join(f"{side} prefill {got[side]['prefill_tok_s']:6.1f} decode "
                                f"{got[side]['decode_tok_s']:6.2f} (load {got[side]['load_s']:.0f}s, "
                                f"{got[side]['wall_s']:.0f}s in all, load avg {got[side]['loadavg']:.1f})" if got[side]
                                else f"{side} failed" for side in order)
                print(f"  round {r + 1} {row['shape']} {row['weights']}: {msg}", file=sys.stderr, flush=True)
        print("\n".join(header + [""] + report(rows, threads=args.threads)))
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n(measured in {time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
