"""Test-wide settings: one intra-op thread per test process keeps parallel runs (-n 2) from oversubscribing, and
property tests are deterministic unless asked otherwise.

Hypothesis runs ``derandomize=True`` by default (the README's test command and CI), so a run never passes or fails
by the luck of the draw; ``SLIMKIT_HYPOTHESIS=explore pytest ...`` searches with fresh random examples (and more of
them) while developing.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=500, print_blob=True)
settings.load_profile("explore" if os.environ.get("SLIMKIT_HYPOTHESIS") == "explore" else "deterministic")


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


#: the longest end-to-end tests (the README session's parts, the longest of them minutes; the demo): started first,
#: spread over the workers under -n 2, so the rest of the suite fills in around them instead of one starting last
FIRST = ("tests/test_readme.py::test_readme_sequence_runs_top_to_bottom", "tests/test_demo.py")


def pytest_collection_modifyitems(items):
    def first(item) -> bool:
        return any(item.nodeid.startswith(name) for name in FIRST) and item.get_closest_marker("slow") is not None

    items.sort(key=lambda item: not first(item))
