import json

import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.decompose import DecomposeConfig, decompose
from slimkit.train import load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("argv", "message"), [
    (["--rank", "0"], "rank 0"),
    (["--energy", "1.5"], "energy 1.5"),
    (["--rank", "4", "--layers", "fc9"], "layer 'fc9'"),
    (["--rank", "4,2", "--method", "svd"], "only method 'tucker2'"),
])
def test_bad_decompose_options_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    # digits loads in milliseconds, and every one of these must fail before the data would be used.
    assert main(["decompose", "lenet5", *argv, "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_decompose_command_writes_a_loadable_model_and_onnx(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "lenet300.pt"
    save_checkpoint(models.create("lenet300").state_dict(), ckpt)
    out = tmp_path / "out"
    assert main(["decompose", "lenet300", "-c", str(ckpt), "--method", "svd", "--rank", "16", "--out", str(out),
                 "--finetune-epochs", "1", "--lr", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert "after fine-tuning" in printed
    summary = json.loads((out / "decompose.json").read_text())
    assert [row["ranks"] for row in summary["layers"]] == [[16], [16], []]
    assert "1,110 params ≥ 1,010" in summary["layers"][2]["skipped"]  # rank 10 of the classifier saves nothing
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["decomposed"]["params"] == 16 * (784 + 300) + 300 + 16 * (300 + 100) + 100 + 1010
    assert stages["after fine-tuning (1 ep)"]["accuracy"] > 0.85
    assert float(summary["files"]["onnx_max_abs_diff"]) < 1e-4
    # The saved state dict loads into the architecture the recorded config rebuilds.
    config = DecomposeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()})
    rebuilt = decompose(models.create("lenet300"), torch.zeros(1, 1, 28, 28), config)
    rebuilt.load_state_dict(load_checkpoint(out / "model.pt"))
    assert (out / "model.onnx").is_file()
