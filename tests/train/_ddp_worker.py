"""Run by torchrun in test_ddp.py: trains on MNIST with 2 ranks and writes each rank's weights and losses."""

import sys

import torch
from torch import nn

from slimkit.data import TensorLoader, mnist_tensors
from slimkit.train import dist_info, fit, save_checkpoint


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:4096], y[:4096], 64, shuffle=True)
    result = fit(model, loader, epochs=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), progress=False,
                 checkpoint_dir=f"{out_dir}/ckpt")
    rank = dist_info().rank
    state = {f"w.{k}": v for k, v in model.state_dict().items()}
    state["losses"] = torch.tensor([h["train_loss"] for h in result.history])
    state["world_size"] = torch.tensor(dist_info().world_size)
    save_checkpoint(state, f"{out_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
