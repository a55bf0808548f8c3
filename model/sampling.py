"""From k-means assignments to training streams (DeepCluster's re-assignment and sampling).

k-means (elsewhere) gives every chunk of a split a cluster id. A sampler's
``refresh(indices, assignments, num_clusters)`` stores those ids in its
``ClusterAssignments`` and reweights its stream over the split's records; samplers never
cluster themselves:

- ``SentenceSampler`` (paper Sec. 3.3, temporal models): whole sentences, chunks in
  temporal order, drawn by rejection with acceptance proportional to the sum of the
  inverse cluster sizes of their chunks.
- ``ChunkSampler`` (vanilla DeepEmoCluster, Sec. 3.2): chunks drawn independently,
  N*C/Q per cluster in expectation, as one-chunk pseudo-sentences.
- ``PlainSampler`` (regressor and reconstruction baselines): shuffled sentences.

Everything a stream reads while it runs (assignments, acceptance, copy rates, the epoch
counter) lives in CPU ``tf.Variable``s, so a refresh after a new clustering changes the
next epoch's draw of an already built dataset. ``tf.data.Dataset.rejection_resample``
fixes its distributions when the dataset is built, which is why it is not used. Every
random choice of epoch e derives from (seed, e) alone: Keras rebuilds a dataset's
internal random state on every ``fit`` call, which would otherwise replay the first
epoch's order in every stage. Build samplers outside any ``tf.distribute`` scope: their
variables are input-pipeline state, not model weights.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from model import data
from model.data import AUTOTUNE, SplitSource

UNASSIGNED = -1
"""Cluster id of chunks whose sentence was not clustered (index gaps, before k-means)."""

DEFAULT_CHUNK_BUFFER = 2048
"""Chunks held for shuffling by ``ChunkSampler`` (about 32 KB each in float32)."""


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

    def chunk_weights(self) -> np.ndarray:
        """1 / size of each chunk's cluster, float64 [index_size, C]; 0 where unassigned."""
        labels = self.numpy()
        sizes = self.cluster_sizes()
        if not sizes.any():
            raise ValueError("no chunk is assigned yet: call update() with a clustering first")
        inverse = np.divide(1.0, sizes, out=np.zeros(len(sizes)), where=sizes > 0)
        return np.where(labels == UNASSIGNED, 0.0, inverse[np.maximum(labels, 0)])


class _Sampler:
    """One split's records as a stream of epochs; subclasses define what an epoch holds.

    ``epochs_started`` counts the iterators opened so far; epoch e draws from
    (seed, e) only, so a run restored with this counter repeats its draws exactly.
    """

    def __init__(self, source: SplitSource, *, shuffle_buffer: int = data.DEFAULT_SHUFFLE_BUFFER) -> None:
        if source.count <= 0:
            raise ValueError(f"split {source.split!r} has no records to sample")
        self.source = source
        self.shuffle_buffer = shuffle_buffer
        self._parse = data.parser(source.params, data.TRAINING_KEYS)
        with tf.device("/cpu:0"):
            self.epochs_started = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="epochs_started")

    @property
    def epoch_size(self) -> int:
        """Elements per epoch (before batching)."""
        return self.source.count

    def _epoch(self, epoch_seed: tf.Tensor) -> tf.data.Dataset:
        raise NotImplementedError

    def _next_epoch_seed(self, seed: tf.Tensor) -> tf.Tensor:
        epoch = self.epochs_started.assign_add(1) - 1
        return tf.random.stateless_uniform(
            [], seed=tf.stack([seed, epoch]), minval=0, maxval=2**31 - 1, dtype=tf.int64)

    def dataset(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Batches of one epoch per iteration over the returned dataset (last one short)."""
        epoch = tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64)).map(self._next_epoch_seed)
        batches = epoch.flat_map(self._epoch).batch(batch_size, drop_remainder=False)
        # A known length gives Keras its steps per epoch and progress bars their total.
        batches = batches.apply(tf.data.experimental.assert_cardinality(math.ceil(self.epoch_size / batch_size)))
        return batches.prefetch(AUTOTUNE)

    def _records(self, epoch_seed: tf.Tensor, repeat: bool) -> tf.data.Dataset:
        return data.serialized_records(
            self.source.files(), shuffle=True, seed=epoch_seed, repeat=repeat, shuffle_buffer=self.shuffle_buffer)


def _uniform(shape: list[int], epoch_seed: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """Uniform draws for the element at ``position`` of an epoch: independent of record order."""
    # Offset from the seeds of the record shuffles, which use epoch_seed and epoch_seed + 1.
    return tf.random.stateless_uniform(shape, seed=tf.stack([epoch_seed + 2, position]))


class PlainSampler(_Sampler):
    """One shuffled pass over the split's sentences per epoch; no clustering. Elements:
    ``features`` [C, m, F], ``labels`` [3], ``has_labels``, ``index``."""

    def _epoch(self, epoch_seed: tf.Tensor) -> tf.data.Dataset:
        return self._records(epoch_seed, repeat=False).map(self._parse, num_parallel_calls=AUTOTUNE)


class _ClusterSampler(_Sampler):
    """A sampler driven by the split's cluster assignments, which ``refresh`` replaces."""

    def __init__(self, source: SplitSource, *, shuffle_buffer: int = data.DEFAULT_SHUFFLE_BUFFER) -> None:
        super().__init__(source, shuffle_buffer=shuffle_buffer)
        self.assignments = ClusterAssignments(source.index_size, source.params.num_chunks)

    def refresh(self, indices: np.ndarray, assignments: np.ndarray, num_clusters: int) -> None:
        """Takes a new k-means result (``indices`` [N], ``assignments`` [N, C]): the next
        epoch of every dataset built by this sampler draws by it."""
        self.assignments.update(indices, assignments, num_clusters)
        self._reweight()

    def _reweight(self) -> None:
        raise NotImplementedError

    def acceptance_rate(self) -> float:
        """Expected share of the records read whose features get decoded, for the history."""
        raise NotImplementedError


class SentenceSampler(_ClusterSampler):
    """Sentence-level uniform sampling (paper Sec. 3.3) by rejection over the records.

    Chunk weight = 1 / size of its cluster; sentence weight = sum over its C chunks;
    acceptance = weight / max weight (0 for sentences left out of the clustering). Each
    epoch reads shuffled passes over the split, accepts each record with its acceptance,
    and stops at exactly ``count`` sentences, so a sentence is drawn acceptance * count /
    sum(acceptance) times in expectation. Elements: ``features`` [C, m, F] in temporal
    order, ``cluster_labels`` [C], ``labels`` [3], ``has_labels``, ``index``. Before the
    first ``refresh`` every sentence is accepted.
    """

    def __init__(self, source: SplitSource, *, shuffle_buffer: int = data.DEFAULT_SHUFFLE_BUFFER) -> None:
        super().__init__(source, shuffle_buffer=shuffle_buffer)
        with tf.device("/cpu:0"):
            self.acceptance = tf.Variable(tf.ones([source.index_size]), trainable=False, name="acceptance")
            self._seen = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="records_seen")
            self._accepted = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="records_accepted")

    def _reweight(self) -> None:
        weights = self.assignments.chunk_weights().sum(axis=1)
        self.acceptance.assign((weights / weights.max()).astype(np.float32))
        self._seen.assign(0)
        self._accepted.assign(0)

    def acceptance_rate(self) -> float:
        """sum(acceptance) / sentences clustered: the rate the next epoch achieves in expectation."""
        clustered = self.assignments.numpy()[:, 0] != UNASSIGNED
        return float(self.acceptance.numpy()[clustered].mean()) if clustered.any() else 1.0

    def acceptance_stats(self) -> dict[str, float]:
        """Records read and accepted since the last refresh, against the expected rate."""
        seen, accepted = int(self._seen.numpy()), int(self._accepted.numpy())
        return {
            "seen": seen,
            "accepted": accepted,
            "rate": accepted / seen if seen else float("nan"),
            "expected_rate": self.acceptance_rate(),
        }

    def _epoch(self, epoch_seed: tf.Tensor) -> tf.data.Dataset:
        def accept(position: tf.Tensor, serialized: tf.Tensor) -> tf.Tensor:
            probability = tf.gather(self.acceptance, data.parse_index(serialized))
            accepted = _uniform([], epoch_seed, position) < probability
            self._seen.assign_add(1)
            self._accepted.assign_add(tf.cast(accepted, tf.int64))
            return accepted

        def parse(position: tf.Tensor, serialized: tf.Tensor) -> dict:
            element = self._parse(serialized)
            element["cluster_labels"] = tf.gather(self.assignments.labels, element["index"])
            return element

        # The features are decoded only for accepted records.
        accepted = self._records(epoch_seed, repeat=True).enumerate().filter(accept).take(self.source.count)
        return accepted.map(parse, num_parallel_calls=AUTOTUNE)


class ChunkSampler(_ClusterSampler):
    """Chunk-level uniform sampling (vanilla DeepEmoCluster, paper Sec. 3.2), streamed.

    Each pass over the shuffled sentences emits every chunk floor(r) or floor(r) + 1
    times, r = (assigned chunks / non-empty clusters) / size of the chunk's cluster, so
    each cluster contributes N*C/Q chunks per pass in expectation (small clusters
    upsampled, big ones downsampled); the copies are shuffled in a buffer and cut at
    ``count * C`` chunks per epoch. Elements are one-chunk pseudo-sentences, so models
    generic in the chunk axis train on them unchanged: ``features`` [1, m, F],
    ``cluster_labels`` [1], ``labels`` [3], ``has_labels``, ``index``. Memory stays
    bounded: a sentence's copies are produced lazily. Before the first ``refresh`` every
    chunk is emitted once.
    """

    def __init__(
        self,
        source: SplitSource,
        *,
        shuffle_buffer: int = data.DEFAULT_SHUFFLE_BUFFER,
        chunk_buffer: int = DEFAULT_CHUNK_BUFFER,
    ) -> None:
        super().__init__(source, shuffle_buffer=shuffle_buffer)
        self.chunk_buffer = chunk_buffer
        with tf.device("/cpu:0"):
            self.copy_rates = tf.Variable(
                tf.ones(self.assignments.labels.shape), trainable=False, name="chunk_copy_rates")

    @property
    def epoch_size(self) -> int:
        return self.source.count * self.source.params.num_chunks

    def _reweight(self) -> None:
        weights = self.assignments.chunk_weights()
        sizes = self.assignments.cluster_sizes()
        per_cluster = sizes.sum() / np.count_nonzero(sizes)
        self.copy_rates.assign((per_cluster * weights).astype(np.float32))

    def acceptance_rate(self) -> float:
        """Expected share of clustered sentences with at least one chunk copied in a pass."""
        clustered = self.assignments.numpy()[:, 0] != UNASSIGNED
        if not clustered.any():
            return 1.0
        rates = self.copy_rates.numpy()[clustered].astype(np.float64)
        return float(np.mean(1.0 - np.prod(np.clip(1.0 - rates, 0.0, 1.0), axis=1)))

    def _emit(self, sentence: dict, copies: tf.Tensor) -> tf.data.Dataset:
        positions = tf.repeat(tf.range(tf.size(copies)), copies)
        cluster_labels = tf.gather(self.assignments.labels, sentence["index"])

        def chunk(position: tf.Tensor) -> dict:
            return {
                "features": sentence["features"][position][tf.newaxis],
                "labels": sentence["labels"],
                "has_labels": sentence["has_labels"],
                "index": sentence["index"],
                "cluster_labels": cluster_labels[position][tf.newaxis],
            }

        return tf.data.Dataset.from_tensor_slices(positions).map(chunk)

    def _epoch(self, epoch_seed: tf.Tensor) -> tf.data.Dataset:
        def count_copies(position: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            rates = tf.gather(self.copy_rates, data.parse_index(serialized))
            whole = tf.floor(rates)
            extra = _uniform(tf.shape(rates), epoch_seed, position) < rates - whole
            return serialized, tf.cast(whole, tf.int32) + tf.cast(extra, tf.int32)

        sentences = self._records(epoch_seed, repeat=True).enumerate().map(count_copies)
        # Sentences without any copy are dropped before their features are decoded.
        sentences = sentences.filter(lambda serialized, copies: tf.reduce_any(copies > 0))
        sentences = sentences.map(lambda serialized, copies: (self._parse(serialized), copies),
                                  num_parallel_calls=AUTOTUNE)
        chunks = sentences.flat_map(self._emit).shuffle(self.chunk_buffer, seed=epoch_seed + 3)
        return chunks.take(self.epoch_size)
