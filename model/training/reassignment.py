"""Re-assignment: embed a split, cluster it with ``model.training.kmeans``, hand the result to a sampler.

This is DeepCluster's middle step, kept apart from clustering (``model.training.kmeans``) and
from sampling (``model.training.samplers``). The epoch loop (``model.training.algorithm``)
runs it before every clustering stage, so each stage trains on pseudo-labels of the current
features.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import tensorflow as tf
from sklearn.metrics import normalized_mutual_info_score

from model.training.kmeans import kmeans
from model.progress import SILENT, Progress, Reporter


def embed_batches(embed_fn: Callable[[tf.Tensor], tf.Tensor], batches: tf.data.Dataset,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``embed_fn`` over ``{"features", "index"}`` batches -> (indices [N], features [N, C, D])."""
    indices, features = [], []
    for batch in batches:
        features.append(embed_fn(batch["features"]).numpy())
        indices.append(batch["index"].numpy())
        if progress is not None:
            progress.update(len(indices[-1]))
    if not indices:
        raise ValueError("nothing to embed: the split yielded no records")
    return np.concatenate(indices), np.concatenate(features)


def size_entropy(assignments: np.ndarray, num_clusters: int) -> float:
    """Entropy of the cluster-size distribution over log(Q): 1 is perfectly balanced."""
    sizes = np.bincount(assignments.ravel(), minlength=num_clusters).astype(np.float64)
    shares = sizes[sizes > 0] / sizes.sum()
    return float(-(shares * np.log(shares)).sum() / math.log(num_clusters))


class Reclusterer:
    """Embeds one split, clusters every chunk and refreshes that split's sampler.

    ``previous`` keeps the last assignment (ordered by record index) so consecutive
    epochs can be compared with NMI, as the reference logs. ``progress`` shows the
    embedding (sentences done, time left) and K-means (time left as the last round took).
    """

    def __init__(self, *, name: str, embed_fn: Callable[[tf.Tensor], tf.Tensor],
                 batches: Callable[[], tf.data.Dataset], sampler, num_clusters: int,
                 iterations: int, seed: int, init: str = "random", progress: Reporter = SILENT):
        self.name = name
        self.embed_fn = embed_fn
        self.batches = batches
        self.sampler = sampler
        self.num_clusters = num_clusters
        self.iterations = iterations
        self.seed = seed
        self.init = init
        self.previous: np.ndarray | None = None
        self.progress = progress
        self._kmeans_seconds: float | None = None

    def run(self, round_index: int) -> dict[str, float]:
        """One re-assignment; returns statistics for the history."""
        start = time.perf_counter()
        with self.progress.counting(f"embedding {self.name}", self.sampler.source.count, "sentences") as progress:
            indices, features = embed_batches(self.embed_fn, self.batches(), progress)
        embedded = time.perf_counter()
        num, chunks, dim = features.shape
        with self.progress.phase(f"k-means on {num * chunks:,} {self.name} chunks, Q={self.num_clusters}",
                                 expected_seconds=self._kmeans_seconds):
            assignments, _, inertia = kmeans(features.reshape(num * chunks, dim), self.num_clusters,
                                             iterations=self.iterations, seed=self.seed + round_index, init=self.init)
        self._kmeans_seconds = time.perf_counter() - embedded
        assignments = np.asarray(assignments).reshape(num, chunks)
        order = np.argsort(indices)
        ordered = assignments[order]
        nmi = (float(normalized_mutual_info_score(self.previous.ravel(), ordered.ravel()))
               if self.previous is not None and self.previous.shape == ordered.shape else float("nan"))
        self.previous = ordered
        self.sampler.refresh(indices, assignments, self.num_clusters)
        return {
            f"{self.name}_cluster_entropy": size_entropy(assignments, self.num_clusters),
            f"{self.name}_smallest_cluster": int(np.bincount(assignments.ravel(), minlength=self.num_clusters).min()),
            f"{self.name}_nmi": nmi,
            f"{self.name}_inertia": float(inertia),
            f"{self.name}_acceptance": float(self.sampler.acceptance_rate()),
            f"{self.name}_seconds_embed": embedded - start,
            f"{self.name}_seconds_kmeans": time.perf_counter() - embedded,
        }
