"""Weight sharing by k-means clustering (Han et al. 2016, "Deep Compression", Sec. 3).

Each chosen layer's non-zero weights are clustered into ``k = 2**bits`` groups; the layer is replaced by a
:class:`ClusteredLayer` that stores the codebook (``k`` float32 centroids, trainable) and one integer index per
weight, and materialises ``weight = codebook[indices]`` on every forward. Pruned (zero) weights are not clustered:
their index is the extra symbol ``k`` that always maps to 0, so they stay exactly zero through fine-tuning.

Because the weight is a gather from the codebook, each centroid's gradient is the sum of the gradients of the
weights that share it (Han et al. 2016, Eq. 3), and the weights stay tied by construction after any optimizer step.
That sum is taken in a fixed order (:class:`_CodebookGather`): PyTorch's own backward of a gather accumulates with
several threads in whatever order they meet, so two fine-tunes of the same clustered model drifted apart and a
recipe did not reproduce its own accuracy.

``centroid_gradient="mean"`` divides each sum by the number of weights sharing the centroid: a centroid then steps
like one average weight, so one learning rate suits a centroid of ten weights and one of thousands. With the sum,
LeNet-5 clustered at 3 bits (conv2 and fc1 unpruned, about 3,000 weights per centroid; 99.00 % on validation)
collapsed to 10.64 % in one epoch of SGD at lr 0.005 (training loss 1e6); with the mean it ended at 99.03 %.
The setting lives on the layer, not in the container file: a model loaded with :func:`load_compressed` fine-tunes
by the sum unless its layers' ``centroid_gradient`` is set.
:func:`finalize_clusters` turns the layers back into ordinary ``nn.Linear``/``nn.Conv2d`` for ONNX export.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit._finalize import register_finalizer
from slimkit._select import matches, select_names
from slimkit.analysis import register_counter
from slimkit.share._kmeans import CENTROID_INITS, kmeans_1d

CONV_ARGS = ("stride", "padding", "dilation", "groups")


def index_width(symbols: int) -> int:
    """Bits of a fixed-width index that can name ``symbols`` distinct values (at least 1)."""
    return max(1, math.ceil(math.log2(max(symbols, 2))))


def _decoded(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``[*codebook, 0][indices]``: the weight a codebook and its indices stand for."""
    return torch.cat([codebook, codebook.new_zeros(1)])[indices]


class _CodebookGather(torch.autograd.Function):
    """``[*codebook, 0][indices]``, whose backward sums each centroid's gradients serially, in index order
    (``index_add_`` on a 1-D CPU tensor), so fine-tuning gives the same weights bit for bit at any thread count;
    with ``mean``, each sum is divided by the number of weights sharing the centroid."""

    @staticmethod
    def forward(ctx: Any, codebook: torch.Tensor, indices: torch.Tensor, mean: bool = False) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.clusters = codebook.numel()
        ctx.mean = mean
        return _decoded(codebook, indices)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        indices, = ctx.saved_tensors
        flat = indices.reshape(-1)
        sums = grad.new_zeros(ctx.clusters + 1).index_add_(0, flat, grad.reshape(-1))[:ctx.clusters]
        if ctx.mean:
            sums = sums / torch.bincount(flat, minlength=ctx.clusters + 1)[:ctx.clusters].clamp_min(1)
        return sums, None, None


class ClusteredLayer(nn.Module):
    """A Linear or Conv2d whose weight is ``codebook[indices]`` (index ``len(codebook)`` means a pruned zero).

    ``bits`` is the width of a cluster index and ``index_bits`` the width of a relative sparse index in the
    compressed file (Han et al. 2016: 8 for conv, 5 for fc layers). ``centroid_gradient``: ``sum`` (Han et al.
    2016, Eq. 3) or ``mean`` (the sum over the weights sharing a centroid divided by their number; see the module
    docstring).
    """

    def __init__(self, kind: str, codebook: torch.Tensor, indices: torch.Tensor, bias: torch.Tensor | None,
                 conv: Mapping[str, Any] | None = None, bits: int | None = None, index_bits: int | None = None,
                 centroid_gradient: str = "sum"):
        super().__init__()
        if kind not in ("linear", "conv2d"):
            raise ConfigError(f"clustered layer kind '{kind}' is not supported: use 'linear' or 'conv2d'")
        _check_centroid_gradient(centroid_gradient)
        self.kind = kind
        self.centroid_gradient = centroid_gradient
        self.conv = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in (conv or {}).items()}
        self.codebook = nn.Parameter(codebook.detach().to(torch.float32).clone())
        self.register_buffer("indices", indices.detach().to(torch.long).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        k = self.codebook.numel()
        self.bits = bits if bits is not None else index_width(k)
        self.index_bits = index_bits if index_bits is not None else (5 if kind == "linear" else 8)

    @property
    def zero_symbol(self) -> int:
        return self.codebook.numel()

    @property
    def weight(self) -> torch.Tensor:
        if torch.is_grad_enabled() and self.codebook.requires_grad:
            return _CodebookGather.apply(self.codebook, self.indices, self.centroid_gradient == "mean")
        return _decoded(self.codebook, self.indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, **self.conv)

    def slimkit_storage_bytes(self, dtype_bits: int) -> int:
        """Bytes before Huffman coding: the smaller of relative-index storage ((bits + index_bits) per stored entry,
        fillers included; Han et al. 2016, Sec. 2–3) and every entry's cluster index packed densely (the zero
        symbol included when the layer is pruned), plus the float32 codebook and the bias at ``dtype_bits``."""
        from slimkit.prune import relative_index_bytes

        mask = self.indices != self.zero_symbol
        symbols = self.codebook.numel() + (0 if bool(mask.all()) else 1)
        dense = math.ceil(self.indices.numel() * index_width(symbols) / 8)
        bias = 0 if self.bias is None else self.bias.numel() * dtype_bits // 8
        return min(dense, relative_index_bytes(mask, self.bits, self.index_bits)) + 4 * self.codebook.numel() + bias

    def slimkit_param_count(self) -> tuple[int, int]:
        """(weights this layer represents, of which pruned to zero), bias included: clustering shares values, it
        does not remove weights, so the profile counts the logical weights rather than the codebook's entries."""
        bias = 0 if self.bias is None else self.bias.numel()
        zeros = int((self.indices == self.zero_symbol).sum())
        if self.bias is not None:
            zeros += int((self.bias == 0).sum())
        return self.indices.numel() + bias, zeros

    def to_dense(self) -> nn.Module:
        """The ordinary layer with the materialised weight."""
        w = self.weight.detach()
        if self.kind == "linear":
            layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
        else:
            layer = nn.Conv2d(w.shape[1] * self.conv.get("groups", 1), w.shape[0], tuple(w.shape[2:]),
                              bias=self.bias is not None, **self.conv)
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias.detach())
        return layer

    def extra_repr(self) -> str:
        return (f"{self.kind}, weight={tuple(self.indices.shape)}, clusters={self.codebook.numel()}, "
                f"bits={self.bits}, index_bits={self.index_bits}"
                + (f", centroid_gradient={self.centroid_gradient}" if self.centroid_gradient != "sum" else ""))


@register_counter(ClusteredLayer)
def _count_clustered(module: ClusteredLayer, inputs: tuple, output: torch.Tensor) -> tuple[int, int]:
    # one multiply-accumulate per weight of the receptive field, per output element (as for Linear/Conv2d)
    return output.numel() * module.indices[0].numel(), 0


@dataclass(frozen=True)
class ClusterConfig:
    """How to cluster. ``bits`` (k = 2**bits) or ``n_clusters``, each one value or ``{pattern: value}``; when neither
    names a layer, conv layers get ``conv_bits`` and fc layers ``fc_bits`` (8 and 5, as Han et al. 2016 Table 1).
    ``init`` is ``linear`` (the paper's best), ``density`` or ``random``; ``conv_index_bits``/``fc_index_bits``
    are the relative sparse index widths in the compressed file (8 conv, 5 fc, as the paper). ``centroid_gradient``
    is how fine-tuning moves a centroid: ``sum`` (the paper's Eq. 3) or ``mean`` (stable at any cluster size: see
    :mod:`slimkit.share._clustered`).
    """

    bits: int | Mapping[str, int] | None = None
    n_clusters: int | Mapping[str, int] | None = None
    conv_bits: int = 8
    fc_bits: int = 5
    init: str = "linear"
    layers: str | Sequence[str] | None = None
    skip: str | Sequence[str] | None = ()
    conv_index_bits: int = 8
    fc_index_bits: int = 5
    max_iter: int = 100
    seed: int = 0
    centroid_gradient: str = "sum"

    def __post_init__(self) -> None:
        _check_centroid_gradient(self.centroid_gradient)
        if self.bits is not None and self.n_clusters is not None:
            raise ConfigError("give either bits or n_clusters for weight clustering, not both")
        CENTROID_INITS.get(self.init)
        for what, value in [*_items("bits", self.bits), ("conv_bits", self.conv_bits), ("fc_bits", self.fc_bits)]:
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise ConfigError(f"{what} {value!r} is out of range: use an integer in [1, 16]")
        for what, value in _items("n_clusters", self.n_clusters):
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ConfigError(f"{what} {value!r} is out of range: use an integer in [1, 65535]")
        for what, value in (("conv_index_bits", self.conv_index_bits), ("fc_index_bits", self.fc_index_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
                raise ConfigError(f"{what} {value!r} is out of range: use an integer in [1, 16]")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or not 1 <= self.max_iter <= 100_000:
            raise ConfigError(f"max_iter {self.max_iter!r} is out of range: use an integer in [1, 100000] (k-means "
                              "iterations)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} must be a whole number ≥ 0")


CENTROID_GRADIENTS = ("sum", "mean")


def _check_centroid_gradient(value: Any) -> None:
    if value not in CENTROID_GRADIENTS:
        raise ConfigError(f"centroid_gradient {value!r} is unknown: use 'sum' (Han et al. 2016, Eq. 3) or 'mean' "
                          "(divided by the weights sharing each centroid)")


def _items(what: str, value: Any) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [(f"{what}['{k}']", v) for k, v in value.items()]
    return [(what, value)]


def _lookup(value: Any, name: str) -> Any:
    if value is None or not isinstance(value, Mapping):
        return value
    return next((v for pattern, v in value.items() if matches(name, pattern)), None)


def clusterable_layers(model: nn.Module) -> list[str]:
    """Layers weight clustering can replace: Linear and zero-padded Conv2d."""
    return [name for name, m in model.named_modules() if name and (
        isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros"))]


def clusters_for(config: ClusterConfig, name: str, module: nn.Module) -> int:
    """The number of clusters for one layer under ``config``."""
    n = _lookup(config.n_clusters, name)
    if n is not None:
        return int(n)
    bits = _lookup(config.bits, name)
    if bits is None:
        bits = config.fc_bits if isinstance(module, nn.Linear) else config.conv_bits
    return 2 ** int(bits)


def cluster_layer(module: nn.Module, k: int, config: ClusterConfig) -> ClusteredLayer:
    """Cluster one Linear/Conv2d's non-zero weights into ``k`` shared values."""
    weight = module.weight.detach().cpu()
    flat = weight.flatten().numpy()
    nonzero = flat != 0
    if not nonzero.any():
        centroids, labels = np.zeros(1), np.zeros(0, dtype=np.int64)
    else:
        centroids, labels = kmeans_1d(flat[nonzero], k, config.init, config.max_iter, config.seed)
    indices = np.full(flat.shape, len(centroids), dtype=np.int64)
    indices[nonzero] = labels
    linear = isinstance(module, nn.Linear)
    conv = None if linear else {a: getattr(module, a) for a in CONV_ARGS}
    return ClusteredLayer(
        "linear" if linear else "conv2d", torch.from_numpy(centroids.astype(np.float32)),
        torch.from_numpy(indices).view(weight.shape), module.bias, conv,
        bits=index_width(k), index_bits=config.fc_index_bits if linear else config.conv_index_bits,
        centroid_gradient=config.centroid_gradient)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def layers_to_cluster(model: nn.Module, config: ClusterConfig) -> list[str]:
    """The layers ``config`` clusters in ``model``; a name (in ``layers``, ``skip``, or a per-layer ``bits`` /
    ``n_clusters`` mapping) that is not a clusterable layer is a :class:`ConfigError` before any work."""
    candidates = clusterable_layers(model)
    names = select_names(candidates, config.layers, config.skip)
    for mapping in (config.bits, config.n_clusters):
        if isinstance(mapping, Mapping):
            select_names(candidates, list(mapping))
    return names


def cluster_weights(model: nn.Module, example_inputs: Any, config: ClusterConfig | None = None, *,
                    data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` whose chosen Linear/Conv2d layers share ``k`` weights each (Han et al. 2016).

    Zero weights (from pruning) stay zero and are not clustered. Fine-tune the copy with ordinary ``fit``: only the
    centroids (and biases, and unclustered layers) train, and every weight always equals its centroid.
    ``example_inputs`` and ``data`` are accepted for the common technique shape and not used (k-means runs on the
    weights alone; pass ``None``).
    """
    config = config or ClusterConfig()
    names = layers_to_cluster(model, config)
    out = copy.deepcopy(model)
    for name in names:
        module = out.get_submodule(name)
        set_submodule(out, name, cluster_layer(module, clusters_for(config, name, module), config))
    return out


@register_finalizer("clusters", applies=lambda model: bool(clustered_layers(model)), order=1)
def finalize_clusters(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`ClusteredLayer` replaced by the ordinary layer it computes (what
    :func:`slimkit.finalize` does to a clustered model)."""
    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, ClusteredLayer):
            set_submodule(out, name, module.to_dense())
    return out


def clustered_layers(model: nn.Module) -> dict[str, ClusteredLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ClusteredLayer)}
