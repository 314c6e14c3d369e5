"""The Pareto front of compression results: no other result is at least as cheap and at least as accurate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pareto_front(rows: Sequence[dict[str, Any]], cost: str, quality: str = "accuracy") -> list[int]:
    """Indices of the rows on the front of ``cost`` (lower is better) against ``quality`` (higher is better).

    A row is dominated when another row has cost ≤ and quality ≥ with at least one strict. Rows missing either
    value are ignored. The indices are returned sorted by cost, so they can be drawn as a step line.
    """
    points = [(i, float(r[cost]), float(r[quality])) for i, r in enumerate(rows)
              if r.get(cost) is not None and r.get(quality) is not None]
    front = []
    for i, c, q in points:
        dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, c2, q2 in points if j != i)
        if not dominated:
            front.append((c, -q, i))
    return [i for _, _, i in sorted(front)]
