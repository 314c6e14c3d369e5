import subprocess
import sys
from pathlib import Path

import torch

from slimkit.train import load_checkpoint


def test_two_process_ddp_keeps_ranks_identical_and_loss_falls(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(worker), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_checkpoint(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(int(r["world_size"]) == 2 for r in ranks)
    for key in ranks[0]:
        if key.startswith("w."):
            assert torch.equal(ranks[0][key], ranks[1][key]), key
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0]
    assert torch.equal(ranks[0]["losses"], ranks[1]["losses"])  # all-reduced: every rank reports the same loss
    assert (tmp_path / "ckpt" / "last.pt").is_file()  # written by rank 0 only
