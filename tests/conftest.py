"""Test-wide settings: one intra-op thread per test process keeps parallel runs (-n 2) from oversubscribing."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
