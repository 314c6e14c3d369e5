"""1-D k-means for weight sharing (Han et al. 2016, Sec. 3.1 and 3.2: centroid initialisation).

We run an exact 1-D Lloyd iteration instead of scikit-learn's ``KMeans``: in one dimension every cluster is a run
of the sorted weights, bounded by the midpoints between sorted centroids. The weights are sorted once; an iteration
then finds the k runs by binary search and sums each run in one vectorised pass (``np.add.reduceat``; a running
prefix sum would lose small clusters beside huge weights), with no distance matrix (a 400k-weight layer at 256
clusters: a tenth of a second instead of seconds). It is deterministic and needs no sklearn import. Given the
same initial centroids it performs the same Lloyd updates as ``KMeans(init=centroids, n_init=1,
algorithm="lloyd")``; the one difference is that an emptied cluster keeps its centroid (sklearn relocates it to a
far point), which Deep Compression's linear initialisation makes rare and harmless.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from slimkit._errors import ConfigError
from slimkit._registry import Registry

InitFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CENTROID_INITS: Registry[InitFn] = Registry("centroid initialisation")


@CENTROID_INITS.register("linear")
def linear_init(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Evenly spaced between the smallest and largest weight: keeps the rare large weights that matter (the
    paper's best initialisation)."""
    return np.linspace(values.min(), values.max(), k)


@CENTROID_INITS.register("density")
def density_init(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Evenly spaced on the weights' CDF (quantiles at (i + ½)/k): dense near the two peaks of the distribution."""
    return np.quantile(values, (np.arange(k) + 0.5) / k)


@CENTROID_INITS.register("random")
def random_init(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Forgy: k distinct weights drawn at random."""
    return np.sort(rng.choice(values, size=k, replace=False))


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", max_iter: int = 100,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into ``k`` groups by Lloyd's algorithm from the named initialisation.

    Returns ``(centroids, labels)`` with centroids sorted ascending (float64) and ``labels`` in ``[0, k)``, the
    nearest centroid of each value (a value midway between two goes to the lower one). Minimises Σ |w − c_label(w)|²
    (Han et al. 2016, Eq. 1).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ConfigError("k-means got no values to cluster: the layer has no non-zero weights")
    k = min(int(k), np.unique(values).size)
    if k < 1:
        raise ConfigError(f"k-means needs at least one cluster (got k={k})")
    rng = np.random.default_rng(seed)
    centroids = np.sort(np.asarray(CENTROID_INITS.get(init)(values, k, rng), dtype=np.float64))
    order = np.argsort(values, kind="stable")
    ordered = values[order]

    def run_ends(centroids: np.ndarray) -> np.ndarray:
        # cluster j holds the sorted values in (midpoint[j-1], midpoint[j]]: the nearest, ties to the lower
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        return np.concatenate((np.searchsorted(ordered, midpoints, side="right"), [ordered.size]))

    ends = run_ends(centroids)
    for _ in range(max_iter):
        starts = np.concatenate(([0], ends[:-1]))
        counts = ends - starts
        filled = counts > 0
        updated = centroids.copy()
        # the filled runs are consecutive (an empty run has no length): each sum ends where the next filled run starts
        updated[filled] = np.add.reduceat(ordered, starts[filled]) / counts[filled]
        updated.sort()
        new_ends = run_ends(updated)
        centroids = updated
        if np.array_equal(new_ends, ends):
            break
        ends = new_ends
    labels = np.empty(values.size, dtype=np.int64)
    labels[order] = np.repeat(np.arange(k), np.diff(ends, prepend=0))
    return centroids, labels
