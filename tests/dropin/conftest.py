"""The drop-in suite's saved tiny models, built once per session in a tmp folder."""

from __future__ import annotations

import os

import pytest
import torch

from tests.dropin.common import Folders


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> Folders:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    return Folders(tmp_path_factory.mktemp("dropin-models"))
