"""phikit.cpu.hugepages: weights phikit allocates are advised onto 2 MB pages, best effort, without changing a value."""

from __future__ import annotations

import sys

import pytest
import torch

from phikit.cpu import hugepages


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def test_small_tensors_are_left_alone() -> None:
    assert hugepages.advise(torch.empty(1000)) is False  # under 4 MB: not worth a huge page


@pytest.mark.skipif(not sys.platform.startswith("linux") or _thp_mode() in (None, "never"),
                    reason="transparent huge pages are off or unknown on this host")
def test_large_tensors_are_advised_and_keep_their_values() -> None:
    source = torch.randn(4096, 1024)  # 16 MB
    copy = hugepages.empty_like(source).copy_(source)
    assert torch.equal(copy, source) and copy.shape == source.shape and copy.stride() == source.stride()
    assert hugepages.advise(copy)  # the kernel accepted MADV_HUGEPAGE for its aligned interior
