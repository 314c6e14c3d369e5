"""Run by torchrun in test_ddp.py: distils a small CNN teacher into a student with 2 ranks (KD + hint)."""

import sys

import torch
from torch import nn

from slimkit.data import TensorLoader, mnist_tensors
from slimkit.distill import DistillConfig, Distiller
from slimkit.train import dist_info, save_checkpoint


def cnn(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(width * 49, 10))


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher, student = cnn(16), cnn(8)
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:2048], y[:2048], 64, shuffle=True)
    config = DistillConfig(losses=("kd:T=4,alpha=0.5", "hint"), pairs=("1=1",), epochs=2, lr=0.05,
                           checkpoint_dir=f"{out_dir}/ckpt")
    distiller = Distiller(teacher, student, config)
    result = distiller.fit(loader)
    rank = dist_info().rank
    state = {f"w.{k}": v for k, v in distiller.net.state_dict().items()}
    state["losses"] = torch.tensor([h["train_loss"] for h in result.history])
    state["world_size"] = torch.tensor(dist_info().world_size)
    state["hooks_left"] = torch.tensor(sum(len(m._forward_hooks) for m in [*student.modules(), *teacher.modules()]))
    save_checkpoint(state, f"{out_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
