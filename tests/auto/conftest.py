"""A small CNN on scikit-learn's digits (trained in about a second) and a deterministic latency meter, so that
auto's search runs in CI time and its latency budget can be checked exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.models import MODELS, register_model


class DigitsNet(nn.Module):
    """conv 1→12 3×3, conv 12→24 3×3, 2×2 max pool, fc 384→48, fc 48→10 (on 1×8×8 digits)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(24 * 16, 48)
        self.fc2 = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


if "auto_digits" not in MODELS:  # registered so the container can name it and recipes can build it
    register_model("auto_digits", input_shape=(1, 8, 8), paper="test model")(
        lambda num_classes=10: DigitsNet(num_classes))


class MacsMeter:
    """Latency proportional to MACs, a model with int8 layers at half the cost: what a test can check exactly (a
    mixed int8 / float model costs what the int8 one does: its float layers are free). The table is built
    by :func:`slimkit.analysis.build_latency_table` with a measurer that returns each layer's MACs as its time."""

    int8_factor = 0.5
    ci_halfwidth = 0.0  # a noisy runtime's: the median known to ± this much

    def __init__(self, ci_halfwidth: float = 0.0) -> None:
        self.ci_halfwidth = ci_halfwidth
        self.shared_runs: list[int] = []  # the candidates of each compare_many call

    def compare_many(self, baseline, baseline_file, candidates, inputs, *, threads):
        """Several candidates against one baseline (OrtLatency times them in shared runs): each read as
        :meth:`compare` reads it."""
        self.shared_runs.append(len(candidates))
        return [self.compare(baseline, module, baseline_file, file, inputs, threads=threads)
                for module, file in candidates]

    def table(self, model, example, *, batch, threads, precision="fp32", network=None, widths=None):
        from slimkit.analysis import build_latency_table

        class Measurer:
            def points(self, geometry, points):
                return [(geometry.macs(ci, co) * 1e-6, 0.0) for ci, co in points]

            def other_share(self, path, inputs, ops):
                return 0.0, 0.0

        return build_latency_table(model, example, batch=batch, threads=threads, measurer=Measurer(),
                                   cache_dir=False, precision=precision, network=network,
                                   widths=widths)

    def compare(self, baseline, candidate, baseline_file, candidate_file, inputs, *, threads):
        from slimkit.analysis import profile
        from slimkit.quantize import wrappers

        x = inputs[0][:1]

        def cost(model):
            int8 = any(w.enabled for w in wrappers(model).values())
            return profile(model, x).total.macs * (self.int8_factor if int8 else 1.0)

        ratio = cost(candidate) / cost(baseline)
        record = {"ratio": ratio, "p10": ratio, "p90": ratio, "aa": 1.0, "status": "ok"}
        if self.ci_halfwidth:  # a noisy runtime: the median known to ± this much
            record["ci"] = [ratio - self.ci_halfwidth, ratio + self.ci_halfwidth]
        return record


@pytest.fixture(scope="session")
def digits():
    from slimkit.data import create_data

    return create_data("digits", batch_size=64, seed=0, calibration_size=256)


@pytest.fixture(scope="session")
def trained(digits, tmp_path_factory):
    """The trained DigitsNet and its checkpoint file."""
    from slimkit.train import default_optimizer, fit, save_checkpoint, seed_everything

    torch.set_num_threads(1)
    seed_everything(0)
    model = DigitsNet()
    fit(model, digits.train, epochs=6, optimizer=lambda p: default_optimizer(p, 0.05), scheduler="cosine",
        progress=False, seed=0)
    path = tmp_path_factory.mktemp("digits") / "digits.pt"
    save_checkpoint(model.state_dict(), path)
    return model.eval(), path
