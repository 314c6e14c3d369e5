"""Issue #19's reproducers, each one command: bad input is one line and exit code 2, before any work, never a
traceback; plus a seeded fuzz over every command's numeric flags."""

import random

import pytest

from slimkit.cli import main


def _one_clean_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["profile", "lenet5:num_classes=0"], "num_classes=0 must be at least 1"),
    (["profile", "lenet5:in_channels=0"], "in_channels=0 must be at least 1"),
    (["profile", "resnet20:width=abc"], "finite number"),
    (["profile", "resnet20:width=nan"], "finite number"),
    (["profile", "resnet20:width=-1"], "must be positive"),
    (["profile", "resnet20:shortcut=Z"], "use one of A, B"),
    (["profile", "resnet20:width=1e9"], "cannot be built"),
    (["profile", "lenet5", "--input-shape", "a,b"], "is not C,H,W"),
    (["profile", "lenet5", "--input-shape", "0,0,0"], "positive sizes"),
    (["profile", "lenet5", "--input-shape", "1,,28"], "is not C,H,W"),
    (["profile", "lenet5", "--input-shape", "1,28"], "cannot run on"),
    (["profile", "lenet5", "--bits", "0"], "--bits: 0 is out of range"),
    (["profile", "lenet5", "--bits", "-1"], "--bits: -1 is out of range"),
    (["profile", "lenet5", "--bits", "100000"], "--bits: 100000 is out of range"),
    (["prune", "lenet5", "--seed", "-1", "--out", "o"], "--seed: -1 is out of range"),
    (["prune", "lenet5", "--speedup", "nan", "--out", "o"], "not a finite number"),
    (["prune", "lenet5", "--data", "digits", "--out", "o"], "cannot run on the 1×8×8 inputs of 'digits'"),
    (["train", "lenet5", "--data", "mnist-seg", "--out", "o"], "cannot run on the 1×64×64 inputs"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--loss", "kd:T=", "--out", "o"], "KEY=VALUE"),
    (["convert", "lenet5", "--to", "group", "--groups", "0", "--out", "o"], "--groups: 0 is out of range"),
    (["quantize", "lenet5", "--calib-size", "-1", "--out", "o"], "--calib-size: -1 is out of range"),
    (["train", "lenet5", "--data", "no/such/folder", "--out", "o"], "unknown dataset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _one_clean_line(capsys)
    assert not (tmp_path / "o").exists()


def test_checkpoint_problems_are_named(capsys, tmp_path):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 40)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)))
    (tmp_path / "folder.pt").mkdir()
    for name, message in (("garbage.safetensors", "not a readable safetensors"),
                          ("empty.safetensors", "not a readable safetensors"),
                          ("garbage.pt", "cannot be read"), ("folder.pt", "is a folder"),
                          ("none.pt", "does not exist")):
        assert main(["profile", "lenet5", "-c", str(tmp_path / name)]) == 2
        assert message in _one_clean_line(capsys)


def test_a_folder_given_as_an_image_dataset_file_and_vice_versa(capsys, tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["train", "lenet5", "--data", str(tmp_path / "file.png"), "--out", str(tmp_path / "o")]) == 2
    assert "is a file" in _one_clean_line(capsys)


@pytest.mark.parametrize("code, message", [(28, "the disk is full"), (13, "permission denied"),
                                           (30, "read-only")])
def test_the_machine_refusing_a_write_is_one_line(capsys, tmp_path, monkeypatch, code, message):
    import errno
    import os

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)  # every slimkit write is atomic: temp file, fsync, rename
    assert errno.errorcode[code]
    assert main(["train", "crelu_net", "--epochs", "0", "--data", "digits", "--out", str(tmp_path / "run")]) == 2
    assert message in _one_clean_line(capsys)
    assert not list((tmp_path / "run").glob("*.tmp"))  # no half-written file left behind


_NUMERIC_FLAGS = {
    "train": ["--epochs", "--lr", "--weight-decay", "--batch-size", "--seed", "--train-samples"],
    "prune": ["--ratio", "--speedup", "--round-to", "--finetune-epochs", "--lr", "--latency-batch", "--threads"],
    "quantize": ["--bits", "--calib-size", "--keep-sensitive", "--latency-batch", "--threads"],
    "decompose": ["--energy", "--ratio", "--finetune-epochs", "--grad-clip"],
    "cluster": ["--bits", "--epochs", "--lr"],
    "convert": ["--groups", "--calibration-samples", "--finetune-epochs", "--lr"],
    "distill": ["--epochs", "--stage-epochs", "--lr", "--weight-decay"],
}
_BAD_VALUES = ["nan", "inf", "-inf", "-1", "-0.5", "abc", "", "1e999", "0x10", "99999999999999999999", "1,2", "--"]


def test_seeded_fuzz_of_bad_numeric_flags(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    for _ in range(120):
        command = rng.choice(sorted(_NUMERIC_FLAGS))
        flag, value = rng.choice(_NUMERIC_FLAGS[command]), rng.choice(_BAD_VALUES)
        head = ["distill", "--teacher", "lenet5", "--student", "lenet5"] if command == "distill" else \
            [command, "lenet5"] + (["--energy", "0.5"] if command == "decompose" and flag != "--energy" else []) + \
            (["--to", "crelu"] if command == "convert" else [])
        argv = [*head, "--data", "digits", "--out", "o", f"{flag}={value}"]
        code = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err, argv
        # a bad value, or one the flag accepts but lenet5 cannot run on digits: refused either way, before any work
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert not (tmp_path / "o").exists(), argv


def test_written_files_follow_the_users_umask(tmp_path):
    import os
    import stat

    from slimkit._io import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_recipe_naming_code_imports_it_only_when_the_user_types_the_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text("open('PWNED', 'w')\n\ndef f():\n    raise ValueError('boom')\n")
    (tmp_path / "r.yaml").write_text("version: 1\nmodel: {spec: evil.py:f}\ndata: {name: digits}\n"
                                     "stages:\n  - evaluate: {}\n")
    for argv in (["compress", "r.yaml", "--out", "o"], ["compress", "r.yaml", "--check"]):
        assert main(argv) == 2
        assert "--trust-spec" in _one_clean_line(capsys)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o").exists()
    # typed by the user, the spec runs: --check builds the model, and the factory's own error is named
    assert main(["compress", "r.yaml", "--check", "--trust-spec", "evil.py:f"]) == 2
    assert "boom" in _one_clean_line(capsys) and (tmp_path / "PWNED").exists()
