import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import compare_latency, latency
from slimkit.export import export_onnx


def _model():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).eval()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_returns_ordered_percentiles(backend):
    result = latency(_model(), torch.zeros(2, 1, 28, 28), backend=backend, threads=1, warmup=2, repeats=9)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.batch_size == 2 and result.repeats == 9 and result.backend == backend


def test_latency_of_an_onnx_file(tmp_path):
    path = export_onnx(_model(), torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx")
    result = latency(path, torch.zeros(4, 1, 28, 28), backend="onnxruntime", threads=1, warmup=1, repeats=5)
    assert result.median_ms > 0


def test_compare_latency_ratio_is_candidate_over_baseline():
    cmp = compare_latency(_model(), _model(), torch.zeros(1, 1, 28, 28), threads=1, warmup=1, repeats=5)
    assert cmp.ratio == pytest.approx(cmp.candidate.median_ms / cmp.baseline.median_ms)
    assert cmp.speedup == pytest.approx(1 / cmp.ratio)


def test_bad_latency_arguments_are_rejected_before_work():
    with pytest.raises(ConfigError, match="threads"):
        latency(_model(), torch.zeros(1, 1, 28, 28), threads=0)
    with pytest.raises(ConfigError, match="backend"):
        latency(_model(), torch.zeros(1, 1, 28, 28), backend="tvm")
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        latency("model.onnx", torch.zeros(1, 1, 28, 28), backend="torch")
