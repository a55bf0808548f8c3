"""model.sampling: the samplers draw what paper Sec. 3.2-3.3 say, from real records."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.data import SplitSource
from model.sampling import UNASSIGNED, ChunkSampler, ClusterAssignments, PlainSampler, SentenceSampler
from tests.test_data import PARAMS, write_split

C = PARAMS.num_chunks
INDEX_SIZE = 230
Q = 3


PRESENT = np.sort(np.random.default_rng(1).choice(INDEX_SIZE, 200, replace=False))
"""Indices of the written records; the other 30 of [0, 230) are gaps (rejected inputs)."""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SplitSource:
    directory = str(tmp_path_factory.mktemp("records"))
    write_split(directory, "train", PRESENT.tolist(), num_shards=3)
    return SplitSource(directory, "train", PARAMS, count=len(PRESENT), index_size=INDEX_SIZE)


def imbalanced(n: int) -> np.ndarray:
    """Sentences 70% / 20% / 10% homogeneous in clusters 0 / 1 / 2, with 5% of chunks
    moved to a random cluster."""
    rng = np.random.default_rng(0)
    dominant = rng.permutation(np.repeat(np.arange(Q), [n - n * 3 // 10, n // 5, n // 10]))
    return np.where(rng.random((n, C)) < 0.95, dominant[:, None], rng.integers(0, Q, (n, C))).astype(np.int32)


def theory_share(labels: np.ndarray) -> np.ndarray:
    """Expected share of each cluster among the chunks of accepted sentences:
    sum_i p_i n_iq / (C sum_i p_i), p_i = w_i / max w, w_i = sum_c 1 / |cluster(i, c)|."""
    sizes = np.bincount(labels.ravel(), minlength=Q)
    weights = (1.0 / sizes[labels]).sum(axis=1)
    p = weights / weights.max()
    per_sentence = np.stack([(labels == q).sum(axis=1) for q in range(Q)], axis=1)
    return (p[:, None] * per_sentence).sum(axis=0) / (C * p.sum())


def epochs(dataset: tf.data.Dataset, n: int) -> list[dict]:
    """n epochs of a built dataset, each batched epoch concatenated into one dict."""
    out = []
    for _ in range(n):
        batches = list(dataset.as_numpy_iterator())
        out.append({key: np.concatenate([b[key] for b in batches]) for key in batches[0]})
    return out


def share(cluster_labels: np.ndarray) -> np.ndarray:
    return np.bincount(cluster_labels.ravel(), minlength=Q) / cluster_labels.size


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """The planted clustering: (indices, assignments [N, C])."""
    return PRESENT, imbalanced(len(PRESENT))


def refreshed(sampler, clustering: tuple[np.ndarray, np.ndarray], num_clusters: int = Q):
    sampler.refresh(*clustering, num_clusters)
    return sampler


def test_cluster_assignments_hold_ids_by_index_and_check_their_input():
    assignments = ClusterAssignments(6, 2)
    assignments.update(np.array([4, 0, 2]), np.array([[0, 1], [1, 1], [2, 1]]), num_clusters=4)
    np.testing.assert_array_equal(assignments.numpy(), [[1, 1], [-1, -1], [2, 1], [-1, -1], [0, 1], [-1, -1]])
    np.testing.assert_array_equal(assignments.cluster_sizes(), [1, 4, 1, 0])
    np.testing.assert_allclose(assignments.chunk_weights()[[0, 1, 4]], [[0.25, 0.25], [0, 0], [1, 0.25]])
    with pytest.raises(ValueError, match="unique"):
        assignments.update(np.array([1, 1]), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        assignments.update(np.array([6]), np.zeros((1, 2)), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        assignments.update(np.array([1]), np.array([[0, 2]]), 2)
    with pytest.raises(ValueError, match="shape"):
        assignments.update(np.array([1]), np.zeros((1, 3)), 2)


def test_refresh_needs_a_clustering_that_fits_the_split(source):
    with pytest.raises(ValueError, match="no chunk is assigned"):
        SentenceSampler(source).refresh(np.zeros(0), np.zeros((0, C)), Q)
    with pytest.raises(ValueError, match=r"\[0, 230\)"):
        ChunkSampler(source).refresh(np.array([INDEX_SIZE]), np.zeros((1, C)), Q)


def test_acceptance_is_sentence_weight_over_max_weight_and_zero_in_gaps(source, clustered):
    indices, labels = clustered
    sampler = refreshed(SentenceSampler(source), clustered)
    sizes = np.bincount(labels.ravel())
    weights = (1.0 / sizes[labels]).sum(axis=1)
    expected = np.zeros(INDEX_SIZE)
    expected[indices] = weights / weights.max()
    np.testing.assert_allclose(sampler.acceptance.numpy(), expected, rtol=1e-6)
    assert sampler.acceptance.numpy().max() == 1.0
    assert sampler.acceptance_rate() == pytest.approx(expected[indices].mean())


def test_sentence_sampler_balances_clusters_as_theory_says(source, clustered):
    indices, labels = clustered
    sampler = refreshed(SentenceSampler(source), clustered)
    drawn = epochs(sampler.dataset(batch_size=32, seed=0), 5)
    for epoch in drawn:
        assert len(epoch["index"]) == source.count  # exactly one split's worth per epoch
        assert epoch["features"].shape[1:] == PARAMS.feature_shape
        np.testing.assert_array_equal(epoch["features"][:, :, 0, 0], np.tile(np.arange(C), (source.count, 1)))
        np.testing.assert_array_equal(epoch["features"][:, 0, 0, 1], epoch["index"])
        np.testing.assert_array_equal(epoch["cluster_labels"], sampler.assignments.numpy()[epoch["index"]])
        assert set(epoch) == {"features", "labels", "has_labels", "index", "cluster_labels"}
    achieved = share(np.concatenate([e["cluster_labels"] for e in drawn]))
    raw = share(labels)
    expected = theory_share(labels)
    np.testing.assert_allclose(achieved, expected, atol=0.04)
    assert raw.max() / raw.min() > 4 and achieved.max() / achieved.min() < 1.6
    stats = sampler.acceptance_stats()
    assert stats["accepted"] == 5 * source.count
    assert stats["rate"] == pytest.approx(stats["expected_rate"], rel=0.1)
    assert stats["expected_rate"] == sampler.acceptance_rate()


def test_refresh_changes_the_next_epoch_of_the_same_dataset(source, clustered):
    indices, labels = clustered
    sampler = refreshed(SentenceSampler(source), clustered)
    dataset = sampler.dataset(batch_size=50, seed=3)
    rare = indices[:10]
    (before,) = epochs(dataset, 1)
    # New clustering: 10 sentences form cluster 1, all other chunks cluster 0.
    relabelled = np.where(np.isin(indices, rare)[:, None], 1, 0) * np.ones((1, C), np.int32)
    sampler.refresh(indices, relabelled, 2)
    (after,) = epochs(dataset, 1)
    np.testing.assert_array_equal(after["cluster_labels"], sampler.assignments.numpy()[after["index"]])
    # Theory: p(rare) = 1, p(other) = 10 / 190, so rare sentences are half of all draws.
    assert np.isin(before["index"], rare).mean() < 0.15
    assert np.isin(after["index"], rare).mean() == pytest.approx(0.5, abs=0.08)


def test_sentence_sampler_is_deterministic_for_a_seed_and_differs_between_epochs(source, clustered):
    def draw(seed: int) -> list[np.ndarray]:
        sampler = refreshed(SentenceSampler(source), clustered)
        return [e["index"] for e in epochs(sampler.dataset(batch_size=64, seed=seed), 2)]

    first, second = draw(11)
    again = draw(11)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, draw(12)[0])
    resumed = refreshed(SentenceSampler(source), clustered)
    resumed.epochs_started.assign(1)  # as restored from a checkpoint after one epoch
    (after_resume,) = epochs(resumed.dataset(batch_size=64, seed=11), 1)
    np.testing.assert_array_equal(after_resume["index"], second)


class DrawCounter(keras.Model):
    """Counts how often each index reaches a training step, in the graph Keras builds."""

    def __init__(self) -> None:
        super().__init__()
        self.draws = tf.Variable(tf.zeros([INDEX_SIZE], tf.int64), trainable=False)

    def train_step(self, batch: dict) -> dict:
        self.draws.scatter_add(tf.IndexedSlices(tf.ones_like(batch["index"]), batch["index"]))
        return {"sentences": tf.shape(batch["index"])[0]}


def test_keras_fit_sees_fresh_draws_per_call_and_the_refresh(source, clustered):
    indices, labels = clustered
    sampler = refreshed(SentenceSampler(source), clustered)
    dataset = sampler.dataset(batch_size=64, seed=5)
    model = DrawCounter()
    model.compile()

    def fit() -> np.ndarray:
        before = model.draws.numpy()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return model.draws.numpy() - before

    first, second = fit(), fit()
    assert first.sum() == second.sum() == source.count
    assert not np.array_equal(first, second)  # Keras rebuilds the dataset: no replay
    rare = indices[:10]
    sampler.refresh(indices, np.where(np.isin(indices, rare)[:, None], 1, 0) * np.ones((1, C), np.int32), 2)
    third = fit()
    assert third[rare].sum() / source.count == pytest.approx(0.5, abs=0.08)
    assert sampler.epochs_started.numpy() == 3


def test_chunk_sampler_gives_each_cluster_its_share_of_one_chunk_pseudo_sentences(source, clustered):
    indices, labels = clustered
    sampler = refreshed(ChunkSampler(source, chunk_buffer=256), clustered)
    n_chunks = source.count * C
    expected_copies = np.zeros((INDEX_SIZE, C))
    expected_copies[indices] = (n_chunks / Q) / np.bincount(labels.ravel())[labels]
    np.testing.assert_allclose(sampler.copy_rates.numpy(), expected_copies, rtol=1e-6)  # N*C/Q per cluster and pass
    (epoch,) = epochs(sampler.dataset(batch_size=64, seed=0), 1)
    assert len(epoch["index"]) == n_chunks
    assert epoch["features"].shape == (n_chunks, 1, *PARAMS.feature_shape[1:])
    assert epoch["cluster_labels"].shape == (n_chunks, 1)
    position = epoch["features"][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(epoch["features"][:, 0, 0, 1], epoch["index"])
    np.testing.assert_array_equal(epoch["cluster_labels"][:, 0], sampler.assignments.numpy()[epoch["index"], position])
    counts = np.bincount(epoch["cluster_labels"].ravel(), minlength=Q)
    np.testing.assert_allclose(counts, n_chunks / Q, rtol=0.15)
    raw = np.bincount(labels.ravel(), minlength=Q)
    assert raw.max() / raw.min() > 4
    (again,) = epochs(refreshed(ChunkSampler(source, chunk_buffer=256), clustered).dataset(64, seed=0), 1)
    np.testing.assert_array_equal(again["index"], epoch["index"])
    # A sentence is decoded unless none of its chunks gets a copy: 1 - prod(1 - min(r, 1)).
    rates = sampler.copy_rates.numpy()[indices].astype(np.float64)
    assert sampler.acceptance_rate() == pytest.approx(np.mean(1 - np.prod(np.clip(1 - rates, 0, 1), axis=1)))


def test_chunk_sampler_never_emits_unassigned_chunks(source, clustered):
    indices, labels = clustered
    sampler = ChunkSampler(source, chunk_buffer=64)
    sampler.refresh(indices[:50], labels[:50], Q)
    (epoch,) = epochs(sampler.dataset(batch_size=64, seed=1), 1)
    assert set(epoch["index"]) <= set(indices[:50])
    assert UNASSIGNED not in epoch["cluster_labels"]


def test_plain_sampler_is_one_shuffled_pass(source):
    (epoch,) = epochs(PlainSampler(source).dataset(batch_size=64, seed=0), 1)
    assert sorted(epoch["index"]) == PRESENT.tolist()
    assert list(epoch["index"]) != sorted(epoch["index"])
    assert set(epoch) == {"features", "labels", "has_labels", "index"}
