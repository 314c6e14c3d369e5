"""Knowledge distillation: KD (Hinton et al. 2015), attention transfer (Zagoruyko & Komodakis 2017), FitNets hints
(Romero et al. 2015), feature mimicking, stage-wise reconstruction, and a Distiller trained by ``slimkit.train.fit``."""

from slimkit.distill._cache import IndexChannel, IndexedLoader, TeacherCache
from slimkit.distill._distiller import DistillConfig, Distiller, distill
from slimkit.distill._hooks import FeatureHooks, parse_pair, resolve_layers
from slimkit.distill._losses import (
    LOSSES,
    ATLoss,
    DistillBatch,
    DistillLoss,
    HintLoss,
    KDLoss,
    LossSpec,
    MimicLoss,
    TaskLoss,
    attention_map,
    loss_names,
)
from slimkit.distill._stagewise import ReconstructConfig, reconstruct, reconstruct_history, stage_parameters

__all__ = [
    "LOSSES",
    "ATLoss",
    "DistillBatch",
    "DistillConfig",
    "DistillLoss",
    "Distiller",
    "FeatureHooks",
    "HintLoss",
    "IndexChannel",
    "IndexedLoader",
    "KDLoss",
    "LossSpec",
    "MimicLoss",
    "ReconstructConfig",
    "TaskLoss",
    "TeacherCache",
    "attention_map",
    "distill",
    "loss_names",
    "parse_pair",
    "reconstruct",
    "reconstruct_history",
    "resolve_layers",
    "stage_parameters",
]
