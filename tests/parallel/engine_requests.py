"""The requests the tensor-parallel engine test runs: greedy, batched (ragged decode, deterministic off), n > 1
from one prefill, and a shared prefix that the prefix cache reuses."""

REQUESTS = [
    ([5, 17, 33, 8, 41, 60], dict(temperature=0, max_tokens=12, ignore_eos=True)),
    ([5, 17, 33, 8, 41, 60, 12, 3], dict(temperature=0, max_tokens=10, ignore_eos=True)),  # shares a prefix
    ([9, 9, 14, 70], dict(temperature=0, max_tokens=8, n=2, ignore_eos=True)),
]
