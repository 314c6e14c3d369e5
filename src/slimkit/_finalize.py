"""``slimkit.finalize(model)``: make a model that was prepared for training final, whatever it carries.

Several techniques split into prepare → train → finalize (as ``torch.nn.utils.prune`` does): magnitude pruning
attaches masks (``slimkit.prune.finalize`` bakes them in), weight clustering swaps layers for
codebook layers (``slimkit.share.finalize_clusters`` turns them back into ordinary ones), QAT trains fake-quant
with moving or learned scales (``slimkit.quantize.convert_qat`` freezes them). Each family registers its finalizer
here with a test of whether a model carries its state, so this foundation imports no technique package (the
layers contract in ``pyproject.toml``): a model can only carry a family's state if that family was imported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimkit._registry import Registry

if TYPE_CHECKING:  # `import slimkit` does not import torch
    from torch import nn


@dataclass(frozen=True)
class Finalizer:
    """``applies(model)`` says whether ``model`` carries this family's training state; ``run(model)`` returns a
    final copy. ``order`` sequences families on one model (masks are baked before layers are replaced)."""

    applies: Callable[[nn.Module], bool]
    run: Callable[[nn.Module], nn.Module]
    order: int


FINALIZERS: Registry[Finalizer] = Registry("finalizer")


def register_finalizer(name: str, applies: Callable[[nn.Module], bool], order: int
                       ) -> Callable[[Callable[[nn.Module], nn.Module]], Callable[[nn.Module], nn.Module]]:
    """Decorator registering ``run`` (model → final copy) as the finalizer ``name``."""

    def decorator(run: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        FINALIZERS.register(name)(Finalizer(applies, run, order))
        return run

    return decorator


def finalizers_for(model: nn.Module) -> list[str]:
    """The names of the finalizers :func:`finalize` would run on ``model``, in the order it runs them."""
    return [name for name in sorted(FINALIZERS, key=lambda n: FINALIZERS.get(n).order)
            if FINALIZERS.get(name).applies(model)]


def finalize(model: nn.Module) -> nn.Module:
    """A final copy of ``model``: pruning masks baked into the weights, clustered layers turned back into ordinary
    ones, QAT scales frozen (each only if the model carries it). The caller's model is untouched; a model carrying
    none of these comes back as a plain copy."""
    out = model
    for name in finalizers_for(model):
        out = FINALIZERS.get(name).run(out)
    return copy.deepcopy(model) if out is model else out
