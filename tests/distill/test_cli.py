import json

import pytest

from slimkit.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--loss", "at", "--pairs", "layer9=layer1"], "student (CifarResNet) has no layer named 'layer9'"),
        (["--loss", "mimic", "--pairs", "layer3=layer3"], "use 'hint'"),
        (["--loss", "kd:tau=3"], "loss 'kd' has no option tau"),
        (["--augment", "elstic"], "unknown augmentation 'elstic': choose one of elastic, shift"),
        (["--augment", "elastic+shift", "--cache-teacher"], "drop one of the two"),
        (["--weight-decay", "-0.1"], "--weight-decay: -0.1 is out of range: use a value in [0, 1)"),
        (["--lr", "0"], "--lr: 0 is out of range: use a value in (0, 10]"),
        (["--loss", "kd:T="], "loss"),
        (["--seed", "-1"], "--seed: -1 is out of range"),
        (["--epochs", "-1"], "--epochs: -1 is out of range"),
    ],
)
def test_bad_distill_options_fail_with_one_line_before_training(extra, message, tmp_path, capsys):
    argv = ["distill", "--teacher", "resnet20", "--student", "resnet20:width=0.5", "--data", "mnist",
            "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_class_count_mismatch_is_reported(tmp_path, capsys):
    argv = ["distill", "--teacher", "lenet300:num_classes=5", "--student", "lenet300", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    printed = capsys.readouterr()
    # without -T the teacher is untrained: said before the run starts
    assert "num_classes" in printed.err and "random weights" in printed.out


def test_slimkit_distill_kd_from_a_trained_teacher_writes_a_working_student(tmp_path, capsys):
    subset = ["--train-samples", "10000", "--eval-samples", "1000"]
    assert main(["train", "lenet300", "--epochs", "1", *subset, "--out", str(tmp_path / "teacher")]) == 0
    out = tmp_path / "run"
    argv = ["distill", "--teacher", "lenet300", "--teacher-checkpoint", str(tmp_path / "teacher" / "model.pt"),
            "--student", "lenet300", "--loss", "kd:T=20,alpha=0.9", "--epochs", "1", "--cache-teacher",
            "--data", "mnist", *subset, "--no-latency", "--out", str(out)]
    assert main(argv) == 0
    assert "random weights" not in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    teacher, student = metrics["stages"]
    assert teacher["accuracy"] > 0.75 and student["accuracy"] > 0.6  # 1 epoch on 10k images each; chance is 10%
    # kd with alpha < 1 has the task term, so no ce is added
    assert metrics["recipe"]["stages"][0]["distill"]["losses"] == ["kd:T=20,alpha=0.9"]
    assert (out / "model.pt").is_file() and (out / "stages" / "01-distill" / "distill" / "last.pt").is_file()
