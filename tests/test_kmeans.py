"""TensorFlow K-means: quality against scikit-learn, determinism, no empty cluster, bounded memory."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from model.training.kmeans import kmeans, kmeans_plusplus, lloyd, random_points


def _blobs(std: float, seed: int = 0) -> np.ndarray:
    points, _ = make_blobs(3000, n_features=16, centers=8, cluster_std=std, random_state=seed)
    return points.astype(np.float32)


def _inertia(points: np.ndarray, assignments: np.ndarray, centroids: np.ndarray) -> float:
    return float(((points.astype(np.float64) - centroids[assignments]) ** 2).sum())


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_best_inertia_is_within_one_percent_of_sklearn(init: str) -> None:
    points = _blobs(std=4.0)
    ours = min(kmeans(points, 8, seed=seed, init=init)[2] for seed in range(3))
    theirs = KMeans(8, n_init=10, random_state=0).fit(points).inertia_
    assert ours <= 1.01 * theirs


def test_result_is_consistent_and_deterministic() -> None:
    points = _blobs(std=1.0, seed=1)
    assignments, centroids, inertia = kmeans(points, 8, seed=3)
    assignments, centroids = np.asarray(assignments), np.asarray(centroids)
    assert assignments.dtype == np.int32 and assignments.shape == (3000,) and centroids.shape == (8, 16)
    distances = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignments, distances.argmin(1))
    assert inertia == pytest.approx(_inertia(points, assignments, centroids), rel=1e-4)
    again = kmeans(tf.constant(points), 8, seed=3)
    np.testing.assert_array_equal(np.asarray(again[0]), assignments)
    blocked = kmeans(points, 8, seed=3, batch_size=97)
    np.testing.assert_array_equal(np.asarray(blocked[0]), assignments)


def test_kmeans_plusplus_picks_distinct_data_points() -> None:
    points = np.concatenate([np.repeat(_blobs(1.0)[:5], 400, axis=0), _blobs(1.0)[5:10]])
    seeds = np.asarray(kmeans_plusplus(points, 10, seed=4))
    assert len({tuple(row) for row in seeds}) == 10
    assert all((points == row).all(1).any() for row in seeds)


@pytest.mark.parametrize("iterations", [0, 5])
def test_no_cluster_is_left_empty_with_planted_duplicates(iterations: int) -> None:
    rng = np.random.default_rng(5)
    outlier = np.full((1, 16), 50.0, np.float32)
    points = np.concatenate([np.repeat(outlier, 500, axis=0), rng.standard_normal((200, 16)).astype(np.float32)])
    stuck = np.concatenate([np.repeat(rng.standard_normal((1, 16)), 5, axis=0), np.full((1, 16), -1e3)])
    assignments, centroids, inertia = lloyd(points, stuck.astype(np.float32), iterations=iterations)
    counts = np.bincount(np.asarray(assignments), minlength=6)
    assert np.all(counts > 0), counts
    assert len({tuple(row) for row in np.asarray(centroids)}) == 6
    assert inertia == pytest.approx(_inertia(points, np.asarray(assignments), np.asarray(centroids)), rel=1e-4)


def test_as_many_clusters_as_distinct_points() -> None:
    distinct = np.random.default_rng(6).standard_normal((12, 8)).astype(np.float32)
    points = np.repeat(distinct, 50, axis=0)
    assignments, _, inertia = kmeans(points, 12, seed=0, init="k-means++")
    assert np.all(np.bincount(np.asarray(assignments), minlength=12) == 50)
    assert inertia == pytest.approx(0.0, abs=1e-3)


def _blob_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(0)
    blob = rng.standard_normal((3000, 16))
    outliers = rng.standard_normal((6, 16)) * 0.1 + 30 * np.eye(16)[:6]
    return np.concatenate([blob, outliers]).astype(np.float32)


def test_random_start_does_not_chase_outliers_as_kmeans_plusplus_does() -> None:
    """The reference's faiss start keeps every cluster large on a blob with a few far outliers;
    k-means++ (D^2 seeding, farthest-point repair) spends centroids on the outliers."""
    points = _blob_with_outliers()
    smallest = {init: [int(np.bincount(np.asarray(kmeans(points, 10, seed=seed, init=init)[0]), minlength=10).min())
                       for seed in range(4)] for init in ("random", "k-means++")}
    assert min(smallest["random"]) >= 100, smallest
    assert min(smallest["k-means++"]) <= 6, smallest


def test_random_start_picks_distinct_points_and_follows_the_seed() -> None:
    points = _blobs(1.0)
    first = np.asarray(random_points(points, 10, seed=1))
    assert len({tuple(row) for row in first}) == 10
    assert all((points == row).all(1).any() for row in first)
    np.testing.assert_array_equal(np.asarray(random_points(points, 10, seed=1)), first)
    assert not np.array_equal(np.asarray(random_points(points, 10, seed=2)), first)


def test_an_empty_cluster_splits_a_large_one() -> None:
    """faiss' repair: the emptied centroid becomes a perturbed copy of a populated one, which
    then halves that cluster; the farthest-point repair would jump to the outlier instead."""
    rng = np.random.default_rng(3)
    left = rng.standard_normal((400, 2)) * 0.5 + [-5.0, 0.0]
    right = rng.standard_normal((400, 2)) * 0.5 + [5.0, 0.0]
    outlier = np.array([[0.0, 40.0]])
    points = np.concatenate([left, right, outlier]).astype(np.float32)
    start = np.array([[-5.0, 0.0], [5.0, 0.0], [1e4, 1e4]], np.float32)
    assignments, centroids, _ = lloyd(points, start, iterations=10, repair="random", seed=0)
    counts = np.bincount(np.asarray(assignments), minlength=3)
    assert counts.min() >= 100, counts
    assert np.abs(np.asarray(centroids)[:, 1]).max() < 5.0, "no centroid went to the outlier"
    farthest, _, _ = lloyd(points, start, iterations=0, repair="k-means++")
    assert np.bincount(np.asarray(farthest), minlength=3).min() == 1


def test_invalid_arguments_are_rejected() -> None:
    points = _blobs(1.0)[:10]
    with pytest.raises(ValueError, match="1 <= k <= N"):
        kmeans(points, 11)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans(points[0], 2)
    with pytest.raises(ValueError, match="centroids must be"):
        lloyd(points, points[:2, :3])
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans(points, 2, init="kmeans++")


def _memory(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc (Linux)")
def test_a_million_points_cluster_in_bounded_memory() -> None:
    points = tf.random.stateless_uniform([1_000_000, 256], seed=[0, 1])
    input_bytes = 1_000_000 * 256 * 4
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = _memory("VmRSS")
    assignments, centroids, _ = kmeans(points, 4, iterations=2, seed=0)
    growth = _memory("VmHWM") - before
    assert growth < 0.1 * input_bytes, f"peak RSS grew by {growth / 1e6:.0f} MB for a {input_bytes / 1e6:.0f} MB input"
    assert np.all(np.bincount(np.asarray(assignments), minlength=4) > 0)
    assert centroids.shape == (4, 256)
