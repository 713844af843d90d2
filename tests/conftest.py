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


@pytest.fixture(scope="module")
def one_thread():
    """Small ops on a shared 2-core machine run far faster on one thread than on two: modules of
    many tiny forwards ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
