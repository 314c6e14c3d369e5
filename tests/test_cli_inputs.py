"""Bad inputs to the commands' shared handling (model specs, checkpoints, output files, input shapes): one line
naming the problem and the fix, exit code 2, before any work, never a traceback."""

import pytest

from slimkit.cli import main


def _one_clean_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_an_input_shape_beyond_this_machines_memory_is_refused_before_allocating(capsys):
    assert main(["profile", "lenet5", "--input-shape", "1,1000000,1000000"]) == 2  # 3.6 TiB of float32
    assert "too large for this machine's memory" in _one_clean_line(capsys)


@pytest.mark.parametrize("spec, message", [
    ("llama_tiny:num_attention_heads=3", "not a multiple of the number of attention heads"),
    ("gpt2_tiny:n_head=3", "must be divisible by num_heads"),
    ("llama_tiny:num_layers=abc", "has no config field num_layers: did you mean num_hidden_layers?"),
    ("gpt2_tiny:n_layers=2", "has no config field n_layers: did you mean n_layer"),
])
def test_a_zoo_language_model_with_bad_options_is_one_line(spec, message, capsys):
    assert main(["profile", spec]) == 2
    assert message in _one_clean_line(capsys)


def test_a_model_factory_that_raises_is_named_with_its_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("def f():\n    raise ValueError('boom')\n")
    assert main(["profile", "mine.py:f"]) == 2
    assert "model factory 'mine.py:f' raised ValueError: boom" in _one_clean_line(capsys)


@pytest.mark.parametrize("argv", [
    ["profile", "lenet5", "-c", ""],
    ["prune", "lenet5", "-c", "", "--ratio", "0.5", "--out", "o"],
    ["export", "lenet5", "-c", "", "--data", "digits", "--out", "m.onnx"],
    ["distill", "--teacher", "lenet5", "-T", "", "--student", "lenet300", "--out", "o"],
])
def test_an_empty_checkpoint_path_is_refused_not_read_as_none(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "path is empty" in _one_clean_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


def test_an_image_folder_size_with_a_comma_names_the_syntax_that_works(capsys, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "imgs" / split / name / "0.png")
    assert main(["train", "lenet5", "--data", "imgs:size=28,28", "--out", "o"]) == 2
    assert "write key=value pairs separated by commas, e.g. 'imgs:size=32x32,mode=L'" in _one_clean_line(capsys)
    assert not (tmp_path / "o").exists()


def test_an_output_path_under_a_file_names_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for out in ("notes.txt/x.onnx", "notes.txt/sub/x.onnx"):
        assert main(["export", "lenet5", "--out", out]) == 2
        assert "'notes.txt' is a file, not a folder" in _one_clean_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"
