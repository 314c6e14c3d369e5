"""slimkit's file writes: atomic, and never through a link planted where they write."""

import json

import pytest

from slimkit import ConfigError
from slimkit._io import copy_atomic, is_inside, refuse_links, write_text_atomic


def test_a_copy_replaces_a_link_at_its_target_and_never_writes_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("the user's")
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "model.onnx"
    target.symlink_to(victim)
    (tmp_path / "source").write_bytes(b"onnx bytes")
    copy_atomic(tmp_path / "source", target)
    assert victim.read_text() == "the user's"
    assert not target.is_symlink() and target.read_bytes() == b"onnx bytes"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx"]  # no temporary file left


def test_links_anywhere_under_a_folder_are_refused_and_a_plain_folder_passes(tmp_path):
    (tmp_path / "run" / "stages" / "01-train").mkdir(parents=True)
    (tmp_path / "run" / "stages" / "01-train" / "model.pt").write_bytes(b"x")
    refuse_links(tmp_path / "run")
    refuse_links(tmp_path / "missing")
    (tmp_path / "run" / "stages" / "01-train" / "model.onnx").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"symbolic link .*01-train/model\.onnx"):
        refuse_links(tmp_path / "run")
    assert is_inside(tmp_path / "run" / "a" / ".." / "b", tmp_path / "run")
    assert not is_inside(tmp_path / "run" / ".." / "b", tmp_path / "run")


def test_an_auto_folder_with_a_planted_link_is_refused_but_a_foreign_folder_is_named_for_what_it_is(tmp_path):
    from slimkit.auto._run import prepare_folder

    run = tmp_path / "run"
    (run / "candidates").mkdir(parents=True)
    (run / "auto.json").write_text(json.dumps({"run_id": "x", "fingerprint": "f"}))
    (run / "candidates" / "01").symlink_to(tmp_path)
    for options in ({"resume": True, "force": False}, {"resume": False, "force": True}):
        with pytest.raises(ConfigError, match="symbolic link"):
            prepare_folder(run, "f", **options)
    assert (run / "candidates" / "01").is_symlink()  # --force deleted nothing through it
    project = tmp_path / "project"
    project.mkdir()
    (project / ".venv").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="holds no auto run"):
        prepare_folder(project, "f", resume=False, force=True)


def test_a_device_or_pipe_at_the_target_is_never_replaced(tmp_path):
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(FileExistsError, match="never replaced"):
        write_text_atomic(pipe, "x")
    with pytest.raises(FileExistsError, match="never replaced"):
        copy_atomic(__file__, pipe)
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no staging file left
