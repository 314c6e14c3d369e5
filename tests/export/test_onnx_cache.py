"""export_onnx's cache: an export of the same model is reused, never one of another model."""

import json

import pytest
import torch
from torch import nn

from slimkit.export import _onnx, export_onnx, run_onnx


class Scaled(nn.Module):
    """A linear layer and a plain float attribute the forward reads (in no parameter, buffer or repr)."""

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
    (first,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    other = _model(seed=1)
    export_onnx(other, x, tmp_path / "other.onnx")
    (second,) = set((tmp_path / "cache" / "onnx").glob("*.onnx")) - {first}
    first.write_bytes(second.read_bytes())  # the entry of this model's digest now holds another model's graph
    export_onnx(model, x, tmp_path / "b.onnx")  # ONNX Runtime's check refuses it
    assert len(exports) == 3
    assert torch.allclose(torch.from_numpy(run_onnx(tmp_path / "b.onnx", x)), model(x), atol=1e-5)
    first.write_bytes(b"not onnx")  # damaged: exported again, never an error
    export_onnx(model, x, tmp_path / "c.onnx")
    assert len(exports) == 4 and (tmp_path / "c.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


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


class Clipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.clip = 100.0  # read by forward: on the example, clipping at 100 or at 1 may give the same output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).clamp(-self.clip, self.clip)


def test_changes_the_example_cannot_show_still_miss_the_cache(exports, tmp_path):
    torch.manual_seed(0)
    x = torch.full((1, 8), 1e-3)  # outputs well inside ±1
    model = Clipped().eval()
    export_onnx(model, x, tmp_path / "a.onnx")
    model.clip = 1.0  # a plain attribute: the same output on the example
    export_onnx(model, x, tmp_path / "b.onnx")
    hooked = Clipped().eval()
    hooked.load_state_dict(model.state_dict())
    hooked.clip = 1.0
    hooked.fc.register_forward_hook(lambda module, args, out: out.relu())  # a hook the digest reads by its code
    export_onnx(hooked, x, tmp_path / "c.onnx")
    assert len(exports) == 3
    wide = torch.randn(4, 8) * 50
    for path, m in (("b.onnx", model), ("c.onnx", hooked)):
        assert torch.allclose(torch.from_numpy(run_onnx(tmp_path / path, wide)), m(wide), atol=1e-4)


def test_a_model_with_a_quantized_buffer_is_exported_uncached(exports, tmp_path):
    model = _model()
    model.register_buffer("codes", torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8))
    export_onnx(model, torch.randn(2, 8), tmp_path / "a.onnx")
    assert (tmp_path / "a.onnx").is_file() and not (tmp_path / "cache" / "onnx").exists()


#: what the exported graph adds that PyTorch does not, as int8 kernels round where fake quantization does not
EXPORT_OFFSET = 0.01
#: read by forward from the module's globals: no digest sees it
GAIN = 1.0


class Rounded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * GAIN
        return y + EXPORT_OFFSET if torch.onnx.is_in_onnx_export() else y


def test_an_export_that_never_matches_to_1e_4_is_reused_once_its_own_deviation_is_known(exports, tmp_path):
    torch.manual_seed(0)
    model, x = Rounded().eval(), torch.randn(2, 8)
    for name in "abc":
        export_onnx(model, x, tmp_path / f"{name}.onnx")
    # the second check finds 0.01, above 1e-4: exported again, and the fresh file's own deviation kept beside it
    assert len(exports) == 2
    (sidecar,) = (tmp_path / "cache" / "onnx").glob("*.json")
    assert json.loads(sidecar.read_text())["deviations"] == pytest.approx([EXPORT_OFFSET] * 2, rel=1e-3)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    globals()["GAIN"] = 1.5  # the model now computes something else, in a way its digest cannot see
    try:
        export_onnx(model, x, tmp_path / "d.onnx")
        assert len(exports) == 3
        assert torch.allclose(torch.from_numpy(run_onnx(tmp_path / "d.onnx", x)), model(x) + EXPORT_OFFSET,
                              atol=1e-5)
    finally:
        globals()["GAIN"] = 1.0
    export_onnx(model, x, tmp_path / "e.onnx")  # the gain back: the 1.5 file is refused
    assert len(exports) == 4
    sidecar.write_text('{"deviations": "anything"}')  # unreadable: no deviation is allowed, never an error
    export_onnx(model, x, tmp_path / "f.onnx")
    assert len(exports) == 5


def test_a_cached_file_naming_external_data_is_never_used(exports, tmp_path):
    """slimkit writes whole files: a cache entry keeping its weights in another file (whose path ONNX Runtime and
    onnx.load would read, checked for escapes only in recent releases) is exported again, even when it computes the
    same outputs."""
    import onnx

    x = torch.randn(2, 8)
    model = _model()
    export_onnx(model, x, tmp_path / "a.onnx")
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    proto = onnx.load(str(cached))
    onnx.save_model(proto, str(cached), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert not _onnx.self_contained_onnx(cached)
    export_onnx(model, x, tmp_path / "b.onnx")
    assert len(exports) == 2 and _onnx.self_contained_onnx(tmp_path / "b.onnx")


def test_a_file_is_self_contained_only_when_no_tensor_anywhere_names_external_data(tmp_path):
    """Sparse initializers and local functions hold tensors too; a damaged or missing file is not one to run."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def outside(tensor):
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "../secret.bin"
        return tensor

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])
    weight = numpy_helper.from_array(np.ones(2, np.float32), "W")
    add = helper.make_node("Add", ["X", "W"], ["Y"])
    sparse = helper.make_sparse_tensor(outside(numpy_helper.from_array(np.ones(1, np.float32), "v")),
                                       numpy_helper.from_array(np.array([0], np.int64), "i"), [2])
    function = helper.make_function(
        "local", "F", ["a"], ["b"], [helper.make_node("Constant", [], ["k"], value=outside(
            numpy_helper.from_array(np.ones(2, np.float32), "c"))), helper.make_node("Add", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 17)])
    files = {
        "whole": helper.make_model(helper.make_graph([add], "g", [x], [y], [weight])),
        "sparse": helper.make_model(helper.make_graph([add], "g", [x], [y], [weight], sparse_initializer=[sparse])),
        "function": helper.make_model(helper.make_graph([helper.make_node("F", ["X"], ["Y"], domain="local")], "g",
                                                        [x], [y]), functions=[function],
                                      opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]),
    }
    for name, model in files.items():
        (tmp_path / f"{name}.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "damaged.onnx").write_bytes(b"not onnx")
    assert {name: _onnx.self_contained_onnx(tmp_path / f"{name}.onnx")
            for name in ("whole", "sparse", "function", "damaged", "missing")} == \
        {"whole": True, "sparse": False, "function": False, "damaged": False, "missing": False}
    assert onnx.load(str(tmp_path / "whole.onnx"))  # the reference file is a real model
