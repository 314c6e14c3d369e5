"""Distillation losses, registered by name so a recipe or the CLI can say ``kd:T=20,alpha=0.9`` or ``at:beta=1000``.

Each loss is a small ``nn.Module`` with its paper's parameters and a natural ``forward``; :meth:`DistillLoss.compute`
adapts it to the :class:`DistillBatch` the distiller assembles (logits, targets, features at the paired layers).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit._spec import parse_value
from slimkit.analysis import LM_IGNORE_INDEX, is_token_output, token_cross_entropy

LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss")
Shapes = dict[str, tuple[int, ...]]


@dataclass
class DistillBatch:
    """What one training step gives the losses. Feature dicts are keyed by layer name (student's and teacher's)."""

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """Base class. ``pairs`` are ``(student_layer, teacher_layer)`` names for feature losses."""

    uses_teacher_logits = False
    uses_features = False
    uses_targets = False

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str, str]] = []

    def setup(self, pairs: list[tuple[str, str]], student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        """Check the paired feature shapes (per-sample, without batch) and build any learned parts, before training."""
        self.pairs = list(pairs)
        if self.uses_features and not self.pairs:
            raise ConfigError(f"loss '{self.loss_name}' compares features: give layer pairs (e.g. layer1=layer1)")

    @property
    def loss_name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        raise NotImplementedError


def token_mask(targets: torch.Tensor | None, logits_or_features: torch.Tensor) -> torch.Tensor | None:
    """For a language model's batch (per-position ``N×L×…`` tensors, ``N×L`` targets): the positions to score
    (targets ≠ -100, i.e. not padding); None for any other batch."""
    if targets is None or targets.dim() != 2 or logits_or_features.dim() != 3:
        return None
    if tuple(logits_or_features.shape[:2]) != tuple(targets.shape):
        return None
    return targets != LM_IGNORE_INDEX


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error, over the scored positions only when ``mask`` (N×L) is given."""
    if mask is None:
        return F.mse_loss(student, teacher)
    return F.mse_loss(student[mask], teacher[mask])


def _register(name: str):
    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        cls.registered_name = name  # type: ignore[attr-defined]
        return LOSSES.register(name)(cls)

    return decorator


@_register("ce")
class TaskLoss(DistillLoss):
    """The task (hard-label) loss: cross-entropy with the ground-truth labels (for a language model, the next-token
    cross-entropy averaged over the tokens whose target is not -100)."""

    uses_targets = True

    def forward(self, student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if is_token_output(student_logits, targets):
            return token_cross_entropy(student_logits, targets)
        return F.cross_entropy(student_logits, targets)

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        return self(batch.student_logits, batch.targets)


@_register("kd")
class KDLoss(DistillLoss):
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, §2).

    ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)``. The KL has the same gradient as the
    paper's cross-entropy with soft targets (they differ by the teacher's entropy, a constant). The gradient of the
    soft term with respect to a logit scales as 1/T², so it is multiplied by T² to keep the soft and hard terms'
    relative contribution roughly unchanged when T changes (§2). ``alpha=1`` gives soft targets only.
    Defaults: T=4, alpha=0.9 (the paper's MNIST experiment used T=20 and a small hard-loss weight).

    For a language model (``N×L×V`` logits, ``N×L`` targets) every position is one distribution over the
    vocabulary: the KL is summed over the vocabulary and averaged over the positions whose target is not -100
    (padding is not distilled), as in token-level KD for LMs (Kim & Rush 2016, Eq. 5; Sanh et al. 2019).
    """

    uses_teacher_logits = True

    def __init__(self, T: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if not T > 0:  # (nan too)
            raise ConfigError(f"kd temperature T must be > 0, got {T}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"kd alpha (weight of the soft loss) must be in [0, 1], got {alpha}")
        self.T, self.alpha = float(T), float(alpha)
        self.uses_targets = self.alpha < 1.0

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """``T² · KL`` between the softened distributions, averaged over the batch (over the ``mask``-ed positions
        of per-position logits ``N×L×V``; all positions without a mask)."""
        if student_logits.dim() == 3:
            if mask is not None:
                student_logits, teacher_logits = student_logits[mask], teacher_logits[mask]
            else:
                student_logits = student_logits.reshape(-1, student_logits.shape[-1])
                teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        log_p_student = F.log_softmax(student_logits.float() / self.T, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.detach().float() / self.T, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * self.T**2

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = token_mask(targets, student_logits)
        loss = self.alpha * self.soft_loss(student_logits, teacher_logits, mask)
        if self.alpha < 1.0:
            if targets is None:
                raise ConfigError("kd with alpha < 1 mixes in the hard-label loss and needs the targets")
            hard = token_cross_entropy(student_logits, targets) if mask is not None else \
                F.cross_entropy(student_logits, targets)
            loss = loss + (1.0 - self.alpha) * hard
        return loss

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        assert batch.teacher_logits is not None
        return self(batch.student_logits, batch.teacher_logits, batch.targets)


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017, Eq. 1 with F = mean over channels of |A|^p).

    Returns ``N×(H·W)`` maps, each L2-normalised (the paper's ``Q/‖Q‖₂``, Eq. 2). The mean over channels (rather
    than the sum) makes the map independent of the channel count up to the normalisation anyway.
    """
    if features.dim() != 4:
        raise ConfigError(f"attention transfer needs N×C×H×W feature maps, got shape {tuple(features.shape)}")
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@_register("at")
class ATLoss(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017, Eq. 2): ``β/2 · Σ_j mean((Q_S^j/‖Q_S^j‖ − Q_T^j/‖Q_T^j‖)²)``.

    As in the authors' code the squared difference is averaged over the batch and map positions, which is their
    "β = 10³ divided by the number of elements in the attention map and batch size". Channel counts may differ;
    a student map whose spatial size differs from the teacher's is resized bilinearly to the teacher's.
    """

    uses_features = True

    def __init__(self, beta: float = 1000.0, p: float = 2.0) -> None:
        super().__init__()
        if not 0 <= beta < math.inf:
            raise ConfigError(f"at beta (the loss's weight per layer pair) must be a finite number ≥ 0, got {beta}")
        if not 0 < p < math.inf:
            raise ConfigError(f"at p (the power of the attention map) must be a finite number > 0, got {p}")
        self.beta, self.p = float(beta), float(p)

    def setup(self, pairs: list[tuple[str, str]], student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        super().setup(pairs, student_shapes, teacher_shapes)
        for s, t in self.pairs:
            if len(student_shapes[s]) != 3 or len(teacher_shapes[t]) != 3:
                raise ConfigError(
                    f"attention transfer pairs feature maps (C×H×W): student '{s}' gives {student_shapes[s]}, "
                    f"teacher '{t}' gives {teacher_shapes[t]}; pair convolutional layers, or use 'hint'/'mimic'"
                )

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[-2:] != teacher.shape[-2:]:
            student_map = student.abs().pow(self.p).mean(dim=1, keepdim=True)
            student_map = F.interpolate(student_map, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
            q_s = F.normalize(student_map.flatten(1), dim=1)
        else:
            q_s = attention_map(student, self.p)
        q_t = attention_map(teacher.detach(), self.p)
        return (q_s - q_t).pow(2).mean()

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
        total = sum(self.pair_loss(s, t) for s, t in zip(student_features, teacher_features))
        return self.beta / 2 * total

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        return self([batch.student_features[s] for s, _ in self.pairs],
                    [batch.teacher_features[t] for _, t in self.pairs])


@_register("hint")
class HintLoss(DistillLoss):
    """FitNets hints (Romero et al. 2015, Eq. 3): a learned regressor r maps the student's guided layer to the
    teacher's hint layer, loss ``½‖u_h − r(v_g)‖²`` (here averaged over elements, summed over pairs).

    The regressor is a 1×1 convolution for feature maps and a linear layer for vectors and for a transformer's
    per-token hidden states (L×H: a learned H_s → H_t projection applied at every position, so blocks of different
    widths can be paired; padded positions are not scored), built in :meth:`setup` from the measured shapes (its
    parameters belong to this module, so the optimizer trains them and checkpoints save them). A regressed map whose
    spatial size differs from the teacher's is resized bilinearly.
    """

    uses_features = True

    def __init__(self) -> None:
        super().__init__()
        self.regressors = nn.ModuleList()

    def setup(self, pairs: list[tuple[str, str]], student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        super().setup(pairs, student_shapes, teacher_shapes)
        self.regressors = nn.ModuleList()
        for s, t in self.pairs:
            s_shape, t_shape = student_shapes[s], teacher_shapes[t]
            if len(s_shape) == 3 and len(t_shape) == 3:
                self.regressors.append(nn.Conv2d(s_shape[0], t_shape[0], 1))
            elif len(s_shape) == 1 and len(t_shape) == 1:
                self.regressors.append(nn.Linear(s_shape[0], t_shape[0]))
            elif len(s_shape) == 2 and len(t_shape) == 2 and s_shape[0] == t_shape[0]:
                self.regressors.append(nn.Linear(s_shape[1], t_shape[1]))
            else:
                raise ConfigError(
                    f"hint cannot regress student '{s}' {s_shape} onto teacher '{t}' {t_shape}: pair two feature "
                    "maps (C×H×W), two vectors (C) or two sequences of hidden states of equal length (L×H)"
                )

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                targets: torch.Tensor | None = None) -> torch.Tensor:
        total = student_features[0].new_zeros(())
        for regressor, s, t in zip(self.regressors, student_features, teacher_features):
            mapped = regressor(s)
            if mapped.dim() == 4 and mapped.shape[-2:] != t.shape[-2:]:
                mapped = F.interpolate(mapped, size=t.shape[-2:], mode="bilinear", align_corners=False)
            total = total + 0.5 * _masked_mse(mapped, t.detach(), token_mask(targets, mapped))
        return total

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        return self([batch.student_features[s] for s, _ in self.pairs],
                    [batch.teacher_features[t] for _, t in self.pairs], batch.targets)


@_register("mimic")
class MimicLoss(DistillLoss):
    """Feature reconstruction / mimicking: mean squared error between student and teacher features at the paired
    layers, no regressor, so the shapes must match (e.g. the penultimate layer; Ba & Caruana 2014 mimic logits,
    Romero et al. 2015 and Luo et al. 2017 reconstruct features). Summed over pairs. For a transformer, pair blocks
    of equal width (a depth-pruned student's block i with the teacher's block it replaced, as Minitron and
    Sheared-LLaMA align hidden states); positions whose target is -100 (padding) are not scored."""

    uses_features = True

    def setup(self, pairs: list[tuple[str, str]], student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        super().setup(pairs, student_shapes, teacher_shapes)
        for s, t in self.pairs:
            if student_shapes[s] != teacher_shapes[t]:
                raise ConfigError(
                    f"mimic compares features directly, but student '{s}' gives {student_shapes[s]} and teacher "
                    f"'{t}' gives {teacher_shapes[t]}: pair layers of equal shape, or use 'hint', which learns a "
                    "regressor from the student's shape to the teacher's"
                )

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                targets: torch.Tensor | None = None) -> torch.Tensor:
        return sum(_masked_mse(s, t.detach(), token_mask(targets, s))
                   for s, t in zip(student_features, teacher_features))

    def compute(self, batch: DistillBatch) -> torch.Tensor:
        return self([batch.student_features[s] for s, _ in self.pairs],
                    [batch.teacher_features[t] for _, t in self.pairs], batch.targets)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss by name, its weight in the total, its parameters, and optionally its own layer pairs
    (default: the distiller's pairs)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def parse(cls, text: str) -> LossSpec:
        """``"kd:T=20,alpha=0.9"``, ``"at:beta=1000,weight=0.5"`` or ``"ce"`` → a spec (``weight`` is the total's)."""
        name, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ConfigError(f"loss option '{item}' in '{text}' must be KEY=VALUE, e.g. kd:T=20,alpha=0.9")
            parsed = parse_value(value.strip())
            if isinstance(parsed, float) and not math.isfinite(parsed):
                raise ConfigError(f"loss option '{item}' in '{text}' must be a finite number")
            params[key.strip()] = parsed
        weight = params.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            raise ConfigError(f"loss weight {weight!r} in '{text}' must be a finite number ≥ 0")
        return cls(name.strip(), float(weight), params)

    def build(self) -> DistillLoss:
        """Instantiate the registered loss with ``params``; unknown parameters are named with the valid ones."""
        factory = LOSSES.get(self.name)
        accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            raise ConfigError(
                f"loss '{self.name}' has no option {', '.join(unknown)}: its options are "
                f"{', '.join([*accepted, 'weight']) or 'weight'}"
            )
        try:
            return factory(**self.params)
        except (TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"loss '{self.name}' cannot take {self.params} ({error}): give numbers, e.g. "
                              "kd:T=4,alpha=0.9") from None


def loss_names(pattern: str = "*") -> list[str]:
    """Registered distillation loss names matching a glob."""
    return LOSSES.names(pattern)
