"""export_onnx's cache: an export of the same model is reused, never one of another model."""

import pytest
import torch
from torch import nn

from slimkit.export import _onnx, export_onnx, run_onnx


class Scaled(nn.Module):
    """A plain float attribute the forward reads: invisible to the cache's digest (no parameter, buffer or repr)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


@pytest.fixture
def exports(monkeypatch, tmp_path):
    """The cache in a fresh folder, and a count of the exporter's calls."""
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Scaled().eval()


def test_the_same_model_is_exported_once_and_its_file_reused(exports, tmp_path):
    x = torch.randn(2, 8)
    export_onnx(_model(), x, tmp_path / "a.onnx")
    export_onnx(_model(), x, tmp_path / "b.onnx")  # a copy with the same weights: the file comes from the cache
    assert len(exports) == 1
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    export_onnx(_model(seed=1), x, tmp_path / "c.onnx")  # other weights: exported
    assert len(exports) == 2
    assert torch.allclose(torch.from_numpy(run_onnx(tmp_path / "c.onnx", x)), _model(seed=1)(x), atol=1e-5)
    export_onnx(_model(), x, tmp_path / "d.onnx", cache=False)
    assert len(exports) == 3


def test_a_cached_file_that_computes_something_else_is_exported_again(exports, tmp_path):
    x = torch.randn(2, 8)
    model = _model()
    export_onnx(model, x, tmp_path / "a.onnx")
    model.scale = 3.0  # same weights and module tree: the digest matches, ONNX Runtime's check does not
    export_onnx(model, x, tmp_path / "b.onnx")
    assert len(exports) == 2
    assert torch.allclose(torch.from_numpy(run_onnx(tmp_path / "b.onnx", x)), model(x), atol=1e-5)
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")  # one key: the new export replaced the stale one
    cached.write_bytes(b"not onnx")  # damaged: exported again, never an error
    export_onnx(model, x, tmp_path / "c.onnx")
    assert len(exports) == 3 and (tmp_path / "c.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_the_cache_keeps_the_most_recently_used_files(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(_onnx, "EXPORT_CACHE_FILES", 2)
    x = torch.randn(2, 8)
    for seed in range(3):
        export_onnx(_model(seed), x, tmp_path / f"{seed}.onnx")
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2
    export_onnx(_model(2), x, tmp_path / "again.onnx")  # the newest is kept
    assert len(exports) == 3


def test_the_digest_reads_tensors_of_any_layout_and_sees_their_values():
    # a 1×1 convolution's weight of one element may carry stride 0 (a Tucker core of rank 1 did) and still count as
    # contiguous; an empty buffer has no bytes
    def key(value: float) -> str:
        model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
        model[0].weight = nn.Parameter(torch.full((1,), value).as_strided((1, 1, 1, 1), (0, 0, 0, 0)))
        model.register_buffer("nothing", torch.zeros(0, 3))
        return _onnx._export_key(model, (torch.ones(1, 1, 2, 2),), True, 17)

    assert key(1.0) == key(1.0) != key(2.0)
