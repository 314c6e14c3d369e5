"""The search's cost model against measurement: for any choice of widths, the predicted MACs of the pruned model
equal its profiled MACs, including residual streams whose width is a sum over several channel groups."""

import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.analysis import profile
from slimkit.auto._costs import Analysis, build_problem, layer_info, plan_of
from slimkit.auto._folder import Cache
from slimkit.auto._sensitivity import Calibration, channel_analysis, channel_groups, keep_levels
from slimkit.prune import PruneConfig, prune_channels


@pytest.mark.parametrize("spec", ["auto_digits", "resnet20:width=0.25"])
def test_predicted_macs_equal_the_pruned_models(spec, digits, tmp_path):
    torch.manual_seed(0)
    model = models.from_spec(spec, **({"in_channels": 1} if spec.startswith("resnet") else {})).eval()
    x = torch.zeros(1, 1, 8, 8)
    calib = Calibration.build(model, digits.calibration, 32, "loss")
    groups = channel_groups(model, x, ())
    levels = {g: keep_levels(n, (0.25, 0.5, 0.75)) for g, n in groups.items()}
    entries = channel_analysis(model, x, calib, groups, levels, criterion="l1", data=digits.calibration, skip=(),
                               seed=0, cache=Cache(tmp_path / "c.json", "k"))
    analysis = Analysis(layers=layer_info(model, x), base={"macs": profile(model, x).total.macs, "bytes": 1},
                        groups=entries)
    problem = build_problem("onnx", analysis, {"channels"}, ["macs"])
    if spec.startswith("resnet"):  # the stage-3 stream is set by three groups: costed by the bilinear expansion
        assert len(analysis.sides("layer3.1.conv1")[0]) == 3
    rng = np.random.default_rng(0)
    for _ in range(4):
        picks = {k: int(rng.integers(len(c.labels))) for k, c in problem.choices.items()}
        solution = problem.solution(picks)
        plan = plan_of(problem, picks, analysis, solution.ratios, solution.objective)
        pruned = prune_channels(model, x, PruneConfig(ratio=plan.prune or 0.0), data=digits.calibration)
        assert solution.predicted["macs"] == pytest.approx(profile(pruned, x).total.macs, rel=1e-9)
