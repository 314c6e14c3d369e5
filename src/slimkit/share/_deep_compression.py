"""The Deep Compression pipeline (Han et al. 2016, Fig. 1): prune → quantize by weight sharing → Huffman code.

1. Iterative magnitude pruning with fine-tuning (Han et al. 2015): the kept fraction shrinks geometrically over
   ``prune_iterations`` rounds to the target, pruned weights held at zero by :class:`~slimkit.prune.MaskCallback`.
2. k-means weight sharing of the surviving weights (conv 8 bits, fc 5 bits by default), then fine-tuning of the
   centroids (each centroid's gradient is the sum of its weights' gradients).
3. Canonical Huffman coding of cluster indices and relative sparse indices, written to the container file by
   :func:`save_deep_compression` (the verb returns the model; writing a file is its own call), whose size is the
   compressed size reported.

Every stage is measured on the test set: accuracy, non-zero weights, storage bytes and ratio to dense float32.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._errors import ConfigError
from slimkit.analysis import evaluate
from slimkit.prune import (
    MaskCallback,
    UnstructuredConfig,
    attach_masks_,
    finalize,
    layer_sparsities,
    magnitude_masks,
    relative_index_bytes,
)
from slimkit.share._clustered import ClusterConfig, ClusteredLayer, cluster_weights, clustered_layers
from slimkit.share._container import ContainerSummary, load_compressed, save_compressed
from slimkit.train import FitConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepCompressionConfig:
    """Settings of :func:`deep_compression`. ``sparsity`` is one value or ``{layer pattern: value}`` (layers
    matched by no pattern stay dense); the other fields are fine-tuning budgets (epochs),
    learning rates (the centroids are fine-tuned with a smaller one) and the clustering."""

    sparsity: float | Mapping[str, float] = 0.92
    prune_iterations: int = 3
    prune_epochs: int = 2
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    cluster_epochs: int = 2
    lr: float = 0.01
    cluster_lr: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        UnstructuredConfig(sparsity=self.sparsity)  # validates the ratios
        if self.prune_iterations < 1 or self.prune_epochs < 0 or self.cluster_epochs < 0:
            raise ConfigError("deep compression needs prune_iterations ≥ 1 and non-negative epoch budgets "
                              f"(got {self.prune_iterations}, {self.prune_epochs}, {self.cluster_epochs})")
        if self.lr <= 0 or self.cluster_lr <= 0:
            raise ConfigError(f"learning rates must be positive (got lr={self.lr}, cluster_lr={self.cluster_lr})")


@dataclass
class DeepCompressionResult:
    """The compressed model (clustered layers), one row per stage and one per layer, and the file written."""

    model: nn.Module
    stages: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    container: ContainerSummary

    def stage_markdown(self) -> str:
        cols = ["stage", "test error %", "non-zero weights", "bytes", "ratio"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.stages:
            lines.append(f"| {r['stage']} | {100 * (1 - r['accuracy']):.2f} | {r['nonzero']:,} | {r['bytes']:,} | "
                         f"{r['ratio']:.1f}× |")
        return "\n".join(lines)

    def layer_markdown(self) -> str:
        cols = ["layer", "#weights", "weights % (P)", "weight bits (P+Q)", "weight bits (P+Q+H)",
                "index bits (P+Q)", "index bits (P+Q+H)", "compress rate (P+Q)", "compress rate (P+Q+H)"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.layers:
            lines.append(f"| {r['layer']} | {r['weights']:,} | {r['kept_pct']:.1f}% | {r['weight_bits']} | "
                         f"{r['weight_bits_huffman']:.2f} | {r['index_bits']} | {r['index_bits_huffman']:.2f} | "
                         f"{r['rate_pq']:.1%} | {r['rate_pqh']:.1%} |")
        return "\n".join(lines)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d, ClusteredLayer))}


def _nonzero(model: nn.Module) -> int:
    return sum(int((m.weight != 0).sum()) for m in _weight_layers(model).values())


def _bytes(model: nn.Module, config: ClusterConfig, value_bits: int | None) -> int:
    """Storage estimate before Huffman: sparse layers in relative-index form, everything else float32."""
    total = 0
    layers = _weight_layers(model)
    for name, p in model.named_parameters():
        owner = layers.get(name.rpartition(".")[0])
        if isinstance(owner, ClusteredLayer) or owner is None or not name.endswith("weight"):
            total += 0 if isinstance(owner, ClusteredLayer) else p.numel() * 4
            continue
        index_bits = config.fc_index_bits if isinstance(owner, nn.Linear) else config.conv_index_bits
        dense = p.numel() * 4
        total += dense if value_bits is None else min(dense, relative_index_bytes(p != 0, value_bits, index_bits))
    total += sum(m.slimkit_storage_bytes(32) for m in clustered_layers(model).values())
    return total


STAGES_ATTR = "slimkit_deep_compression"


def deep_compression(model: nn.Module, example_inputs: Any, config: DeepCompressionConfig | None = None, *,
                     data: Any = None) -> nn.Module:
    """Prune and cluster a copy of the trained ``model`` (left untouched) with fine-tuning, and return it; ``data`` is
    a DataBundle (``.train`` for fine-tuning, ``.test`` for the accuracy recorded after each stage).
    ``example_inputs`` is accepted for the common technique shape and not used (pass ``None``).

    The measured stages stay on the returned model (:func:`deep_compression_stages`); :func:`save_deep_compression`
    writes the Huffman-coded container (the third stage) and measures the file.
    """
    config = config or DeepCompressionConfig()
    layer_sparsities(model, UnstructuredConfig(config.sparsity))  # fails on unknown layer names before any work
    if data is None or not hasattr(data, "train") or not hasattr(data, "test"):
        raise ConfigError("deep compression fine-tunes and measures every stage: pass data=<a DataBundle with "
                          "train and test loaders> (slimkit.data.create_data)")
    dense_bytes = sum(p.numel() for p in model.parameters()) * 4
    stages: list[dict[str, Any]] = []

    def tune(net: nn.Module, epochs: int, lr: float, callbacks: tuple = ()) -> None:
        if epochs > 0:
            fit(net, data.train, **FitConfig(epochs=epochs, lr=lr, seed=config.seed).fit_options(), callbacks=callbacks)
        net.eval()

    stages.append(_stage_row("baseline (dense float32)", model, dense_bytes, dense_bytes, data))
    # Iterative pruning: the kept fraction (1 − s) shrinks geometrically, so each round removes the same share of
    # the surviving weights (Han et al. 2015 prune and retrain in several rounds).
    net = copy.deepcopy(model)
    target = layer_sparsities(model, UnstructuredConfig(config.sparsity))
    for i in range(1, config.prune_iterations + 1):
        round_sparsity = {n: 1 - (1 - s) ** (i / config.prune_iterations) for n, s in target.items()}
        attach_masks_(net, magnitude_masks(net, UnstructuredConfig(round_sparsity)))
        tune(net, config.prune_epochs, config.lr, (MaskCallback(),))
    net = finalize(net)
    stages.append(_stage_row(f"pruned ({config.prune_iterations}×{config.prune_epochs} epochs)", net,
                             _bytes(net, config.cluster, 32), dense_bytes, data))
    clustered = cluster_weights(net, None, config.cluster)
    stages.append(_stage_row("clustered (k-means)", clustered, _bytes(clustered, config.cluster, None), dense_bytes,
                             data))
    tune(clustered, config.cluster_epochs, config.cluster_lr)
    stages.append(_stage_row(f"centroids fine-tuned ({config.cluster_epochs} epochs)", clustered,
                             _bytes(clustered, config.cluster, None), dense_bytes, data))
    setattr(clustered, STAGES_ATTR, {"dense_bytes": dense_bytes, "stages": stages})
    return clustered


def _stage_row(stage: str, net: nn.Module, size: int, dense_bytes: int, data: Any) -> dict[str, Any]:
    acc = evaluate(net, data.test).accuracy
    log.info("deep compression %s: accuracy %.4f, %d bytes", stage, acc, size)
    return {"stage": stage, "accuracy": acc, "nonzero": _nonzero(net), "bytes": size, "ratio": dense_bytes / size}


def deep_compression_stages(model: nn.Module) -> list[dict[str, Any]]:
    """The stages :func:`deep_compression` measured on its way to ``model`` (empty for any other model): name,
    test accuracy, non-zero weights, bytes and ratio to dense float32."""
    return list((getattr(model, STAGES_ATTR, None) or {}).get("stages", []))


def save_deep_compression(model: nn.Module, path: str | Path, spec: str | None = None, *,
                          data: Any = None) -> DeepCompressionResult:
    """Write ``model`` (from :func:`deep_compression`) as a Huffman-coded container to ``path`` (Deep Compression's
    third stage) and return every stage with the file's: its bytes and, with ``data`` (``.test``), the accuracy of
    the model loaded back from it."""
    info = getattr(model, STAGES_ATTR, None)
    if info is None:
        raise ConfigError("save_deep_compression takes a model returned by deep_compression; to write any "
                          "clustered model use save_compressed")
    summary = save_compressed(model, path, spec)
    stages = list(info["stages"])
    if data is not None:
        stages.append(_stage_row("Huffman-coded container file", load_compressed(path, spec), summary.file_bytes,
                                 info["dense_bytes"], data))
    return DeepCompressionResult(model, stages, layer_rates(summary), summary)


def layer_rates(summary: ContainerSummary) -> list[dict[str, Any]]:
    """Per clustered layer of a written container, the columns of Han et al. 2016's Tables 2–3: weights, % kept
    after pruning (P), cluster-index and relative-index bits before and after Huffman coding (Q, H, averaged over
    the stored entries), and the compress rate (weight bytes / dense float32 bytes) with P+Q and with P+Q+H.
    P+Q counts fixed-width entries and the codebook; P+Q+H the coded streams, their code tables and the codebook."""
    layers = []
    for lb in summary.layers:
        dense = lb.weights * 4
        pq = (lb.stored_entries * (lb.bits + lb.index_bits) + 7) // 8 + lb.codebook
        layers.append({"layer": lb.name, "weights": lb.weights, "kept_pct": 100 * lb.nonzero / lb.weights,
                       "weight_bits": lb.bits, "index_bits": lb.index_bits,
                       "weight_bits_huffman": 8 * lb.cluster_stream / max(lb.stored_entries, 1),
                       "index_bits_huffman": 8 * lb.index_stream / max(lb.stored_entries, 1),
                       "rate_pq": pq / dense, "rate_pqh": (lb.codebook + lb.cluster_stream + lb.index_stream
                                                           + lb.tables) / dense})
    return layers

