"""``slimkit auto``'s flags: every bad value is one line and exit code 2, before any work (no folder written)."""

import random

import pytest

from slimkit.cli import main

FLAGS = ["--max-drop", "--min-accuracy", "--latency-batch", "--threads", "--recovery-epochs", "--recovery-lr",
         "--cluster-epochs", "--prune-rounds", "--max-candidates", "--calibration-samples", "--batch-size",
         "--calib-size", "--seed"]
BAD = ["nan", "inf", "-inf", "-1", "-0.5", "abc", "", "1e999", "0x10", "99999999999999999999", "1,2", "--"]


def test_seeded_fuzz_of_bad_numeric_flags(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    for _ in range(60):
        flag, value = rng.choice(FLAGS), rng.choice(BAD)
        argv = ["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--out", "o", f"{flag}={value}"]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not (tmp_path / "o").exists(), argv


def test_other_bad_input_is_named_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, message in (
        (["auto", "lenet5", "--data", "digits", "--budget", "size=0.1"], "cannot run on the 1×8×8 inputs"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--formats", "tflite"], "tflite"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--knobs", "depth"], "knob 'depth'"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "-c", "none.pt"], "does not exist"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--skip", "nosuch"], "'nosuch'"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "latency=0.5", "--formats", "container"],
         "can lower latency"),
        (["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--min-accuracy", "100.5"],
         "100.5 is out of range"),
    ):
        assert main([*argv, "--out", "o"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_help_documents_the_budget(capsys):
    with pytest.raises(SystemExit):
        main(["auto", "--help"])
    text = capsys.readouterr().out
    for words in ("latency=R", "size=R", "macs=R", "deployed file", "exit status", "--max-drop", "--min-accuracy"):
        assert words in text


def test_an_input_checkpoint_inside_the_output_folder_is_refused_before_any_work(capsys, tmp_path, monkeypatch,
                                                                                 trained):
    """--force clears an auto folder's candidates and every run writes its model.pt: an input checkpoint there could
    be deleted or overwritten."""
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "o" / "candidates" / "02").mkdir(parents=True)
    inside = tmp_path / "o" / "candidates" / "02" / "model.pt"
    shutil.copyfile(trained[1], inside)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "o").rglob("*"))
    argv = ["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "-c", str(inside), "--out", "o",
            "--force"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is inside the output folder" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "o").rglob("*")) == before


def test_verify_runs_auto_s_recipe_only_with_the_spec_the_user_typed(tmp_path):
    """verify() reads back the recipe.yaml auto wrote: a code spec in it other than the model the user typed (a
    tampered file) is refused before the recipe runs, and the code is never imported."""
    from slimkit import ModelSpecError
    from slimkit.cli._auto_run import verify

    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\ndef f():\n    pass\n")
    (tmp_path / "recipe.yaml").write_text(
        "version: 1\nmodel: {spec: lenet5}\ndata: {name: mnist, batch_size: 64}\n"
        f"stages:\n  - distill: {{student: '{evil}:f', teacher: input, epochs: 1}}\n")
    with pytest.raises(ModelSpecError, match=r"evil\.py:f"):
        verify(None, tmp_path, spec="lenet5", resume=False, force=False, printer=None)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "final").exists()


def test_min_accuracy_reaches_the_search(monkeypatch, tmp_path):
    import slimkit.cli._auto_run as auto_run

    seen = {}

    def record(args, config, model_section, data_section):
        seen["config"] = config
        return 0

    monkeypatch.setattr(auto_run, "search_and_verify", record)
    argv = ["auto", "auto_digits", "--data", "digits", "--budget", "size=0.1", "--out", str(tmp_path / "o")]
    assert main([*argv, "--min-accuracy", "97.5", "--max-drop", "2"]) == 0
    assert seen["config"].min_accuracy == 97.5 and seen["config"].max_drop == 2.0
    assert main(argv) == 0 and seen["config"].min_accuracy is None
