"""Sensitivity analysis (Li et al. 2017, §4.1 and Fig. 2): prune each layer alone over a sweep of ratios and
evaluate, then turn the table plus a global target into per-layer ratios (prune robust layers harder)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.graph import dependency_graph
from slimkit.prune._config import PruneConfig
from slimkit.prune._structured import prune_channels


@dataclass
class SensitivityResult:
    """``table[layer][ratio]`` = metric after pruning only that layer's group by ``ratio`` (no fine-tuning)."""

    baseline: float
    table: dict[str, dict[float, float]]
    sizes: dict[str, int] = field(default_factory=dict)  # prunable units per layer group
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "metric": self.metric, "sizes": self.sizes,
                "table": {k: {str(r): v for r, v in row.items()} for k, row in self.table.items()}}

    def to_markdown(self) -> str:
        ratios = sorted({r for row in self.table.values() for r in row})
        lines = ["| layer | units | " + " | ".join(f"{r:.0%}" for r in ratios) + " |",
                 "|---|---:|" + "---:|" * len(ratios)]
        for name, row in self.table.items():
            lines.append(f"| {name} | {self.sizes.get(name, '')} | "
                         + " | ".join(f"{row[r]:.4f}" if r in row else "" for r in ratios) + " |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of metric vs ratio, one line per layer (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from slimkit._io import atomic_write

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, row in self.table.items():
            ratios = sorted(row)
            ax.plot(ratios, [row[r] for r in ratios], marker="o", label=name)
        ax.axhline(self.baseline, color="gray", linestyle="--", label="unpruned")
        ax.set_xlabel("fraction of the layer's channels pruned")
        ax.set_ylabel(self.metric)
        ax.set_title("pruning sensitivity (each layer alone, no fine-tuning)")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        out = Path(path)
        with atomic_write(out, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
        plt.close(fig)
        return out


def sensitivity(model: nn.Module, example_inputs: torch.Tensor, loader: Iterable, *,
                ratios: Sequence[float] = (0.2, 0.4, 0.6, 0.8), config: PruneConfig | None = None,
                data: Any = None, metric: str = "accuracy") -> SensitivityResult:
    """Prune each channel group alone at every ratio (criterion from ``config``, default L1) and evaluate on
    ``loader`` with :func:`slimkit.analysis.evaluate`."""
    from slimkit.analysis import evaluate

    config = (config or PruneConfig()).validate()
    for r in ratios:
        if not 0 <= r < 1:
            raise ConfigError(f"sensitivity ratio {r} is out of range: use values in [0, 1)")
    graph = dependency_graph(model, example_inputs, skip=config.skip, protect_first=config.protect_first,
                             layers=config.layers, leaf_modules=config.leaf_modules)
    sizes: dict[str, int] = {}
    for g in graph.groups:
        sizes[g.name] = sizes.get(g.name, 0) + len(g.units)

    def score(m: nn.Module) -> float:
        result = evaluate(m, loader, metric=metric)
        return float(result.miou if metric == "miou" else result.accuracy)

    baseline = score(model)
    table: dict[str, dict[float, float]] = {}
    for name in sizes:
        table[name] = {}
        for r in ratios:
            pruned = prune_channels(model, example_inputs, replace(config, ratio={name: r}), data=data)
            table[name][float(r)] = score(pruned.eval())
    return SensitivityResult(baseline, table, sizes, metric)


def ratios_from_sensitivity(result: SensitivityResult, target: float) -> dict[str, float]:
    """Per-layer ratios whose unit-weighted mean reaches ``target``: every layer gets the largest swept ratio
    whose metric drop is within a tolerance δ, with the smallest δ that reaches the target (Li et al. §4.1:
    prune sensitive layers less)."""
    if not 0 <= target < 1:
        raise ConfigError(f"target ratio {target} is out of range: use a value in [0, 1)")
    total = sum(result.sizes.get(n, 1) for n in result.table)

    def ratios_at(delta: float) -> dict[str, float]:
        out = {}
        for name, row in result.table.items():
            ok = [r for r, v in row.items() if result.baseline - v <= delta]
            out[name] = max(ok, default=0.0)
        return out

    def mean(rs: dict[str, float]) -> float:
        return sum(rs[n] * result.sizes.get(n, 1) for n in rs) / max(total, 1)

    drops = sorted({max(0.0, result.baseline - v) for row in result.table.values() for v in row.values()})
    for delta in [0.0, *drops]:
        rs = ratios_at(delta)
        if mean(rs) >= target:
            return rs
    return ratios_at(float("inf"))
