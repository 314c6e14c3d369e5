import json
import subprocess
import sys

import pytest

from slimkit.cli import main


def test_profile_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "lenet5", "--json", str(out)]) == 0
    assert "2,293,000" in capsys.readouterr().out
    assert json.loads(out.read_text())["total"]["params"] == 431_080


def test_profile_json_never_replaces_the_checkpoint_or_a_users_file_unasked(tmp_path, capsys):
    import torch

    from slimkit import models

    checkpoint, notes = tmp_path / "ck.pt", tmp_path / "thesis.txt"
    torch.save(models.create("lenet5").state_dict(), checkpoint)
    notes.write_text("mine")
    weights = checkpoint.read_bytes()
    for argv in (["--json", str(checkpoint)], ["--json", str(checkpoint), "--force"], ["--json", str(notes)],
                 ["--json", str(tmp_path)]):
        assert main(["profile", "lenet5", "-c", str(checkpoint), *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert checkpoint.read_bytes() == weights and notes.read_text() == "mine"
    assert main(["profile", "lenet5", "-c", str(checkpoint), "--json", str(notes), "--force"]) == 0
    assert json.loads(notes.read_text())["total"]["params"] == 431_080


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "lenet7"], "unknown model 'lenet7'"),
        (["profile", "lenet5", "-c", "/no/such.pt"], "does not exist"),
        (["train", "lenet5", "--data", "imagenet", "--out", "x"], "unknown dataset 'imagenet'"),
        (["train", "lenet5", "--weight-decay", "-1", "--out", "x"], "--weight-decay: -1 is out of range"),
        (["prune", "lenet5", "--ratio", "0.3", "--speedup", "2", "--out", "x"], "--ratio and --speedup both set"),
        (["train", "lenet5", "--out", "x", "--resume", "--force"], "not allowed with argument"),
        (["profile", "lenet5", "-c", "/dev/null"], "is not a regular file"),
        (["compress", "/dev/null", "--out", "x"], "is not a regular file"),
        (["train", "lenet5", "--out", ""], "an empty path"),
        (["demo", "--out", ""], "an empty path"),
        (["cluster", "lenet5", "--bits", "4", "--conv-bits", "2", "--out", "x"], "give one or the other"),
        (["quantize", "lenet5", "--group-size", "32", "--per-tensor", "--out", "x"], "give one of them"),
        (["quantize", "lenet5", "--bits", "4", "--group-size", "7", "--out", "x"], "a power of two ≥ 16"),
        (["prune", "lenet5", "--skip", "conv*", "fc*", "--out", "x"], "leave no channel group of this model"),
        (["decompose", "lenet5", "--rank", "4", "--layers", "fc1", "--skip", "fc*", "--out", "x"],
         "skips every layer that layers=['fc1'] selects"),
        (["quantize", "lenet5", "--weight-only", "--observer", "entropy", "--out", "x"], "drop --observer"),
        (["quantize", "lenet5", "--zero-point", "--out", "x"], "add --weight-only or drop --zero-point"),
        (["auto", "lenet5", "--budget", "size=0.1", "--sensitivity-steps", "-1", "--out", "x"],
         "--sensitivity-steps: -1 is out of range"),
        (["quantize", "lenet5", "--keep-sensitive", "4", "--out", "x"], "keeps every one of the 4 layers"),
        (["distill", "--teacher", "lenet5", "--student", "lenet5", "--stage-epochs", "3", "--out", "x"],
         "--stage-epochs is for --stagewise"),
        (["profile", "llama_tiny", "--input-shape", "1,28,28"], "--input-shape is one number"),
        (["profile", "hf:llama", "--input-shape", "100000"], "give a length ≤"),
        (["profile", "hf:llama:num_hidden_layers=nan"], "num_hidden_layers=nan is not a size"),
        (["profile", "hf:llama:hidden_size=0"], "hidden_size=0 is not a size"),
        (["profile", "hf:vit:image_size=-1"], "image_size=-1 is not a size"),
        (["profile", "hf:llama:num_attention_heads=3"], "is not a multiple of the number of attention heads"),
        (["export", "lenet5", "--atol", "nan", "--out", "x.onnx"], "--atol: 'nan' is not a finite number"),
        (["export", "lenet5", "--atol", "-1", "--out", "x.onnx"], "--atol: -1 is out of range"),
        (["distill", "--teacher", "lenet5", "--student", "lenet5", "--loss", "kd:T=nan", "--out", "x"],
         "must be a finite number"),
        (["distill", "--teacher", "lenet5", "--student", "lenet5", "--loss", "kd", "--loss", "kd", "--out", "x"],
         "loss 'kd' is given twice with the same options"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [[], ["--force"], ["--resume"]])
def test_train_never_writes_into_a_folder_of_the_users_files(tmp_path, capsys, extra):
    (tmp_path / "model.pt").write_text("mine")
    (tmp_path / "metrics.json").write_text("mine too")
    assert main(["train", "crelu_net", "--epochs", "0", "--data", "digits", "--out", str(tmp_path), *extra]) == 2
    assert "holds no slimkit run" in capsys.readouterr().err
    assert (tmp_path / "model.pt").read_text() == "mine" and (tmp_path / "metrics.json").read_text() == "mine too"


def test_python_m_slimkit_cli_trains_and_writes_a_run_folder(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "slimkit.cli", "train", "lenet5", "--data", "mnist", "--epochs", "1",
                           "--train-samples", "5000", "--eval-samples", "1000", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["accuracy"] >= 0.75 and final["samples"] == 1000  # 40 steps; untrained is 10%
    assert (out / "model.onnx").is_file() and (out / "model.pt").is_file() and (out / "recipe.yaml").is_file()
    table = done.stdout[done.stdout.index("train lenet5"):]
    assert "01-train" in table and "431,080" in table and "…" not in table  # a pipe gets the whole table


@pytest.mark.parametrize(("argv", "batch"), [
    (["quantize", "lenet5", "--data", "mnist"], 64),  # int8's gain shows at a batch
    (["quantize", "llama_tiny", "--data", "stdlib"], 1),  # one 256-token block is already a whole prefill
    (["quantize", "llama_tiny", "--data", "stdlib", "--latency-batch", "4"], 4),
    (["prune", "lenet5", "--data", "mnist"], 1),
])
def test_the_latency_batch_defaults_to_one_block_on_token_data(argv, batch):
    from slimkit.cli import build_parser
    from slimkit.cli._common import recipe_of

    args = build_parser().parse_args([*argv, "--out", "unused"])
    assert recipe_of(args, "x", [{"train": {}}])["evaluation"]["latency_batch"] == batch


def test_a_pipe_as_the_output_file_is_refused_even_with_force(tmp_path, capsys):
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # as /dev/null would be: renaming a finished file over it would delete the node
    assert main(["export", "lenet5", "--out", str(pipe), "--force"]) == 2
    err = capsys.readouterr().err
    assert "never replaced, even with --force" in err and "Traceback" not in err
    assert pipe.is_fifo()
