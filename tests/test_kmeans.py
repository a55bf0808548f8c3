"""TensorFlow K-means: quality against scikit-learn, determinism, no empty cluster, bounded memory."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from model.kmeans import kmeans, kmeans_plusplus, lloyd


def _blobs(std: float, seed: int = 0) -> np.ndarray:
    points, _ = make_blobs(3000, n_features=16, centers=8, cluster_std=std, random_state=seed)
    return points.astype(np.float32)


def _inertia(points: np.ndarray, assignments: np.ndarray, centroids: np.ndarray) -> float:
    return float(((points.astype(np.float64) - centroids[assignments]) ** 2).sum())


def test_best_inertia_is_within_one_percent_of_sklearn() -> None:
    points = _blobs(std=4.0)
    ours = min(kmeans(points, 8, seed=seed)[2] for seed in range(3))
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
    assignments, _, inertia = kmeans(points, 12, seed=0)
    assert np.all(np.bincount(np.asarray(assignments), minlength=12) == 50)
    assert inertia == pytest.approx(0.0, abs=1e-3)


def test_invalid_arguments_are_rejected() -> None:
    points = _blobs(1.0)[:10]
    with pytest.raises(ValueError, match="1 <= k <= N"):
        kmeans(points, 11)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans(points[0], 2)
    with pytest.raises(ValueError, match="centroids must be"):
        lloyd(points, points[:2, :3])


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
