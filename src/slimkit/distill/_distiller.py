"""The distillation trainer: a frozen teacher, a student, feature hooks at paired layers, a weighted sum of losses,
trained by :func:`slimkit.train.fit` through its ``step`` argument (so DDP, checkpoints and resume come for free)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.analysis import output_logits
from slimkit.distill._cache import IndexedLoader, TeacherCache
from slimkit.distill._hooks import FeatureHooks, parse_pair, resolve_layers
from slimkit.distill._losses import LOSSES, DistillBatch, DistillLoss, LossSpec
from slimkit.train import Callback, FitConfig, FitResult, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DistillConfig(FitConfig):
    """How to distil. ``losses`` are names / spec strings (``"kd:T=20,alpha=0.9"``, ``"at:beta=1000"``, ``"ce"``)
    or :class:`LossSpec`; the total is their weighted sum, so include ``"ce"`` (or ``kd`` with alpha < 1) for the
    task loss. ``pairs`` are ``(student_layer, teacher_layer)`` names or ``"student=teacher"`` strings used by the
    feature losses. ``cache_teacher`` stores the teacher's logits per sample (fixed, non-augmented TensorLoader
    only; not with feature losses; not for language models, whose logits are L×V per sample). Training: the
    :class:`~slimkit.train.FitConfig` fields (``epochs``, ``optimizer`` "sgd" or "adamw", ``lr``,
    ``weight_decay``, ``scheduler``, ``grad_clip``, ``seed``; Hinton et al.'s student is "regularized solely by"
    the soft targets: ``weight_decay=0``).

    Language models (Hugging Face outputs' ``.logits``, N×L×V) work the same way: ``kd`` is token-level over the
    vocabulary and ``ce`` the next-token loss, both skipping targets of -100; ``mimic``/``hint`` compare the hidden
    states of paired blocks (e.g. ``"model.layers.3=model.layers.5"`` after depth pruning), position by position."""

    losses: tuple[str | LossSpec, ...] = ("kd",)
    pairs: tuple[tuple[str, str] | str, ...] = ()
    epochs: int = 5
    cache_teacher: bool = False
    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for spec in _specs(self):
            spec.build()  # unknown loss names or options fail when the config is made
        _pairs(self.pairs)


def _specs(config: DistillConfig) -> list[LossSpec]:
    specs = [s if isinstance(s, LossSpec) else LossSpec.parse(s) for s in config.losses]
    if not specs:
        raise ConfigError("no distillation loss given: use e.g. losses=('kd',) or ('ce', 'at')")
    seen: set[tuple[str, str, tuple[tuple[str, str], ...] | None]] = set()
    for spec in specs:  # the same loss twice counts it twice: a weight the user did not ask for
        key = (spec.name, repr(sorted(_effective_params(spec).items())), spec.pairs)
        if key in seen:
            raise ConfigError(f"loss '{spec.name}' is given twice with the same options: give it once, with "
                              f"weight=... to weigh it more")
        seen.add(key)
    return specs


def _effective_params(spec: LossSpec) -> dict[str, Any]:
    """A loss's options with its defaults filled in and numbers as floats: ``kd``, ``kd:T=4`` and ``kd:T=4.0`` are one
    loss."""
    defaults = {name: p.default for name, p in inspect.signature(LOSSES.get(spec.name)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in {**defaults, **spec.params}.items()}


def _pairs(items: Iterable[tuple[str, str] | str] | str) -> list[tuple[str, str]]:
    if isinstance(items, str):  # a single "student=teacher" string instead of a tuple of them
        items = (items,)
    return [parse_pair(p) if isinstance(p, str) else (str(p[0]), str(p[1])) for p in items]


class _StopForward(Exception):
    """Raised by a hook once every paired layer has produced its output."""


def _stop_when_complete(hooks: FeatureHooks, count: int):
    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if len(hooks.features) >= count:
            raise _StopForward

    return hook


def _run_until_stopped(model: nn.Module, inputs: torch.Tensor) -> None:
    with contextlib.suppress(_StopForward):
        model(inputs)


class _StudentWithLosses(nn.Module):
    """The module ``fit`` trains: the student plus the losses' learned parts (hint regressors), so the optimizer
    updates them, checkpoints save them and DDP synchronises their gradients. Its forward computes the whole
    weighted loss. The teacher is kept outside the module tree: it is never trained, saved, or put in train mode."""

    def __init__(self, student: nn.Module, losses: list[DistillLoss], weights: list[float], teacher: nn.Module,
                 student_layers: list[str], teacher_layers: list[str]) -> None:
        super().__init__()
        self.student = student
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)
        self._teacher = (teacher,)
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        self.needs_teacher_logits = any(loss.uses_teacher_logits for loss in losses)
        self.needs_teacher_features = any(loss.uses_features for loss in losses)
        self.student_hooks: FeatureHooks | None = None
        self.teacher_hooks: FeatureHooks | None = None
        self.stop_after_features = False
        self._stop_handles: list = []
        self.last_terms: dict[str, float] = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def attach(self) -> None:
        self.student_hooks = FeatureHooks(self.student, self.student_layers, "student")
        self.teacher_hooks = FeatureHooks(self.teacher, self.teacher_layers, "teacher")
        if self.stop_after_features:
            # Registered after the capturing hooks, so a layer's output is stored before the forward is cut short.
            for model, names, hooks in ((self.student, self.student_layers, self.student_hooks),
                                        (self.teacher, self.teacher_layers, self.teacher_hooks)):
                for module in resolve_layers(model, names).values():
                    self._stop_handles.append(module.register_forward_hook(_stop_when_complete(hooks, len(names))))

    def detach_hooks(self) -> None:
        for hooks in (self.student_hooks, self.teacher_hooks):
            if hooks is not None:
                hooks.remove()
        for handle in self._stop_handles:
            handle.remove()
        self._stop_handles = []
        self.student_hooks = self.teacher_hooks = None

    def _features_only(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each model only up to its last paired layer (stage-wise reconstruction trains nothing after it)."""
        with torch.no_grad():
            _run_until_stopped(self.teacher, inputs)
        _run_until_stopped(self.student, inputs)
        assert self.student_hooks is not None and self.teacher_hooks is not None
        placeholder = inputs.new_zeros(inputs.shape[0])  # 1-D: fit then reports no training accuracy
        batch = DistillBatch(placeholder, targets, None, self.student_hooks.features, self.teacher_hooks.features)
        return self._weighted_sum(batch), placeholder

    def _weighted_sum(self, batch: DistillBatch) -> torch.Tensor:
        total = batch.student_logits.new_zeros(())
        terms: dict[str, float] = {}
        for loss, weight in zip(self.losses, self.weights):
            value = loss.compute(batch)
            name = loss.loss_name if loss.loss_name not in terms else f"{loss.loss_name}#{len(terms) + 1}"
            terms[name] = float(value.detach())
            total = total + weight * value
        self.last_terms = terms
        return total

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """``(weighted loss, student logits)``; without targets just the student's output (so ``fit`` can run
        its validation pass on this module)."""
        if targets is None:
            return self.student(inputs)
        if self.student_hooks is None or self.teacher_hooks is None:
            raise RuntimeError("distiller hooks are not attached: train through Distiller.fit")
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        if self.stop_after_features:
            return self._features_only(inputs, targets)
        if self.needs_teacher_features or (self.needs_teacher_logits and teacher_logits is None):
            with torch.no_grad():
                computed = output_logits(self.teacher(inputs))
            teacher_logits = computed if teacher_logits is None else teacher_logits
        logits = output_logits(self.student(inputs))
        batch = DistillBatch(logits, targets, teacher_logits, self.student_hooks.features,
                             self.teacher_hooks.features)
        return self._weighted_sum(batch), logits


class Distiller:
    """Holds a distillation run's state: the teacher (frozen, eval mode), the student (trained in place), the
    losses with their learned parts, and the layer hooks (attached only while training).

    Everything is checked before training (:meth:`check`): layer names exist, paired feature shapes suit each
    loss, teacher and student predict the same number of classes.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, config: DistillConfig = DistillConfig(), *,
                 stop_after_features: bool = False) -> None:
        """``stop_after_features`` (feature losses only) cuts both forwards short after the last paired layer;
        the student's later layers then get no gradient, so freeze them (stage-wise reconstruction does)."""
        self.teacher, self.student, self.config = teacher, student, config
        self.specs = _specs(config)
        default_pairs = _pairs(config.pairs)
        self.loss_pairs = [list(_pairs(s.pairs)) if s.pairs is not None else default_pairs for s in self.specs]
        self.losses = [s.build() for s in self.specs]
        student_layers = sorted({s for pairs, loss in zip(self.loss_pairs, self.losses) if loss.uses_features
                                 for s, _ in pairs})
        teacher_layers = sorted({t for pairs, loss in zip(self.loss_pairs, self.losses) if loss.uses_features
                                 for _, t in pairs})
        resolve_layers(student, student_layers, "student")
        resolve_layers(teacher, teacher_layers, "teacher")
        self.net = _StudentWithLosses(student, self.losses, [s.weight for s in self.specs], teacher,
                                      student_layers, teacher_layers)
        if config.cache_teacher and self.net.needs_teacher_features:
            raise ConfigError("cache_teacher stores the teacher's logits only, but a feature loss needs the teacher's "
                              "features every batch: pass cache_teacher=False")
        if stop_after_features:
            if any(loss.uses_targets or loss.uses_teacher_logits or not loss.uses_features for loss in self.losses):
                raise ConfigError("stop_after_features needs feature losses only (hint, mimic, at)")
            self.net.stop_after_features = True
        self.cache: TeacherCache | None = None
        self._checked = False

    def check(self, example_inputs: torch.Tensor) -> None:
        """Run both models once on ``example_inputs`` and validate the configuration against the real shapes."""
        was_training = self.student.training
        self.student.eval()
        self.teacher.eval()
        student_hooks = FeatureHooks(self.student, self.net.student_layers, "student")
        teacher_hooks = FeatureHooks(self.teacher, self.net.teacher_layers, "teacher")
        try:
            with torch.no_grad():
                s_out = output_logits(self.student(example_inputs))
                t_out = output_logits(self.teacher(example_inputs))
            s_shapes = {k: tuple(v.shape[1:]) for k, v in student_hooks.features.items()}
            t_shapes = {k: tuple(v.shape[1:]) for k, v in teacher_hooks.features.items()}
        finally:
            student_hooks.remove()
            teacher_hooks.remove()
            self.student.train(was_training)
        if s_out.shape[1:] != t_out.shape[1:]:
            raise ConfigError(
                f"teacher and student disagree on the output: teacher gives {tuple(t_out.shape[1:])} "
                f"(e.g. classes), student {tuple(s_out.shape[1:])}; build the student with the teacher's "
                "number of classes (e.g. num_classes=...)"
            )
        if self.net.needs_teacher_logits and s_out.dim() not in (2, 3):
            raise ConfigError(f"kd needs N×classes (or a language model's N×L×V) logits, the models give "
                              f"{tuple(s_out.shape)}")
        if self.config.cache_teacher and s_out.dim() == 3:
            raise ConfigError("cache_teacher would hold L×V teacher logits for every training sequence (a language "
                              "model's): pass cache_teacher=False")
        for loss, pairs in zip(self.losses, self.loss_pairs):
            if loss.uses_features:
                loss.setup(pairs, s_shapes, t_shapes)
        self._checked = True

    def fit(self, train_loader: Iterable, *, epochs: int | None = None, val_loader: Iterable | None = None,
            callbacks: Sequence[Callback] = ()) -> FitResult:
        """Train the student (in place) with :func:`slimkit.train.fit`; hooks are removed afterwards, even on error.
        A student carrying unstructured-pruning masks keeps its pruned weights at zero."""
        config = self.config
        loader: Any = train_loader
        if not self._checked:
            inputs, _ = next(iter(train_loader))
            self.check(inputs[:2])
        if config.cache_teacher and self.net.needs_teacher_logits:
            loader = IndexedLoader(train_loader)
            if self.cache is None or len(self.cache.filled) != loader.dataset_size:
                self.cache = TeacherCache(loader.dataset_size)
        channel = loader.channel if isinstance(loader, IndexedLoader) else None
        cache, teacher = self.cache, self.teacher

        def step(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
            cached = None
            if channel is not None and cache is not None:
                assert channel.indices is not None
                cached = cache.get(channel.indices, inputs, lambda x: output_logits(teacher(x)))
            return net(inputs, targets, cached)

        from slimkit.prune import holding_masks

        # an unstructured-pruned student (prune_unstructured, Deep Compression's rounds) keeps its zeros, as
        # fine-tuning does; without this a distillation regrew them silently
        callbacks = holding_masks(self.student, callbacks)
        teacher_was_training = self.teacher.training
        self.teacher.eval()
        self.net.attach()
        try:
            return fit(
                self.net, loader, **{**config.fit_options(), "epochs": config.epochs if epochs is None else epochs},
                callbacks=callbacks, checkpoint_dir=config.checkpoint_dir, resume=config.resume,
                val_loader=val_loader, step=step,
            )
        finally:
            self.net.detach_hooks()
            self.teacher.train(teacher_was_training)

    def loss_terms(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Each loss's value (unweighted) and the weighted ``total`` on one batch, without training (eval mode)."""
        if not self._checked:
            self.check(inputs[:2])
        was_training, teacher_was_training = self.student.training, self.teacher.training
        self.student.eval()
        self.teacher.eval()
        self.net.attach()
        try:
            with torch.no_grad():
                total, _ = self.net(inputs, targets)
        finally:
            self.net.detach_hooks()
            self.student.train(was_training)
            self.teacher.train(teacher_was_training)
        return {**self.net.last_terms, "total": float(total)}


def distill(teacher: nn.Module, student: nn.Module, train_loader: Iterable,
            config: DistillConfig = DistillConfig()) -> nn.Module:
    """Distil ``teacher`` into a copy of ``student`` and return the trained copy (the arguments are untouched,
    except that the teacher is used in eval mode and restored). See :class:`DistillConfig`."""
    distiller = Distiller(teacher, copy.deepcopy(student), config)
    distiller.fit(train_loader)
    return distiller.student.eval()
