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


@pytest.mark.parametrize("argv, message", [
    # an option that another option makes meaningless: refused, naming the option it belongs with
    (["cluster", "lenet5", "--lr", "0.01"], "--lr is the learning rate of the --epochs centroid fine-tune: give "
     "--epochs N too"),
    (["convert", "lenet5", "--to", "crelu", "--groups", "4"], "--groups is an option of --to group, and this is --to "
     "crelu"),
    (["convert", "lenet5", "--to", "depthwise-separable", "--no-shuffle"], "--no-shuffle is an option of --to group"),
    (["convert", "lenet5", "--to", "group", "--bn-relu"], "--bn-relu is an option of --to depthwise-separable"),
    (["convert", "lenet5", "--to", "crelu", "--finetune-epochs", "0", "--lr", "0.1"],
     "--lr tunes the --finetune-epochs fine-tune, and --finetune-epochs is 0"),
    (["prune", "lenet5", "--ratio", "0.5", "--lr", "0.1"], "give --finetune-epochs N too, or drop --lr"),
    (["decompose", "lenet5", "--energy", "0.9", "--grad-clip", "3"], "--grad-clip tunes the --finetune-epochs"),
    (["prune", "lenet5", "--schedule", "layerwise", "--speedup", "2"], "--schedule layerwise prunes one group at a "
     "time by --ratio, so it cannot search for --speedup"),
    (["prune", "lenet5", "--latency", "0.5", "--scope", "global"], "--latency chooses every group's width"),
    (["prune", "lenet5", "--schedule", "layerwise", "--scope", "global"], "prunes each group by --ratio on its own: "
     "drop --scope"),
    (["prune", "lenet5", "--latency", "0.5", "--round-to", "8"], "drop --round-to"),
    (["prune", "lenet5", "--no-latency", "--threads", "2"], "--threads sets the latency comparison, which "
     "--no-latency skips"),
    (["quantize", "lenet5", "--no-latency", "--latency-batch", "8"], "--latency-batch sets the latency comparison"),
    (["quantize", "lenet5", "--weight-only", "--reduce-range"], "--weight-only (and --group-size) keep in float: "
     "drop --reduce-range"),
    (["quantize", "lenet5", "--group-size", "32", "--no-reduce-range"], "drop --no-reduce-range"),
    (["train", "lenet5", "--epochs", "0", "--lr", "0.1"], "--lr tunes the training, and --epochs is 0"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--epochs", "0", "--weight-decay", "0"],
     "--weight-decay tunes the training, and --epochs is 0"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--loss", "kd", "--pairs", "conv1=conv1"],
     "--pairs names the layers of a feature loss"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--stagewise", "--pairs", "conv1=conv1",
      "--cache-teacher"], "runs the teacher live: drop --cache-teacher"),
    (["profile", "lenet5", "--force"], "no --json is given: add --json FILE, or drop --force"),
    (["export", "run", "--data", "digits", "--out", "m.onnx"], "--data is for a model spec"),
    (["export", "lenet5", "--trust-spec", "mine.py:f", "--out", "m.onnx"], "drop --trust-spec"),
    (["demo", "--list", "--quick", "--out", "o"], "--list only lists the demo's families"),
    (["auto", "lenet5", "--budget", "size=0.1", "--formats", "onnx,int8", "--cluster-epochs", "2"],
     "--formats onnx,int8 leaves out container: add container to --formats, or drop --cluster-epochs"),
    (["auto", "lenet5", "--budget", "size=0.1", "--knobs", "rank,int8", "--criterion", "l2"],
     "add channels to --knobs, or drop --criterion"),
    (["auto", "lenet5", "--budget", "size=0.1", "--knobs", "channels,clusters", "--prune-rounds", "2"],
     "add sparsity to --knobs, or drop --prune-rounds"),
    (["auto", "lenet5", "--budget", "size=0.1", "--sensitivity", "hessian", "--sensitivity-steps", "10"],
     "drop --sensitivity-steps"),
    (["auto", "lenet5", "--budget", "size=0.1", "--recovery-epochs", "0", "--recovery-lr", "0.1"],
     "drop --recovery-lr"),
    # a check whose message named recipe fields (or the Python API) now names the flags the user typed
    (["convert", "lenet5", "--to", "group", "--groups", "7"], "--groups 7 does not divide the input and output "
     "channels of conv1 (1 in, 20 out) or conv2 (20 in, 50 out): use --groups 2, 5 or 10"),
    (["prune", "lenet5", "--speedup", "2", "--latency", "0.5"], "--speedup and --latency both set"),
    (["prune", "lenet5", "--skip", "conv1", "conv2", "fc1"], "the layer options --skip conv1 conv2 fc1 leave no"),
    (["decompose", "lenet5", "--rank", "4,2"], "--rank 4,2 gives R_OUT,R_IN"),
    (["quantize", "lenet5", "--keep-sensitive", "4"], "--keep-sensitive 4 keeps every one of the 4 layers"),
    (["quantize", "lenet5", "--weight-only", "--method", "smoothquant"], "drop --weight-only, or use awq"),
    (["cluster", "lenet5", "--conv-bits", "20"], "--conv-bits: 20 is out of range"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--loss", "at", "--pairs", "conv2=conv2",
      "--cache-teacher"], "--loss at needs the teacher's features every batch: drop --cache-teacher"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--stagewise", "--pairs", "conv1=conv1", "--loss",
      "at"], "use --loss ce or kd with --stagewise"),
    (["distill", "--teacher", "lenet5", "--student", "lenet5", "--stagewise"], "give --pairs S=T"),
])
def test_an_option_other_options_make_meaningless_or_a_recipe_field_is_refused_by_its_flag(argv, message, capsys,
                                                                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()  # a folder export takes for a run (refused before it is read)
    if "--out" not in argv and argv[0] not in ("profile", "demo"):
        argv = [*argv, "--out", "o"]
    assert main(argv) == 2
    assert message in _one_clean_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()
