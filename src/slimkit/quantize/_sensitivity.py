"""Mixed precision by sensitivity: quantize one layer at a time, measure how much the output moves, and keep the
most sensitive layers in float (the per-layer sweep of Wu et al. 2020, "Integer quantization for deep learning
inference", §5.2 / HAWQ-style selection by a cheap proxy)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from slimkit.quantize._ptq import _batches, wrappers


def layer_sensitivity(model: nn.Module, loader: Iterable, max_batches: int = 4) -> dict[str, float]:
    """For each enabled quantized layer of a frozen quantized ``model``: the output error when only that layer is
    quantized, ``‖f_q(x) - f(x)‖² / ‖f(x)‖²`` over up to ``max_batches`` batches of ``loader`` (higher = more
    sensitive). The model's enabled flags are restored afterwards."""
    targets = {n: w for n, w in wrappers(model).items() if w.enabled}
    inputs = list(itertools.islice(_batches(loader), max_batches))
    model.eval()
    with torch.no_grad():
        for w in targets.values():
            w.enabled = False
        reference = [model(x) for x in inputs]
        norm = sum(float(r.double().pow(2).sum()) for r in reference) or 1.0
        scores = {}
        try:
            for name, wrapper in targets.items():
                wrapper.enabled = True
                err = sum(float((model(x) - r).double().pow(2).sum()) for x, r in zip(inputs, reference))
                scores[name] = err / norm
                wrapper.enabled = False
        finally:
            for w in targets.values():
                w.enabled = True
    return scores


def keep_sensitive_(model: nn.Module, loader: Iterable, count: int) -> list[str]:
    """Disable quantization (back to float) of the ``count`` most sensitive layers; recorded in the quant report."""
    scores = layer_sensitivity(model, loader)
    chosen = sorted(scores, key=scores.get, reverse=True)[:count]
    all_wrappers = wrappers(model)
    report = getattr(model, "slimkit_quant_report", None)
    for name in chosen:
        all_wrappers[name].enabled = False
        if report is not None:
            report.quantized.remove(name)
            report.float_layers[name] = f"kept in float: sensitivity {scores[name]:.3g}"
    if report is not None:
        report.sensitivity = scores
    return chosen
