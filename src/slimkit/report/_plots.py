"""Plots of a compression run (PNG, matplotlib without pyplot so no GUI backend or global state is touched).

``plot_tradeoff``: accuracy against a cost (MACs, bytes, measured latency ratio) for every stage or variant, with
the Pareto front drawn as a step line. ``plot_layers``: per-layer parameters and MACs before and after.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write
from slimkit.report._pareto import pareto_front

#: cost key → axis label; the latency axis is a ratio to the input model measured in the same run
COSTS = {
    "macs": "MACs per sample",
    "bytes": "model bytes",
    "latency_ratio": "ONNX Runtime latency as a fraction of the input model's (same run)",
}
#: quality key → axis words
QUALITIES = {"accuracy": "test accuracy", "valid_accuracy": "validation accuracy", "miou": "mean IoU"}


def _label(row: dict[str, Any]) -> str:
    return str(row.get("label") or row.get("stage") or row.get("name") or "?")


#: where a point's label may go, in points from the point, tried in this order (near first, then farther out)
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4) for dx, dy in ((6, 5), (6, -11), (-6, 5), (-6, -11), (0, 9),
                                                                  (0, -15), (10, -3), (-10, -3))]


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> list[Any]:
    """Annotate each point with its label where it overlaps no other label and no point (greedy over candidate
    offsets in display space; a leader line joins a label placed away from its point). Returns the texts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    taken: list[Any] = []
    texts = []
    # labels of crowded points first, so they get the nearest free places
    order = sorted(range(len(labels)), key=lambda i: -sum(abs(points[i][0] - p[0]) + abs(points[i][1] - p[1]) < 40
                                                          for p in points))
    for i in order:
        chosen = None
        for dx, dy in _OFFSETS:
            text = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                               ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            clash = any(box.overlaps(other) for other in taken) or any(
                box.contains(px, py) for j, (px, py) in enumerate(points) if j != i)
            if not clash:
                chosen = (text, box, (dx, dy))
                break
            text.remove()
        if chosen is None:  # nowhere free: the farthest place, so at least it does not cover its neighbours' points
            dx, dy = _OFFSETS[-1]
            text = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy), fontsize=7)
            chosen = (text, text.get_window_extent(renderer), (dx, dy))
        text, box, (dx, dy) = chosen
        if abs(dx) > 12 or abs(dy) > 15:
            ax.annotate("", (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
        taken.append(box)
        texts.append(text)
    return texts


def _save(fig: Any, path: str | os.PathLike) -> Path:
    target = Path(path)
    with atomic_write(target, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    return target


def plot_tradeoff(rows: Sequence[dict[str, Any]], cost: str, path: str | os.PathLike, *,
                  quality: str = "accuracy", title: str | None = None, xlabel: str | None = None) -> Path | None:
    """Scatter ``quality`` against ``cost`` for ``rows`` with the Pareto front; None if no row has both values.
    ``xlabel``: the cost axis' label (default :data:`COSTS`' words for it)."""
    from matplotlib.figure import Figure

    usable = [r for r in rows if r.get(cost) is not None and r.get(quality) is not None]
    if not usable:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    xs = [float(r[cost]) for r in usable]
    ys = [100 * float(r[quality]) for r in usable]
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    front = pareto_front(usable, cost, quality)
    if front:
        fx = [xs[i] for i in front]
        fy = [ys[i] for i in front]
        ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, label="Pareto front", zorder=2)
        ax.scatter(fx, fy, facecolors="none", edgecolors="tab:red", s=90, zorder=4)
        ax.legend(loc="lower right", fontsize=8)
    if cost in {"macs", "bytes"} and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or COSTS.get(cost, cost))
    ax.set_ylabel(f"{QUALITIES.get(quality, quality)} (%)")
    ax.set_title(title or f"{QUALITIES.get(quality, quality)} vs {xlabel or COSTS.get(cost, cost)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.15)  # room for labels at the edges
    place_labels(ax, xs, ys, [_label(r) for r in usable])
    return _save(fig, path)


def plot_layers(before: dict[str, Any], after: dict[str, Any], path: str | os.PathLike, *,
                title: str = "per-layer parameters and MACs") -> Path | None:
    """Side-by-side bars of each layer's params and MACs in two profiles (``ModelProfile.to_dict()`` payloads).

    Layers are matched by name; a layer that exists on one side only (replaced by a rewrite) shows a zero bar on
    the other. None if neither profile has a layer with parameters or MACs.
    """
    from matplotlib.figure import Figure

    def table(profile: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {r["name"]: (int(r["params"]), int(r["macs"])) for r in profile.get("rows", [])
                if r.get("params") or r.get("macs")}

    b, a = table(before), table(after)
    names = list(dict.fromkeys([*b, *a]))
    if not names:
        return None
    fig = Figure(figsize=(max(6.4, 0.45 * len(names) + 2), 6.4))
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.4
    positions = list(range(len(names)))
    for ax, k, what in ((axes[0], 0, "parameters"), (axes[1], 1, "MACs per sample")):
        ax.bar([p - width / 2 for p in positions], [b.get(n, (0, 0))[k] for n in names], width, label="before")
        ax.bar([p + width / 2 for p in positions], [a.get(n, (0, 0))[k] for n in names], width, label="after")
        ax.set_ylabel(what)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[1].set_xticks(positions)
    axes[1].set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    return _save(fig, path)
