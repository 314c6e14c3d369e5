"""Kill ``slimkit compress`` with SIGKILL in the middle of a stage, resume it, and get the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slimkit.train import load_checkpoint

from .conftest import tiny_recipe

STAGES_TEXT = """\
- train: {epochs: 3, lr: 0.1}
- finetune: {epochs: 40, lr: 0.02}
- evaluate: {}
"""


def _compress(folder, out, *extra):
    return [sys.executable, "-m", "slimkit.cli", "compress", str(folder / "r.yaml"), "--out", str(out),
            "--trust-spec", str(folder / "tiny.py:tiny"), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_gives_the_same_metrics_and_weights(tiny_dir):
    (tiny_dir / "r.yaml").write_text(tiny_recipe(STAGES_TEXT))
    done = subprocess.run(_compress(tiny_dir, tiny_dir / "ref"), capture_output=True, text=True, timeout=300,
                          env=_env(), cwd=tiny_dir)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tiny_dir / "out"
    proc = subprocess.Popen(_compress(tiny_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), cwd=tiny_dir)
    mid_stage = out / "stages" / "02-finetune" / "fit" / "last.pt"
    deadline = time.monotonic() + 240
    while not mid_stage.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / "stages/01-train/result.json").is_file()
    assert not (out / "stages/02-finetune/result.json").exists()

    refused = subprocess.run(_compress(tiny_dir, out), capture_output=True, text=True, timeout=120, env=_env())
    assert refused.returncode == 2 and "holds an earlier run" in refused.stderr

    resumed = subprocess.run(_compress(tiny_dir, out, "--resume"), capture_output=True, text=True, timeout=300,
                             env=_env(), cwd=tiny_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "finished earlier, reloaded" in resumed.stdout

    keys = ("stage", "params", "macs", "bytes", "accuracy", "loss")
    ref = json.loads((tiny_dir / "ref/metrics.json").read_text())["stages"]
    got = json.loads((out / "metrics.json").read_text())["stages"]
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in ref]
    ref_state, got_state = load_checkpoint(tiny_dir / "ref/model.pt"), load_checkpoint(out / "model.pt")
    assert ref_state.keys() == got_state.keys()
    assert all(torch.equal(ref_state[k], got_state[k]) for k in ref_state)
