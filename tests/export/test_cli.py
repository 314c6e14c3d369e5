import re

import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.export import run_onnx
from slimkit.pipeline import load_recipe, run_recipe
from tests.pipeline.conftest import TINY_MODEL, tiny_recipe


@pytest.fixture
def checkpoint(tmp_path):
    model = models.create("lenet300")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def _printed(capsys):
    return " ".join(capsys.readouterr().out.split())


def test_onnx_export_is_checked_in_onnx_runtime_with_the_tolerance_printed(tmp_path, checkpoint, capsys):
    model, ckpt = checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export", "lenet300", "-c", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    printed = _printed(capsys)
    assert "checked in onnxruntime against PyTorch on 16 test inputs" in printed
    diff = float(re.search(r"max \|diff\| = ([0-9.e+-]+)", printed).group(1))
    assert diff < 1e-4 and "(tolerance 0.0001)" in printed
    x = torch.rand(5, 1, 28, 28)
    np.testing.assert_allclose(run_onnx(out, x), model(x).detach().numpy(), atol=1e-5)


def test_torchscript_export_loads_back_and_matches(tmp_path, checkpoint, capsys):
    model, ckpt = checkpoint
    out = tmp_path / "m.ts"
    assert main(["export", "lenet300", "-c", str(ckpt), "-f", "torchscript", "--out", str(out)]) == 0
    assert "checked in torchscript" in _printed(capsys)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(torch.jit.load(str(out))(x), model(x), atol=1e-6, rtol=0)


def test_export_never_overwrites_without_force(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    before = ckpt.read_bytes()
    other = tmp_path / "mine.onnx"
    other.write_text("mine")
    assert main(["export", "lenet300", "-c", str(ckpt), "--out", str(other)]) == 2
    assert "exists" in capsys.readouterr().err and other.read_text() == "mine"
    for force in ([], ["--force"]):
        assert main(["export", "lenet300", "-c", str(ckpt), "--out", str(ckpt), *force]) == 2
        assert "is the command's input" in capsys.readouterr().err and ckpt.read_bytes() == before
    assert main(["export", "lenet300", "-c", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "lenet300", "-c", str(ckpt), "--out", str(tmp_path / "nope" / "m.onnx")]) == 2
    assert "does not exist: create it first" in capsys.readouterr().err


def test_a_run_folder_exports_its_final_model(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    (tmp_path / "r.yaml").write_text(tiny_recipe("- train: {epochs: 2}\n"))
    result = run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "run", progress=False, report=False)
    out = tmp_path / "final.onnx"
    trust = ["--trust-spec", f"{tmp_path.resolve()}/tiny.py:tiny"]  # the run's model is user code: typed to confirm
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 2
    assert main(["export", str(tmp_path / "run"), "--out", str(out), *trust]) == 0
    x = torch.rand(4, 1, 8, 8)
    np.testing.assert_allclose(run_onnx(out, x), result.model(x).detach().numpy(), atol=1e-5)
    # the run's own files are never replaced, --force or not (its metadata, its stages' weights, its outputs)
    run_json = (tmp_path / "run" / "run.json").read_bytes()
    for own in ("model.onnx", "run.json", "stages/01-train/model.pt"):
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "run" / own), "--force", *trust]) == 2
        assert f"(its own {own.split('/')[0]})" in capsys.readouterr().err
    assert (tmp_path / "run" / "run.json").read_bytes() == run_json
    # a new file in the run folder is written; once there, it is the run's and is not replaced
    extra = tmp_path / "run" / "extra.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(extra), *trust]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(extra), "--force", *trust]) == 2
    assert "(its files)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--stage", "01-train", "-c", "x.pt", "--out", str(out)]) == 2


def test_compressed_export_round_trips(tmp_path, checkpoint, capsys):
    from slimkit.share import load_compressed

    model, ckpt = checkpoint
    out = tmp_path / "m.slim"
    assert main(["export", "lenet300", "-c", str(ckpt), "-f", "compressed", "--out", str(out)]) == 0
    assert "checked in slimkit.share.load_compressed" in _printed(capsys)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(load_compressed(out)(x), model(x), atol=1e-6, rtol=0)
