"""Quantization-aware training: the fake-quant model trains with the straight-through estimator (Jacob et al. 2018)
or learned step sizes (LSQ, Esser et al. 2020), then :func:`convert_qat` freezes it into the same form PTQ produces.

prepare → train (``slimkit.train.fit``) → convert, the split torch.nn.utils.prune uses for masks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from slimkit._finalize import register_finalizer
from slimkit.quantize._fake_quant import FakeQuantize
from slimkit.quantize._ptq import QuantConfig, calibrate_, check_folding, check_loader, freeze_, prepare, wrappers


def quantize_qat(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    config: QuantConfig | None = None,
    *,
    data: Iterable | None = None,
) -> nn.Module:
    """A new model in train mode with fake quantization on, ready for ``fit``; :func:`slimkit.finalize` (or
    :func:`convert_qat`) freezes it after training.

    BatchNorm is folded first (its statistics stay frozen during fine-tuning, Krishnamoorthi 2018 §3.2 recommends
    freezing them late in QAT anyway). Activation ranges start from a calibration pass over ``data``; weight ranges
    follow the weights every step (per-channel min/max), or are learned when ``config.lsq``.
    """
    config = config or QuantConfig()
    check_loader(data, "calibration data for QAT (data=)")
    qmodel, report = prepare(model, config, dynamic_weights=True, example_inputs=example_inputs)
    check_folding(model, qmodel, example_inputs)
    report.calibration_batches = calibrate_(qmodel, data)
    freeze_(qmodel)
    return qmodel.train()


def _training_quantizers(model: nn.Module) -> bool:
    """Whether any fake quantizer still observes, recomputes its scale each step or learns it (a QAT model)."""
    return any(isinstance(m, FakeQuantize) and (m.observing or m.dynamic or m.learnable) for m in model.modules())


@register_finalizer("qat", applies=_training_quantizers, order=2)
def convert_qat(model: nn.Module) -> nn.Module:
    """A frozen copy of a QAT model (eval mode): learned or per-step scales become constants, the observers stop
    (what :func:`slimkit.finalize` does to a QAT model)."""
    model = copy.deepcopy(model).eval()
    for wrapper in wrappers(model).values():
        quant = wrapper.weight_quant
        if quant.dynamic:
            quant.fix_()
            quant.observer = type(quant.observer)(quant.spec)
            with torch.no_grad():
                quant.observer.update(wrapper.layer.weight)
            quant.freeze_()
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.fix_()
            module.observing = False
    return model
