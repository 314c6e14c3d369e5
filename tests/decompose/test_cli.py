import json

import pytest
import torch

from slimkit import models
from slimkit.cli import main
from slimkit.decompose import DecomposeConfig, decompose
from slimkit.train import load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("argv", "message"), [
    (["--rank", "0"], "is not a rank"),
    (["--energy", "1.5"], "--energy: 1.5 is out of range"),
    (["--rank", "4", "--layers", "fc9"], "layer 'fc9'"),
    (["--rank", "4,2", "--method", "svd"], "only method 'tucker2'"),
])
def test_bad_decompose_options_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    # digits loads in milliseconds, and every one of these must fail before the data would be used.
    assert main(["decompose", "resnet20", *argv, "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_decompose_command_writes_a_loadable_model_and_onnx(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "lenet300.pt"
    save_checkpoint(models.create("lenet300").state_dict(), ckpt)
    out = tmp_path / "out"
    assert main(["decompose", "lenet300", "-c", str(ckpt), "--method", "svd", "--rank", "16", "--out", str(out),
                 "--finetune-epochs", "1", "--lr", "0.05", "--train-samples", "20000", "--eval-samples", "1000",
                 "--no-latency"]) == 0
    assert "02-finetune" in capsys.readouterr().out
    stages = {s["stage"]: s for s in json.loads((out / "metrics.json").read_text())["stages"]}
    # rank 16 for both hidden layers; the classifier (rank 10 would save nothing) is left alone
    assert stages["01-decompose"]["params"] == 16 * (784 + 300) + 300 + 16 * (300 + 100) + 100 + 1010
    assert stages["02-finetune"]["accuracy"] > 0.5  # an untrained model fine-tuned for 160 steps; chance is 10%
    # The saved state dict loads into the architecture the recorded recipe rebuilds.
    recipe = json.loads((out / "run.json").read_text())["recipe"]
    options = recipe["stages"][0]["decompose"]
    config = DecomposeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    rebuilt = decompose(models.create("lenet300"), torch.zeros(1, 1, 28, 28), config)
    rebuilt.load_state_dict(load_checkpoint(out / "model.pt"))
    assert (out / "model.onnx").is_file()
