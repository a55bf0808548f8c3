"""K-means in TensorFlow: faiss' random-point start or greedy k-means++, Lloyd iterations, bounded memory.

DeepCluster re-clusters every chunk of the (un)labelled set before each stage, so this
runs on up to millions of 256-d points per epoch, on CPU or GPU, without faiss. Squared
distances are ||x||^2 - 2 x.c + ||c||^2 with one matmul per block of rows, so memory
beyond the input stays O(N + rows * k); cluster sums are a one-hot matmul per block,
which is faster on CPU than a scatter. Everything after input conversion runs in
``tf.function`` graphs traced once per process.

Two behaviours (``init``), each with its own repair of an emptied cluster:

- ``random`` (the reference's faiss 1.6): centroids start at k randomly picked points; an
  empty cluster takes half of a large one, chosen with probability proportional to its
  size, by splitting that centroid into two symmetric perturbations (faiss' ``EPS`` 1/1024).
- ``k-means++``: greedy k-means++ seeding; an empty cluster is re-seeded at the point
  farthest from every other centroid. Better inertia, but the farthest points are
  outliers, which makes tiny clusters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from model.training.config import KMEANS_INITS

DISTANCE_BLOCK_ELEMENTS = 1 << 22
"""Default cap on one [rows, k] distance block: 16 MiB of float32, whatever N is."""

SPLIT_EPSILON = 1.0 / 1024.0
"""faiss' relative perturbation when an empty cluster splits a large one."""


def kmeans(points: Any, k: int, iterations: int = 20, seed: int = 0,
           batch_size: int | None = None, init: str = "random") -> tuple[tf.Tensor, tf.Tensor, float]:
    """Clusters ``points`` [N, D] into ``k`` clusters: a start (``init``), then ``lloyd``.

    Args:
      points: float array or tensor [N, D] (numpy or TensorFlow; cast to float32).
      k: number of clusters, 1 <= k <= N.
      iterations: maximum Lloyd iterations (see ``lloyd``).
      seed: seeds the start and the repairs; the same seed gives the same result.
      batch_size: rows per distance block; by default ``DISTANCE_BLOCK_ELEMENTS // k``.
      init: ``random`` (faiss, the reference) or ``k-means++`` (see the module docstring).

    Returns:
      (assignments int32 [N], centroids float32 [k, D], inertia) as ``lloyd``.
    """
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be one of {KMEANS_INITS}, got {init!r}")
    points = _as_points(points)
    squared_norms = _squared_norms(points)
    if init == "random":
        start = random_points(points, k, seed)
    else:
        start = _seed(points, squared_norms, k, seed)
    return _run_lloyd(points, squared_norms, start, iterations, batch_size, repair=init, seed=seed)


def random_points(points: Any, k: int, seed: int = 0) -> tf.Tensor:
    """k distinct rows of ``points`` picked uniformly at random: faiss' start."""
    points = _as_points(points)
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={points.shape[0]}")
    chosen = np.random.default_rng(seed).choice(points.shape[0], size=k, replace=False)
    return tf.gather(points, np.sort(chosen))


def kmeans_plusplus(points: Any, k: int, seed: int = 0) -> tf.Tensor:
    """k initial centroids [k, D] by greedy k-means++, exactly scikit-learn's variant.

    Each new center is the best of ``2 + int(ln k)`` candidates drawn with probability
    proportional to D^2 (squared distance to the nearest chosen center), the best being
    the one that most reduces the potential (the sum of those squared distances).
    """
    points = _as_points(points)
    return _seed(points, _squared_norms(points), k, seed)


def lloyd(points: Any, centroids: Any, iterations: int = 20, batch_size: int | None = None,
          repair: str = "k-means++", seed: int = 0) -> tuple[tf.Tensor, tf.Tensor, float]:
    """Lloyd iterations from ``centroids`` [k, D].

    Stops before ``iterations`` only when an iteration changes no assignment (a fixed
    point, where more iterations change nothing). Returns (assignments int32 [N],
    centroids float32 [k, D], inertia): the assignments are the nearest of the returned
    centroids and inertia their sum of squared distances. An emptied cluster is repaired
    as ``repair`` says (``random``: faiss' split of a large cluster, seeded by ``seed``;
    ``k-means++``: re-seeded with the point farthest from its nearest centroid, one at a
    time, so duplicate points are never picked twice, which leaves no cluster empty
    whenever the data has at least k distinct points).
    """
    if repair not in KMEANS_INITS:
        raise ValueError(f"repair must be one of {KMEANS_INITS}, got {repair!r}")
    points = _as_points(points)
    return _run_lloyd(points, _squared_norms(points), centroids, iterations, batch_size, repair=repair, seed=seed)


def _as_points(points: Any) -> tf.Tensor:
    points = tf.convert_to_tensor(points, dtype=tf.float32)
    if points.shape.rank != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [N, D] array, got shape {points.shape}")
    return points


@tf.function(reduce_retracing=True)
def _squared_norms(points: tf.Tensor) -> tf.Tensor:
    """[N] row norms; an einsum, because square-then-sum would hold an [N, D] temporary."""
    return tf.einsum("nd,nd->n", points, points)


def _seed(points: tf.Tensor, squared_norms: tf.Tensor, k: int, seed: int) -> tf.Tensor:
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={points.shape[0]}")
    return _kmeans_plusplus(points, squared_norms, tf.constant(k), tf.constant(2 + int(math.log(k))),
                            tf.constant(seed, tf.int64))


def _run_lloyd(points: tf.Tensor, squared_norms: tf.Tensor, centroids: Any, iterations: int,
               batch_size: int | None, repair: str, seed: int) -> tuple[tf.Tensor, tf.Tensor, float]:
    centroids = tf.convert_to_tensor(centroids, dtype=tf.float32)
    if centroids.shape.rank != 2 or centroids.shape[1] != points.shape[1]:
        raise ValueError(f"centroids must be [k, {points.shape[1]}], got shape {centroids.shape}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rows = min(batch_size or max(1, DISTANCE_BLOCK_ELEMENTS // centroids.shape[0]), points.shape[0])
    assignments, centroids, inertia = _lloyd(points, squared_norms, centroids, tf.constant(iterations),
                                             tf.constant(rows), repair == "random", tf.constant(seed, tf.int64))
    return assignments, centroids, float(inertia)


def _squared_distances(points: tf.Tensor, squared_norms: tf.Tensor, centers: tf.Tensor) -> tf.Tensor:
    """[rows, m] squared distances, clamped at 0 against the expansion's round-off."""
    center_norms = tf.reduce_sum(tf.square(centers), axis=1)
    cross = tf.matmul(points, centers, transpose_b=True)
    return tf.maximum(squared_norms[:, None] - 2.0 * cross + center_norms[None, :], 0.0)


@tf.function(reduce_retracing=True)
def _kmeans_plusplus(points: tf.Tensor, squared_norms: tf.Tensor, k: tf.Tensor, trials: tf.Tensor,
                     seed: tf.Tensor) -> tf.Tensor:
    """Graph of ``kmeans_plusplus``; its blocks are [N, trials], small next to [N, D]."""
    num_points = tf.shape(points)[0]
    first = tf.random.stateless_uniform([], seed=tf.stack([seed, 0]), maxval=num_points, dtype=tf.int32)
    closest = _squared_distances(points, squared_norms, tf.gather(points, [first]))[:, 0]
    potential = tf.reduce_sum(tf.cast(closest, tf.float64))
    chosen = tf.TensorArray(tf.int32, size=k).write(0, first)
    for step in tf.range(1, k):
        draws = tf.random.stateless_uniform([trials], seed=tf.stack([seed, tf.cast(step, tf.int64)]), dtype=tf.float64)
        cumulative = tf.cumsum(tf.cast(closest, tf.float64))
        candidates = tf.minimum(tf.searchsorted(cumulative, draws * potential, out_type=tf.int32), num_points - 1)
        distances = tf.minimum(_squared_distances(points, squared_norms, tf.gather(points, candidates)),
                               closest[:, None])
        potentials = tf.reduce_sum(tf.cast(distances, tf.float64), axis=0)
        best = tf.argmin(potentials, output_type=tf.int32)
        potential = potentials[best]
        closest = distances[:, best]
        chosen = chosen.write(step, candidates[best])
    return tf.gather(points, chosen.stack())


def _assign(points: tf.Tensor, squared_norms: tf.Tensor, centroids: tf.Tensor,
            rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """E-step in blocks of ``rows``: (assignments [N], cluster sums [k, D], counts [k], inertia)."""
    num_points = tf.shape(points)[0]
    k = tf.shape(centroids)[0]
    center_norms = tf.reduce_sum(tf.square(centroids), axis=1)
    blocks = (num_points + rows - 1) // rows
    labels = tf.TensorArray(tf.int32, size=blocks, infer_shape=False)
    sums = tf.zeros_like(centroids)
    counts = tf.zeros([k], tf.float32)
    inertia = tf.constant(0.0, tf.float64)
    for block in tf.range(blocks):
        start = block * rows
        block_points = points[start:start + rows]
        # ||c||^2 - 2 x.c ranks centroids as the squared distance does, in one pass fewer.
        scores = tf.matmul(block_points, -2.0 * centroids, transpose_b=True) + center_norms[None, :]
        nearest = tf.argmin(scores, axis=1, output_type=tf.int32)
        nearest_distance = tf.maximum(tf.gather(scores, nearest, batch_dims=1) + squared_norms[start:start + rows], 0.0)
        one_hot = tf.one_hot(nearest, k)
        sums += tf.matmul(one_hot, block_points, transpose_a=True)
        counts += tf.reduce_sum(one_hot, axis=0)
        inertia += tf.reduce_sum(tf.cast(nearest_distance, tf.float64))
        labels = labels.write(block, nearest)
    return labels.concat(), sums, counts, inertia


def _reseed_empty(points: tf.Tensor, squared_norms: tf.Tensor, centroids: tf.Tensor,
                  empty: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Moves each empty centroid, one at a time, to the point farthest from all other centroids.

    Distances start from the non-empty centroids and shrink after every placement, so a
    placed point and its duplicates (distance 0) are never chosen again.
    """
    num_points = tf.shape(points)[0]
    excluded = tf.where(empty, tf.constant(float("inf")), tf.zeros_like(empty, tf.float32))
    nearest = tf.TensorArray(tf.float32, size=(num_points + rows - 1) // rows, infer_shape=False)
    for block in tf.range(nearest.size()):
        start = block * rows
        distances = _squared_distances(points[start:start + rows], squared_norms[start:start + rows], centroids)
        nearest = nearest.write(block, tf.reduce_min(distances + excluded[None, :], axis=1))
    distance = nearest.concat()
    for cluster in tf.where(empty)[:, 0]:
        farthest = tf.argmax(distance, output_type=tf.int32)
        point = points[farthest]
        centroids = tf.tensor_scatter_nd_update(centroids, [[cluster]], point[None, :])
        distance = tf.minimum(distance, _squared_distances(points, squared_norms, point[None, :])[:, 0])
    return centroids


def _split_large(centroids: tf.Tensor, counts: tf.Tensor, empty: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """faiss' repair: each empty cluster takes a perturbed copy of a large cluster's centroid.

    The donor is drawn with probability proportional to (size - 1), so a singleton never
    splits; both halves move SPLIT_EPSILON apart along alternating signs per dimension, and
    the donor's count is halved so the next empty cluster sees the split.
    """
    dim = tf.shape(centroids)[1]
    signs = tf.where(tf.range(dim) % 2 == 0, 1.0, -1.0)
    for cluster in tf.where(empty)[:, 0]:
        weights = tf.maximum(counts - 1.0, 0.0)
        if tf.reduce_sum(weights) > 0:
            draw = tf.random.stateless_uniform([], seed=tf.stack([seed, cluster]), dtype=tf.float32)
            cumulative = tf.cumsum(weights)
            donor = tf.cast(tf.minimum(tf.searchsorted(cumulative, [draw * cumulative[-1]], side="right")[0],
                                       tf.shape(counts)[0] - 1), tf.int64)
            centre = centroids[donor]
            centroids = tf.tensor_scatter_nd_update(
                centroids, [[cluster], [donor]],
                tf.stack([centre * (1.0 + SPLIT_EPSILON * signs), centre * (1.0 - SPLIT_EPSILON * signs)]))
            half = tf.floor(counts[donor] / 2.0)
            counts = tf.tensor_scatter_nd_update(counts, [[cluster], [donor]], tf.stack([half, counts[donor] - half]))
    return centroids


def _repair(points, squared_norms, centroids, counts, rows, split: bool, seed: tf.Tensor) -> tf.Tensor:
    empty = tf.equal(counts, 0.0)
    if split:
        return _split_large(centroids, counts, empty, seed)
    return _reseed_empty(points, squared_norms, centroids, empty, rows)


@tf.function(reduce_retracing=True)
def _lloyd(points: tf.Tensor, squared_norms: tf.Tensor, centroids: tf.Tensor, iterations: tf.Tensor,
           rows: tf.Tensor, split: bool, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Lloyd iterations from ``centroids``; the result's assignments match its centroids.

    ``split`` (a Python bool: one trace each) picks faiss' repair of empty clusters over
    the farthest-point re-seeding; every repair round draws from (seed, round).
    """
    assignments, sums, counts, inertia = _assign(points, squared_norms, centroids, rows)
    changed = tf.constant(True)
    repairs = tf.constant(0, tf.int64)
    for _ in tf.range(iterations):
        if not changed:
            break
        means = sums / tf.maximum(counts, 1.0)[:, None]
        if tf.reduce_any(tf.equal(counts, 0.0)):
            means = _repair(points, squared_norms, means, counts, rows, split, seed * 1000 + repairs)
            repairs += 1
        centroids = means
        previous = assignments
        assignments, sums, counts, inertia = _assign(points, squared_norms, centroids, rows)
        changed = tf.reduce_any(tf.not_equal(assignments, previous))
    # A last Lloyd step can still empty a cluster; repair and re-assign until none is
    # (bounded at k rounds; one round suffices unless the repair empties another cluster).
    for _ in tf.range(tf.shape(centroids)[0]):
        if not tf.reduce_any(tf.equal(counts, 0.0)):
            break
        centroids = _repair(points, squared_norms, centroids, counts, rows, split, seed * 1000 + repairs)
        repairs += 1
        assignments, sums, counts, inertia = _assign(points, squared_norms, centroids, rows)
    return assignments, centroids, inertia
