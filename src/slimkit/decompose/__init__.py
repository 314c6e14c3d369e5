"""Low-rank decomposition: truncated SVD (Linear, Conv2d), Tucker-2 (Kim et al. 2016) and CP (Lebedev et al. 2015).

``decompose(model, example_inputs, DecomposeConfig(method="tucker2", vbmf=True))`` returns a copy whose chosen layers
are ``nn.Sequential`` s of thinner ordinary layers; ``decompose_report(result)`` says what happened to each layer.
Ranks come from a rule in ``RANK_RULES``: explicit ``rank``, ``energy`` threshold, target params ``ratio``, or
``vbmf`` (analytic EVBMF, Nakajima et al. 2013). Fine-tune the result with ``slimkit.train.fit``.
"""

from slimkit.decompose._decompose import (
    CANDIDATE_TYPES,
    DecomposeConfig,
    DecomposeReport,
    LayerDecomposition,
    decompose,
    decompose_report,
    layers_to_decompose,
)
from slimkit.decompose._methods import CP, DECOMPOSITIONS, SVD, Decomposition, Tucker2
from slimkit.decompose._rank import RANK_RULES, energy_rank
from slimkit.decompose._vbmf import VBMFResult, evbmf, tau_bar

__all__ = [
    "CANDIDATE_TYPES",
    "CP",
    "DECOMPOSITIONS",
    "RANK_RULES",
    "SVD",
    "DecomposeConfig",
    "DecomposeReport",
    "Decomposition",
    "LayerDecomposition",
    "Tucker2",
    "VBMFResult",
    "decompose",
    "decompose_report",
    "energy_rank",
    "evbmf",
    "layers_to_decompose",
    "tau_bar",
]
