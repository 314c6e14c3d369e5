"""Training: ``fit`` (progress, checkpoints, exact resume, DDP under torchrun), callbacks, safe checkpoints."""

from slimkit.analysis import evaluate
from slimkit.train._callbacks import Callback, TrainState
from slimkit.train._checkpoint import load_checkpoint, load_weights_, model_state, save_checkpoint
from slimkit.train._config import OPTIMIZERS, FitConfig
from slimkit.train._distributed import (
    DistInfo,
    broadcast_object,
    dist_info,
    init_distributed,
    launched_by_torchrun,
)
from slimkit.train._fit import (
    CHECKPOINT_NAME,
    FitResult,
    TrainingDiverged,
    check_optimizer_values,
    default_optimizer,
    fit,
)
from slimkit.train._seed import seed_everything, torch_threads

__all__ = [
    "CHECKPOINT_NAME",
    "OPTIMIZERS",
    "Callback",
    "DistInfo",
    "FitConfig",
    "FitResult",
    "TrainState",
    "TrainingDiverged",
    "broadcast_object",
    "check_optimizer_values",
    "default_optimizer",
    "dist_info",
    "evaluate",
    "fit",
    "init_distributed",
    "launched_by_torchrun",
    "load_checkpoint",
    "load_weights_",
    "model_state",
    "save_checkpoint",
    "seed_everything",
    "torch_threads",
]
