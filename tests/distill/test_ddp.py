import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimkit.train import load_checkpoint


@pytest.mark.slow
def test_two_process_ddp_distillation_keeps_student_and_regressor_identical(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(worker), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_checkpoint(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(int(r["world_size"]) == 2 for r in ranks)
    keys = [k for k in ranks[0] if k.startswith("w.")]
    assert "w.losses.1.regressors.0.weight" in keys  # the hint regressor is part of the DDP-trained module
    for key in keys:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
    assert all(int(r["hooks_left"]) == 0 for r in ranks)
    saved = load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"]
    torch.testing.assert_close(saved["losses.1.regressors.0.weight"], ranks[0]["w.losses.1.regressors.0.weight"])
