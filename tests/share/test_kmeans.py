import numpy as np
import pytest

from slimkit.share import CENTROID_INITS, kmeans_1d


def test_linear_init_on_known_distribution():
    # four tight clusters at -3, -1, 1, 3: linear init over [min, max] with k=4 starts next to each
    rng = np.random.default_rng(0)
    centres = np.array([-3.0, -1.0, 1.0, 3.0])
    values = np.concatenate([c + 0.01 * rng.standard_normal(500) for c in centres])
    centroids, labels = kmeans_1d(values, 4, "linear")
    assert np.allclose(centroids, centres, atol=0.01)
    assert np.array_equal(np.bincount(labels), [500] * 4)
    for k in range(4):  # each centroid is the mean of its members (Lloyd's fixed point)
        assert centroids[k] == pytest.approx(values[labels == k].mean())


@pytest.mark.parametrize("init", CENTROID_INITS.names())
def test_every_init_converges_to_a_lloyd_fixed_point(init):
    values = np.random.default_rng(1).standard_normal(2000)
    centroids, labels = kmeans_1d(values, 8, init, max_iter=300)
    assert np.all(np.diff(centroids) > 0)
    nearest = np.abs(values[:, None] - centroids[None]).argmin(1)
    assert np.array_equal(nearest, labels)


def test_matches_sklearn_lloyd_from_same_init():
    from sklearn.cluster import KMeans

    values = np.random.default_rng(2).standard_normal(3000)
    ours, _ = kmeans_1d(values, 16, "linear", max_iter=300)
    init = np.linspace(values.min(), values.max(), 16)[:, None]
    ref = KMeans(16, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(values[:, None])
    assert np.allclose(ours, np.sort(ref.cluster_centers_.ravel()), atol=1e-6)


def test_a_small_cluster_beside_huge_weights_keeps_its_mean():
    values = np.concatenate([[-1e15], np.linspace(0.001, 0.01, 10), [1e15]])
    centroids, labels = kmeans_1d(values, 3, "linear")
    assert centroids[1] == pytest.approx(0.0055) and np.bincount(labels).tolist() == [1, 10, 1]
