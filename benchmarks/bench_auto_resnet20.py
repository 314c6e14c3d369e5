"""``slimkit auto`` on ResNet-20 (MNIST): the ``auto`` section's comparison (``bench_auto``) for ResNet-20, a section of
its own so that each trains within one session's time on 2 cores. Its analysis and budgets took 4,670 s on a CPU with
AVX512-VNNI (the trained baseline cached); on one without it (2026-12-03) the analysis alone took 2,188 s, most of it
timing each layer left float in the int8 network, and the first budget 3,193 s in all: over 2 h from an empty cache,
so start it first::

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
