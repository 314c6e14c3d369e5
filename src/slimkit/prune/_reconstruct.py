"""Least-squares reconstruction of a pruned layer from the original model's features (the fine-tuning-free
alternative used by ThiNet §3.3 and He et al. 2017 "Channel Pruning", Eq. 1): after layer i's inputs lost channels,
fit its weights W' = argmin ‖X_pruned W'ᵀ − Y_original‖² on calibration data, layer after layer, so each layer sees
the already-reconstructed earlier ones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit._hf_layers import is_hf_conv1d
from slimkit.graph import run_model


def _capture(model: nn.Module, name: str, batches: list[torch.Tensor], want: str) -> list[torch.Tensor]:
    module = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def hook(mod, args, out):
        seen.append((args[0] if want == "in" else out).detach())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches:
                run_model(model, x)
    finally:
        handle.remove()
    return seen


def _capture_all(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda mod, args, out, name=name: seen[name].append(out.detach())) for name in names]
    try:
        with torch.no_grad():
            for x in batches:
                run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def _in_width(module: nn.Module) -> int:
    return module.weight.shape[0] if is_hf_conv1d(module) else \
        module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_width(module: nn.Module) -> int:
    return module.weight.shape[1] if is_hf_conv1d(module) else module.weight.shape[0]


def _design(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _is_linear(module):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if _is_linear(module):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def reconstruct_layer_(pruned_layer: nn.Module, x_pruned: torch.Tensor, y_original: torch.Tensor,
                       ridge: float = 1e-4, max_rows: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Refit a dense Conv2d/Linear (or Hugging Face Conv1D) in place so ``layer(x_pruned) ≈ y_original`` (ridge
    least squares). Returns (error before, error after); the new weights are kept only if the error went down."""
    a, y = _design(pruned_layer, x_pruned).double(), _targets(pruned_layer, y_original).double()
    if a.shape[0] > max_rows:
        rows = torch.as_tensor(np.random.default_rng(seed).choice(a.shape[0], max_rows, replace=False))
        a, y = a[rows], y[rows]
    weight = pruned_layer.weight.detach()
    w = (weight.T if is_hf_conv1d(pruned_layer) else weight.reshape(weight.shape[0], -1)).double()  # (out, in)
    has_bias = pruned_layer.bias is not None
    b = pruned_layer.bias.detach().double() if has_bias else torch.zeros(w.shape[0], dtype=torch.float64)
    before = float(((a @ w.T + b - y) ** 2).mean())
    design = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1) if has_bias else a
    gram = design.T @ design
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    sol = torch.linalg.solve(gram, design.T @ y)
    new_w, new_b = (sol[:-1].T, sol[-1]) if has_bias else (sol.T, None)
    after = float(((a @ new_w.T + (new_b if has_bias else 0) - y) ** 2).mean())
    if after < before:
        with torch.no_grad():
            new_w = new_w.T if is_hf_conv1d(pruned_layer) else new_w.reshape(pruned_layer.weight.shape)
            pruned_layer.weight.copy_(new_w.to(pruned_layer.weight.dtype))
            if has_bias:
                pruned_layer.bias.copy_(new_b.to(pruned_layer.bias.dtype))
        return before, after
    return before, before


def reconstruct_(pruned: nn.Module, original: nn.Module, data: Iterable, *, layers: Sequence[str] | None = None,
                 batches: int = 4, keep: dict[str, Any] | None = None, ridge: float = 1e-4) -> dict[str, tuple]:
    """Refit, in graph order, every dense Conv2d (groups=1) / Linear / Hugging Face Conv1D of ``pruned`` that lost
    input channels
    (or those named in ``layers``) to the outputs of the same layer in ``original``. ``keep`` maps layer name to
    its kept output-channel indices (default: from :func:`pruning_info`). Returns per-layer (before, after)
    mean squared errors."""
    from slimkit.prune._structured import pruning_info

    info = keep if keep is not None else (pruning_info(pruned) or {}).get("keep")
    if info is None:
        raise ConfigError("reconstruct_ needs the kept channel indices: pass a model from prune_channels or keep=...")
    if data is None:
        raise ConfigError("reconstruction needs calibration data: pass data=<loader of (inputs, targets) or of "
                          "keyword dicts>")
    xs = []
    for batch in data:
        xs.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if len(xs) >= batches:
            break
    originals = dict(original.named_modules())
    todo = []
    for name, module in pruned.named_modules():
        dense = _is_linear(module) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        if not dense or name not in originals or name not in info or (layers is not None and name not in layers):
            continue
        if layers is None and _in_width(module) == _in_width(originals[name]):
            continue
        todo.append((name, module))
    targets = _capture_all(original, [n for n, _ in todo], xs)  # one pass over the original for every layer
    report = {}
    for name, module in todo:
        out_keep = torch.as_tensor(info[name].get("out", list(range(_out_width(module)))))
        x = torch.cat(_capture(pruned, name, xs, "in"))  # after the earlier layers were refitted
        y = torch.cat(targets[name]).index_select(-1 if _is_linear(module) else 1, out_keep)
        report[name] = reconstruct_layer_(module, x, y, ridge)
    return report
