"""The training loop every technique fine-tunes with: progress, checkpoints each epoch, exact resume, DDP."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimkit
from slimkit._errors import CheckpointError, ConfigError, DataError
from slimkit.analysis import evaluate, is_token_output, output_logits, token_cross_entropy
from slimkit.train._callbacks import Callback, TrainState
from slimkit.train._checkpoint import load_checkpoint, save_checkpoint
from slimkit.train._distributed import all_reduce_sum, barrier, init_distributed
from slimkit.train._seed import seed_everything

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``step(model, inputs, targets) -> (loss, outputs)``; replaces forward + loss (distillation uses it)
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
OptimizerArg = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None
SchedulerArg = Any  # an LRScheduler, a callable(optimizer) -> LRScheduler, "cosine", or None

CHECKPOINT_NAME = "last.pt"


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: the learning rate is too high for this model (a ConfigError, exit status 2)."""


@dataclass
class FitResult:
    """Per-epoch history (``train_loss``, ``train_acc``, ``val_acc``, ``val_loss``, ``lr``, ``seconds``)."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def check_optimizer_values(lr: float, weight_decay: float) -> None:
    """A learning rate in (0, 10] and a weight decay in [0, 1): anything else is a typo, not a training recipe."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 10:
        raise ConfigError(f"lr={lr!r}: use a learning rate in (0, 10], e.g. 0.05")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or not 0 <= weight_decay < 1:
        raise ConfigError(f"weight_decay={weight_decay!r}: use a value in [0, 1), e.g. 5e-4 (0 for none)")


def default_optimizer(params: Iterable[nn.Parameter], lr: float = 0.05, weight_decay: float = 5e-4,
                      momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 and weight decay 5e-4: the usual choice for CNNs on small images
    (``momentum=0``: plain SGD)."""
    check_optimizer_values(lr, weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)


def _build_optimizer(model: nn.Module, optimizer: OptimizerArg) -> torch.optim.Optimizer:
    if optimizer is None:
        return default_optimizer(model.parameters())
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    return optimizer(model.parameters())


def _build_scheduler(optimizer: torch.optim.Optimizer, scheduler: SchedulerArg, epochs: int, steps: int):
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(1, epochs * steps),
            pct_start=0.15, anneal_strategy="cos", div_factor=10.0, final_div_factor=100.0,
        )
    if isinstance(scheduler, str):
        raise ConfigError(f"unknown scheduler '{scheduler}': use 'cosine', an LRScheduler, or a factory")
    if callable(scheduler) and not hasattr(scheduler, "step"):
        return scheduler(optimizer)
    return scheduler


def _default_step(loss_fn: LossFn | None) -> StepFn:
    def step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = output_logits(model(inputs))  # a Hugging Face model's output object gives its .logits
        if loss_fn is None:  # a language model's batch (N×L×V logits, N×L targets): next-token cross-entropy
            loss_value = token_cross_entropy(outputs, targets) if is_token_output(outputs, targets) else \
                nn.functional.cross_entropy(outputs, targets)
            return loss_value, outputs
        return loss_fn(outputs, targets), outputs

    return step


def _shard(loader: Iterable, rank: int, world_size: int) -> Iterable:
    if world_size == 1:
        return loader
    if hasattr(loader, "shard"):
        return loader.shard(rank, world_size)
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        raise ConfigError(
            "under torchrun the training loader must be a slimkit TensorLoader or a DataLoader with a "
            "DistributedSampler, so each rank sees its own share of the data"
        )
    return loader


def _set_epoch(loader: Iterable, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"), disable=not enabled, transient=False,
    )


def _same_form(what: str, expected: Any, found: Any) -> None:
    """``found`` (a state read from a file) has ``expected``'s fields, lengths and value types, recursively: a state
    load_state_dict would take but whose values fail (or mislead) only later is refused here. Numbers may be int
    or float alike (a learning rate is either)."""
    number = (int, float)
    if isinstance(expected, dict):
        # a scheduler adds private fields as it steps: those may differ, every public one must be this fit's
        if not isinstance(found, dict) or any(k not in expected and not (isinstance(k, str) and k.startswith("_"))
                                              for k in found):
            raise ValueError(f"the {what} state has other fields than this fit's")
        for key, value in expected.items():
            if key in found:
                _same_form(what, value, found[key])
    elif isinstance(expected, (list, tuple)):
        if not isinstance(found, (list, tuple)) or len(found) != len(expected):
            raise ValueError(f"the {what} state has another layout than this fit's")
        for a, b in zip(expected, found):
            _same_form(what, a, b)
    elif isinstance(expected, bool) or expected is None:
        if type(found) is not type(expected) and not (expected is None or found is None):
            raise ValueError(f"the {what} state holds {found!r} where this fit has {expected!r}")
    elif isinstance(expected, number) and (isinstance(found, bool) or not isinstance(found, number)):
        raise ValueError(f"the {what} state holds {found!r} where this fit has a number")


def _restore(ckpt_path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
             epochs: int) -> tuple[int, list]:
    """Load the epoch checkpoint ``fit`` wrote; returns (the next epoch, the history so far). Anything missing or
    mismatched is a :class:`CheckpointError` saying the file belongs to another run."""
    state = load_checkpoint(ckpt_path)
    try:
        if not isinstance(state, dict):
            raise TypeError("not a dictionary of states")
        epoch = state["epoch"]
        if type(epoch) is not int or not -1 <= epoch < epochs or state.get("epochs", epochs) != epochs:
            raise ValueError(f"epoch {epoch!r} of {state.get('epochs')!r} is not one of this fit's {epochs}")
        _same_form("optimizer", opt.state_dict()["param_groups"], state["optimizer"]["param_groups"])
        if sched is not None and state.get("scheduler") is not None:
            _same_form("scheduler", sched.state_dict(), state["scheduler"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        rng = state["torch_rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
            raise ValueError("torch_rng is not a generator state")
        torch.set_rng_state(rng)
        history = [dict(h) for h in state.get("history", [])]
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot resume from '{ckpt_path}' ({type(error).__name__}: {error}): it was not "
                              "written by this run's fit; start over (--force) or give the folder of the run") from None
    return epoch + 1, history


def _save(ckpt_path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, epoch: int, epochs: int,
          history: list) -> None:
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict() if sched is not None else None, "epoch": epoch,
                     "epochs": epochs, "history": history, "torch_rng": torch.get_rng_state(),
                     "slimkit_version": slimkit.__version__}, ckpt_path)


@dataclass
class _Loop:
    """What one epoch of ``fit`` needs besides the model: built once, used by :func:`_train_epoch`."""

    net: nn.Module
    model: nn.Module
    loader: Iterable
    opt: torch.optim.Optimizer
    sched: Any
    per_batch_schedule: bool
    step_fn: StepFn
    callbacks: Sequence[Callback]
    state: TrainState
    grad_clip: float | None
    steps_per_epoch: int


def _train_epoch(loop: _Loop, epoch: int, epochs: int, bar: Any) -> dict[str, float]:
    """One pass over the loader: forward, backward, clip, step; returns the epoch's loss, accuracy, lr, seconds."""
    task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=loop.steps_per_epoch or None, stats="")
    loop.net.train()
    began = time.perf_counter()
    loss_sum = correct = seen = 0.0
    for inputs, targets in loop.loader:
        loop.opt.zero_grad(set_to_none=True)
        loss_value, outputs = loop.step_fn(loop.net, inputs, targets)
        if not torch.isfinite(loss_value):
            raise TrainingDiverged(f"training diverged at epoch {epoch + 1} (loss {float(loss_value)}): lower the "
                                   "learning rate")
        loss_value.backward()
        loop.state.batch_loss = float(loss_value.detach())
        for cb in loop.callbacks:
            cb.on_after_backward(loop.state)
        if loop.grad_clip is not None:
            nn.utils.clip_grad_norm_(loop.model.parameters(), loop.grad_clip)
        loop.opt.step()
        if loop.per_batch_schedule and loop.sched is not None:
            loop.sched.step()
        loop.state.step += 1
        for cb in loop.callbacks:
            cb.on_batch_end(loop.state)
        n = targets.shape[0]
        loss_sum += float(loss_value.detach()) * n
        if outputs.dim() == 2 and targets.dim() == 1:
            correct += float((outputs.argmax(1) == targets).sum())
        seen += n
        bar.update(task, advance=1, stats=f"loss {loss_sum / seen:.4f}")
    if loop.sched is not None and not loop.per_batch_schedule:
        loop.sched.step()
    loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen])
    record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
              "lr": loop.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
    bar.update(task, stats=" ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in {"epoch", "lr",
                                                                                           "seconds"}))
    return record


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: OptimizerArg = None,
    loss: LossFn | None = None,
    scheduler: SchedulerArg = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    val_loader: Iterable | None = None,
    step: StepFn | None = None,
    seed: int = 0,
    progress: bool = True,
    grad_clip: float | None = None,
) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs and return the per-epoch history.

    ``optimizer`` is an optimizer over ``model``'s parameters, a factory ``params -> optimizer``, or None for SGD
    (Nesterov 0.9, lr 0.05, wd 5e-4). ``scheduler`` is stepped every batch when it is "cosine" (one-cycle cosine
    over the whole run) and every epoch for any other LRScheduler. With ``checkpoint_dir`` a checkpoint (model,
    optimizer, scheduler, RNG, history) is written atomically after every epoch; ``resume=True`` continues from
    it and reaches the same weights as an uninterrupted run. Under ``torchrun`` the model is wrapped in
    DistributedDataParallel, each rank trains on its shard, and only rank 0 writes checkpoints and shows progress.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a whole number ≥ 0, got {epochs!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir: the folder the interrupted run wrote its checkpoint to")
    info = init_distributed()
    loader = _shard(train_loader, info.rank, info.world_size)
    try:
        steps_per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    if steps_per_epoch == 0 and hasattr(loader, "__len__"):
        raise DataError("the training loader yields no batches: check the dataset and batch size")
    opt = _build_optimizer(model, optimizer)
    sched = _build_scheduler(opt, scheduler, epochs, steps_per_epoch)

    result = FitResult()
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        start_epoch, result.history = _restore(ckpt_path, model, opt, sched, epochs)
        result.resumed_from_epoch = start_epoch
        log.info("resuming from %s at epoch %d", ckpt_path, start_epoch + 1)
    else:
        seed_everything(seed)

    net: nn.Module = model
    if info.enabled and not isinstance(model, nn.parallel.DistributedDataParallel):
        net = nn.parallel.DistributedDataParallel(model)
    train_state = TrainState(model=model, optimizer=opt, epoch=start_epoch)
    loop = _Loop(net, model, loader, opt, sched, scheduler == "cosine",
                 step or _default_step(loss), callbacks, train_state, grad_clip,
                 steps_per_epoch)
    for cb in callbacks:
        cb.on_fit_start(train_state)
    with _progress(progress and info.is_main) as bar:
        for epoch in range(start_epoch, epochs):
            train_state.epoch = epoch
            _set_epoch(loader, epoch)
            for cb in callbacks:
                cb.on_epoch_start(train_state)
            record = _train_epoch(loop, epoch, epochs, bar)
            if val_loader is not None:
                val = evaluate(model, val_loader)
                record.update(val_acc=val.accuracy, val_loss=val.loss)
            result.history.append(record)
            train_state.metrics = record
            log.info("epoch %d/%d: %s", epoch + 1, epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in {"epoch", "lr", "seconds"}))
            for cb in callbacks:
                cb.on_epoch_end(train_state)
            if ckpt_path is not None:
                if info.is_main:
                    _save(ckpt_path, model, opt, sched, epoch, epochs, result.history)
                barrier()
            if train_state.stop:
                break
    for cb in callbacks:
        cb.on_fit_end(train_state)
    if any(not math.isfinite(float(p.detach().abs().sum())) for p in model.parameters()):
        raise ConfigError("training produced non-finite weights: lower the learning rate")
    return result
