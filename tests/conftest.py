"""Shared by every test module."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The app, the runners and the trainer set torch's thread count for themselves (and some run
    in-process here); every test leaves the count as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
