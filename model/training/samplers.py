"""From k-means assignments to training streams (DeepCluster's re-assignment and sampling).

k-means (elsewhere) gives every chunk of a split a cluster id. A sampler's
``refresh(indices, assignments, num_clusters)`` stores those ids in its
``ClusterAssignments``; the next epoch draws by them. Samplers never cluster themselves:

- ``SentenceSampler`` (paper Sec. 3.3, temporal models): N whole sentences drawn i.i.d.
  with replacement with probability w / sum(w), w = the sum of the inverse cluster
  sizes of a sentence's chunks (as the reference's ``np.random.choice``), chunks in
  temporal order.
- ``ChunkSampler`` (vanilla DeepEmoCluster, Sec. 3.2; DeepCluster's uniform label
  sampler): N*C/Q'+1 chunks from each of the Q' non-empty clusters (with replacement
  where a cluster is smaller), shuffled together and cut to N*C, as one-chunk
  pseudo-sentences.
- ``PlainSampler`` (regressor and reconstruction baselines): every sentence once.

N is the number of sentences the sampler draws from: the split, or the seeded
``subset`` an SSL run keeps for the whole run (``--unlabeled-count``).

Each epoch's draw is computed at once in numpy, over the whole split, and batches gather
their rows from the split's random-access store (``model.training.split_cache``): the order is
globally random, an epoch reads N sentences' worth of rows whatever the cluster sizes,
and memory holds a few batches, not the split. The draw of epoch e is a function of
(seed, e) and the assignments alone: ``epochs_started`` (a CPU ``tf.Variable``, like the
assignments, so a checkpoint holds both) counts the epochs opened, so a resumed run
repeats its draws exactly, and a ``refresh`` changes the next epoch of an already built
dataset. Keras rebuilds a dataset's iterator on every ``fit`` call, so nothing may
depend on tf.data's own random state. Build samplers outside any ``tf.distribute``
scope: their variables are input-pipeline state, not model weights.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from model.training.datasets import AUTOTUNE, SplitSource
from model.training.split_cache import SplitCache

UNASSIGNED = -1
"""Cluster id of chunks whose sentence was not clustered (index gaps, before k-means)."""

class ClusterAssignments:
    """Per-chunk cluster ids of one split, addressed by the records' ``index``."""

    def __init__(self, index_size: int, num_chunks: int) -> None:
        with tf.device("/cpu:0"):
            self.labels = tf.Variable(
                tf.fill([index_size, num_chunks], UNASSIGNED), trainable=False, name="cluster_assignments")
        self.num_clusters = 0

    @property
    def index_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.labels.shape[1])

    def update(self, indices: np.ndarray, assignments: np.ndarray, num_clusters: int) -> None:
        """Replaces all ids with a new clustering; sentences not in ``indices`` become unassigned."""
        indices = np.asarray(indices, np.int64)
        assignments = np.asarray(assignments)
        if assignments.shape != (len(indices), self.num_chunks):
            raise ValueError(f"assignments shape {assignments.shape} != ({len(indices)}, {self.num_chunks})")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.index_size):
            raise ValueError(f"indices must lie in [0, {self.index_size})")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("indices must be unique")
        if assignments.size and (assignments.min() < 0 or assignments.max() >= num_clusters):
            raise ValueError(f"cluster ids must lie in [0, {num_clusters})")
        full = np.full((self.index_size, self.num_chunks), UNASSIGNED, np.int32)
        full[indices] = assignments
        self.labels.assign(full)
        self.num_clusters = int(num_clusters)

    def numpy(self) -> np.ndarray:
        return self.labels.numpy()

    def cluster_sizes(self) -> np.ndarray:
        """Chunks per cluster, int64 [num_clusters]."""
        labels = self.numpy()
        return np.bincount(labels[labels != UNASSIGNED], minlength=self.num_clusters)



def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The random source of one epoch: (seed, epoch) and nothing else."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, int(epoch)]))


class _Sampler:
    """One split's sentences (or its ``subset`` of record indices) as a stream of epochs.

    ``source.count`` is N, the sentences drawn from; ``records_read`` counts the rows
    read from the store (in sentences), for the benchmarks and the history.
    """

    def __init__(self, source: SplitSource, *, subset: np.ndarray | None = None,
                 cache_dir: str | None = None) -> None:
        if source.count <= 0:
            raise ValueError(f"split {source.split!r} has no records to sample")
        self.cache = SplitCache.open(source, cache_dir)
        self.rows = np.arange(self.cache.count) if subset is None else np.sort(self.cache.rows_of(subset))
        if not len(self.rows):
            raise ValueError(f"the subset of split {source.split!r} is empty")
        self.source = dataclasses.replace(source, count=len(self.rows))
        with tf.device("/cpu:0"):
            self.epochs_started = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="epochs_started")
        self._dtype = tf.dtypes.as_dtype(source.params.storage_dtype)
        self.last_distinct = 0
        """Distinct keys in the last epoch drawn."""

    @property
    def epoch_size(self) -> int:
        """Elements per epoch (before batching)."""
        return self.source.count

    @property
    def records_read(self) -> float:
        return self.cache.rows_read

    def draw(self, seed: int, epoch: int) -> np.ndarray:
        """The keys (store rows; chunk sampler: row * C + chunk) of epoch ``epoch``, in order."""
        return self._draw(epoch_generator(seed, epoch), self._labels())

    def _labels(self) -> np.ndarray | None:
        return None

    def _draw(self, rng: np.random.Generator, labels: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _draw_inputs(self) -> list[tf.Tensor]:
        return []

    def _epoch_keys(self, seed: tf.Tensor, epoch: tf.Tensor, *labels: tf.Tensor) -> tf.data.Dataset:
        def draw(seed: np.ndarray, epoch: np.ndarray, *labels: np.ndarray) -> np.ndarray:
            keys = self._draw(epoch_generator(seed, epoch), labels[0] if labels else None).astype(np.int64)
            self.last_distinct = len(np.unique(keys))
            return keys

        keys = tf.numpy_function(draw, [seed, epoch, *labels], tf.int64, name="epoch_draw")
        keys.set_shape([self.epoch_size])
        return tf.data.Dataset.from_tensor_slices(keys)

    def _next_epoch(self, seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
        epoch = self.epochs_started.assign_add(1) - 1
        return (seed, epoch, *self._draw_inputs())

    def dataset(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Batches of one epoch per iteration over the returned dataset (last one short)."""
        epoch = tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64)).map(self._next_epoch)
        keys = epoch.flat_map(self._epoch_keys).batch(batch_size, drop_remainder=False)
        batches = keys.map(self._gather, num_parallel_calls=AUTOTUNE, deterministic=True)
        # A known length gives Keras its steps per epoch and progress bars their total.
        batches = batches.apply(tf.data.experimental.assert_cardinality(math.ceil(self.epoch_size / batch_size)))
        return batches.prefetch(AUTOTUNE)

    def ordered_batches(self, batch_size: int) -> tf.data.Dataset:
        """Every sentence of the sampler once, in store order: ``features`` and ``index``
        batches for embedding before a re-assignment."""
        rows = tf.data.Dataset.from_tensor_slices(self.rows.astype(np.int64)).batch(batch_size)
        sentences = rows.map(self._sentences, num_parallel_calls=AUTOTUNE, deterministic=True)
        return sentences.map(lambda batch: {"features": batch["features"], "index": batch["index"]}).prefetch(AUTOTUNE)

    def _gather(self, keys: tf.Tensor) -> dict:
        return self._sentences(keys)

    def _sentences(self, rows: tf.Tensor) -> dict:
        """Whole sentences of the given store rows: ``features`` [B, C, m, F] float32,
        ``labels`` [B, 3], ``has_labels`` [B], ``index`` [B]."""
        def read(rows: np.ndarray) -> tuple[np.ndarray, ...]:
            cache = self.cache
            return cache.read(rows), cache.labels[rows], cache.has_labels[rows], cache.index[rows]

        features, labels, has_labels, index = tf.numpy_function(
            read, [rows], [self._dtype, tf.float32, tf.bool, tf.int64], name="read_sentences")
        return self._element(features, labels, has_labels, index, self.source.params.feature_shape)

    def _element(self, features, labels, has_labels, index, shape) -> dict:
        features.set_shape([None, *shape])
        labels.set_shape([None, self.cache.labels.shape[1]])
        has_labels.set_shape([None])
        index.set_shape([None])
        return {"features": tf.cast(features, tf.float32), "labels": labels, "has_labels": has_labels,
                "index": index}


class PlainSampler(_Sampler):
    """Every sentence once per epoch, in a fresh global permutation; no clustering.
    Elements: ``features`` [C, m, F], ``labels`` [3], ``has_labels``, ``index``."""

    def _draw(self, rng: np.random.Generator, labels: np.ndarray | None) -> np.ndarray:
        return rng.permutation(self.rows)


class _ClusterSampler(_Sampler):
    """A sampler driven by the split's cluster assignments, which ``refresh`` replaces."""

    def __init__(self, source: SplitSource, *, subset: np.ndarray | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__(source, subset=subset, cache_dir=cache_dir)
        self.assignments = ClusterAssignments(source.index_size, source.params.num_chunks)
        self._population_index = self.cache.index[self.rows]

    def refresh(self, indices: np.ndarray, assignments: np.ndarray, num_clusters: int) -> None:
        """Takes a new k-means result (``indices`` [N], ``assignments`` [N, C]): the next
        epoch of every dataset built by this sampler draws by it."""
        self.assignments.update(indices, assignments, num_clusters)

    def _labels(self) -> np.ndarray:
        return self.assignments.numpy()

    def _draw_inputs(self) -> list[tf.Tensor]:
        return [self.assignments.labels.read_value()]

    def _population_labels(self, labels: np.ndarray) -> np.ndarray:
        """Cluster ids [N, C] of the sampler's sentences, in store order."""
        return labels[self._population_index]

    def acceptance_rate(self) -> float:
        """Expected share of the sentences an epoch draws at least once (the history's
        ``_acceptance`` column; with direct draws nothing read is ever rejected)."""
        raise NotImplementedError


def _inverse_sizes(labels: np.ndarray) -> np.ndarray:
    """1 / size of each chunk's cluster over the chunks given, 0 where unassigned."""
    assigned = labels != UNASSIGNED
    sizes = np.bincount(labels[assigned], minlength=1)
    inverse = np.divide(1.0, sizes, out=np.zeros(len(sizes)), where=sizes > 0)
    return np.where(assigned, inverse[np.maximum(labels, 0)], 0.0)


class SentenceSampler(_ClusterSampler):
    """Sentence-level uniform sampling (paper Sec. 3.3).

    Chunk weight = 1 / size of its cluster; sentence weight w = sum over its C chunks
    (0 for sentences left out of the clustering). Each epoch draws N sentences i.i.d.
    with replacement with probability w / sum(w), in draw order (a global random order).
    Elements: ``features`` [C, m, F] in temporal order, ``cluster_labels`` [C],
    ``labels`` [3], ``has_labels``, ``index``. Before the first ``refresh`` an epoch is a
    permutation of the sentences.
    """

    def probabilities(self, labels: np.ndarray | None = None) -> np.ndarray | None:
        """Draw probability of each of the sampler's sentences (store order), or None
        before any clustering."""
        population = self._population_labels(self._labels() if labels is None else labels)
        weights = _inverse_sizes(population).sum(axis=1)
        total = weights.sum()
        return weights / total if total > 0 else None

    def _draw(self, rng: np.random.Generator, labels: np.ndarray | None) -> np.ndarray:
        probabilities = self.probabilities(labels)
        if probabilities is None:
            return rng.permutation(self.rows)
        return self.rows[rng.choice(len(self.rows), size=len(self.rows), p=probabilities)]

    def acceptance_rate(self) -> float:
        probabilities = self.probabilities()
        if probabilities is None:
            return 1.0
        return float(np.mean(-np.expm1(len(probabilities) * np.log1p(-np.minimum(probabilities, 1 - 1e-16)))))

    def acceptance_stats(self) -> dict[str, float]:
        """Share of the sentences the last epoch drew at least once, against the expected share."""
        rate = self.last_distinct / self.source.count if self.last_distinct else float("nan")
        return {"drawn": self.last_distinct, "rate": rate, "expected_rate": self.acceptance_rate()}

    def _gather(self, keys: tf.Tensor) -> dict:
        element = self._sentences(keys)
        element["cluster_labels"] = tf.gather(self.assignments.labels, element["index"])
        return element


class ChunkSampler(_ClusterSampler):
    """Chunk-level uniform sampling (vanilla DeepEmoCluster, paper Sec. 3.2).

    As DeepCluster's ``UnifLabelSampler`` in the reference: each of the Q' non-empty
    clusters gives N*C // Q' + 1 of its chunks (drawn with replacement when it holds no
    more, without otherwise), the lists are concatenated, shuffled and cut to N*C.
    Elements are one-chunk pseudo-sentences, so models generic in the chunk axis train on
    them unchanged: ``features`` [1, m, F], ``cluster_labels`` [1], ``labels`` [3],
    ``has_labels``, ``index``. Before the first ``refresh`` an epoch is a permutation of
    all chunks.
    """

    @property
    def epoch_size(self) -> int:
        return self.source.count * self.source.params.num_chunks

    def per_cluster(self) -> int:
        """Chunks each non-empty cluster gives an epoch: N*C // Q' + 1."""
        sizes = self.assignments.cluster_sizes()
        return self.epoch_size // max(np.count_nonzero(sizes), 1) + 1

    def _draw(self, rng: np.random.Generator, labels: np.ndarray | None) -> np.ndarray:
        num_chunks = self.source.params.num_chunks
        keys = (self.rows[:, None] * num_chunks + np.arange(num_chunks)).ravel()
        population = self._population_labels(labels).ravel()
        assigned = population != UNASSIGNED
        if not assigned.any():
            return rng.permutation(keys)
        order = np.argsort(population[assigned], kind="stable")
        members = np.split(keys[assigned][order], np.cumsum(np.bincount(population[assigned]))[:-1])
        members = [chunks for chunks in members if len(chunks)]
        size = self.epoch_size // len(members) + 1
        drawn = np.concatenate([rng.choice(chunks, size, replace=len(chunks) <= size) for chunks in members])
        rng.shuffle(drawn)
        return drawn[:self.epoch_size]

    def acceptance_rate(self) -> float:
        """Expected share of the assigned chunks an epoch draws at least once."""
        sizes = self.assignments.cluster_sizes()
        sizes = sizes[sizes > 0]
        if not len(sizes):
            return 1.0
        size = self.per_cluster()
        with np.errstate(divide="ignore"):  # a one-chunk cluster: log(0), always drawn
            covered = np.where(sizes <= size, -np.expm1(size * np.log1p(-1.0 / sizes)), size / sizes)
        return float((covered * sizes).sum() / sizes.sum())

    def _gather(self, keys: tf.Tensor) -> dict:
        num_chunks = self.source.params.num_chunks

        def read(keys: np.ndarray) -> tuple[np.ndarray, ...]:
            rows, positions = np.divmod(keys, num_chunks)
            cache = self.cache
            return (cache.read_chunks(rows, positions), cache.labels[rows], cache.has_labels[rows],
                    cache.index[rows], positions)

        features, labels, has_labels, index, positions = tf.numpy_function(
            read, [keys], [self._dtype, tf.float32, tf.bool, tf.int64, tf.int64], name="read_chunks")
        element = self._element(features, labels, has_labels, index, (1, *self.source.params.feature_shape[1:]))
        positions.set_shape([None])
        element["cluster_labels"] = tf.gather_nd(self.assignments.labels, tf.stack([index, positions], axis=1))[:, None]
        return element
