"""``slimkit auto`` on ResNet-20 (MNIST): the ``auto`` section's comparison (``bench_auto``) for ResNet-20, a section of
its own so that each trains within one session's time on 2 cores (this one about 1 h from an empty cache)::

    python -m benchmarks.run --only auto_resnet20

``--quick`` runs it too, with the quick settings (the trained ResNet-20 baseline alone takes ~10 min on 2 cores).
"""

from __future__ import annotations

from benchmarks._common import Section
from benchmarks.bench_auto import render, run_models

TITLE = ("Automatic compression (slimkit auto) on ResNet-20: searched mixes vs hand-written recipes and single-family "
         "automation")
__all__ = ["TITLE", "render", "run"]


def run(quick: bool) -> Section:
    return run_models(quick, ("resnet20",), deep_compression=False, topic="auto_resnet20", title=TITLE)
