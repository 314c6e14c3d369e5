"""Capturing intermediate features by module name with forward hooks, and resolving names with helpful errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

from slimkit._errors import ConfigError


def resolve_layers(model: nn.Module, names: Iterable[str], role: str = "model") -> dict[str, nn.Module]:
    """``{name: module}`` for each fully-qualified module name; an unknown name lists the closest existing names."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
                f"its top-level modules are {', '.join(n for n in modules if n and '.' not in n)}")
            raise ConfigError(f"{role} ({type(model).__name__}) has no layer named '{name}': {hint}")
        found[name] = modules[name]
    return found


class FeatureHooks:
    """Forward hooks that store the outputs of the named layers in ``features`` (cleared with :meth:`clear`); a layer
    returning a tuple (a transformer block: hidden states first) contributes its first element.

    Features keep their autograd graph, so a loss on a student feature trains the layers below it. Use as a
    context manager, or call :meth:`remove`; afterwards the model carries no hook of ours.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name, module in resolve_layers(model, list(dict.fromkeys(names)), role).items():
            self._handles.append(module.register_forward_hook(self._make_hook(name, role)))

    def _make_hook(self, name: str, role: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
                output = output[0]  # a transformer block's (hidden_states, attention weights, ...)
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"{role} layer '{name}' returns a {type(output).__name__}, not a tensor: pair a layer whose "
                    "output is a feature tensor (or a tuple starting with one, as transformer blocks return)"
                )
            self.features[name] = output

        return hook

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def parse_pair(text: str) -> tuple[str, str]:
    """``"student_layer=teacher_layer"`` → ``(student_layer, teacher_layer)``.

    The optional markers ``s.`` and ``t.`` (``s.layer1=t.layer1``) are accepted and dropped when both sides carry them.
    """
    if text.count("=") != 1:
        raise ConfigError(f"layer pair '{text}' must be STUDENT_LAYER=TEACHER_LAYER, e.g. layer1=layer1")
    student, teacher = (part.strip() for part in text.split("="))
    if student.startswith("s.") and teacher.startswith("t."):
        student, teacher = student[2:], teacher[2:]
    if not student or not teacher:
        raise ConfigError(f"layer pair '{text}' has an empty side: write STUDENT_LAYER=TEACHER_LAYER")
    return student, teacher
