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


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """slimkit's cache of derived data (decoded MNIST, tokenizers, latency tables) in a folder of this test run,
    shared by its xdist workers (writes are atomic): the suite neither reads a developer's cache nor writes into it.
    Subprocesses inherit it; the README and demo tests give theirs an empty one of their own."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    os.environ["SLIMKIT_CACHE"] = str(shared / "slimkit-cache")
    yield


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


#: the longest end-to-end tests, in the order they start. xdist (``-n 2``, with ``maxschedchunk=1`` set below) hands
#: each worker two tests to begin with — the first two to one worker, the next two to the other — and then one test
#: at a time to whichever is free: the README session's LeNet-5 part (minutes) and its recipe part go to one worker,
#: its Llama part and the demo to the other, and the rest of the suite fills in around them. (With xdist's default
#: chunks each worker's first chunk is a quarter of its share, and all four landed on one worker.)
FIRST = ("tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[lenet5]",
         "tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[hybrid]",
         "tests/test_readme.py::test_readme_sequence_runs_top_to_bottom[llama]",
         "tests/test_demo.py::test_the_readme_demo_runs_every_family_and_writes_one_report")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "maxschedchunk", None) is None:
        config.option.maxschedchunk = 1  # one test at a time to a free worker (unless given on the command line)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, name in enumerate(FIRST) if item.nodeid == name), len(FIRST))

    items.sort(key=rank)  # stable: the rest keep their collection order
