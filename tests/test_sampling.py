"""model.training.samplers: the samplers draw what paper Sec. 3.2-3.3 say, from real records."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.training.datasets import SplitSource
from model.training.samplers import UNASSIGNED, ChunkSampler, ClusterAssignments, PlainSampler, SentenceSampler
from model.training.split_cache import SplitCache
from model.training.algorithm import _sample_indices
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
    with pytest.raises(ValueError, match="unique"):
        assignments.update(np.array([1, 1]), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        assignments.update(np.array([6]), np.zeros((1, 2)), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        assignments.update(np.array([1]), np.array([[0, 2]]), 2)
    with pytest.raises(ValueError, match="shape"):
        assignments.update(np.array([1]), np.zeros((1, 3)), 2)


def test_refresh_needs_a_clustering_that_fits_the_split(source):
    with pytest.raises(ValueError, match=r"\[0, 230\)"):
        ChunkSampler(source).refresh(np.array([INDEX_SIZE]), np.zeros((1, C)), Q)


def test_draw_probability_is_sentence_weight_over_total_weight_and_zero_in_gaps(source, clustered):
    indices, labels = clustered
    sampler = SentenceSampler(source)
    assert sampler.probabilities() is None  # before any clustering: a plain permutation
    refreshed(sampler, clustered)
    sizes = np.bincount(labels.ravel())
    weights = (1.0 / sizes[labels]).sum(axis=1)
    probabilities = sampler.probabilities()
    np.testing.assert_allclose(probabilities[np.argsort(sampler.cache.index)], weights / weights.sum(), rtol=1e-12)
    sampler.refresh(indices[:50], labels[:50], Q)
    drawn = sampler.draw(seed=0, epoch=0)
    assert set(sampler.cache.index[drawn]) <= set(indices[:50])  # sentences left out are never drawn


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
    assert stats["drawn"] == len(np.unique(drawn[-1]["index"]))
    assert stats["rate"] == pytest.approx(stats["expected_rate"], abs=0.08)
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
    sampler = refreshed(ChunkSampler(source), clustered)
    n_chunks = source.count * C
    assert sampler.per_cluster() == n_chunks // Q + 1  # the reference's N*C/Q'+1
    (epoch,) = epochs(sampler.dataset(batch_size=64, seed=0), 1)
    assert len(epoch["index"]) == n_chunks
    assert epoch["features"].shape == (n_chunks, 1, *PARAMS.feature_shape[1:])
    assert epoch["cluster_labels"].shape == (n_chunks, 1)
    position = epoch["features"][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(epoch["features"][:, 0, 0, 1], epoch["index"])
    np.testing.assert_array_equal(epoch["cluster_labels"][:, 0], sampler.assignments.numpy()[epoch["index"], position])
    counts = np.bincount(epoch["cluster_labels"].ravel(), minlength=Q)
    assert counts.sum() == n_chunks and counts.min() >= sampler.per_cluster() - Q  # only the cut of Q' chunks
    raw = np.bincount(labels.ravel(), minlength=Q)
    assert raw.max() / raw.min() > 4
    (again,) = epochs(refreshed(ChunkSampler(source), clustered).dataset(64, seed=0), 1)
    np.testing.assert_array_equal(again["index"], epoch["index"])
    keys = epoch["index"] * C + position
    assert len(np.unique(keys)) / len(keys) == pytest.approx(sampler.acceptance_rate(), abs=0.05)


def test_chunk_sampler_never_emits_unassigned_chunks(source, clustered):
    indices, labels = clustered
    sampler = ChunkSampler(source)
    sampler.refresh(indices[:50], labels[:50], Q)
    (epoch,) = epochs(sampler.dataset(batch_size=64, seed=1), 1)
    assert set(epoch["index"]) <= set(indices[:50])
    assert UNASSIGNED not in epoch["cluster_labels"]


def test_plain_sampler_is_one_shuffled_pass(source):
    (epoch,) = epochs(PlainSampler(source).dataset(batch_size=64, seed=0), 1)
    assert sorted(epoch["index"]) == PRESENT.tolist()
    assert list(epoch["index"]) != sorted(epoch["index"])
    assert set(epoch) == {"features", "labels", "has_labels", "index"}


# At a size where passes over the files cannot be exact: a split of 2,000 sentences in 4
# shards, four times the records' shuffle buffer and 8,000 chunks, four times the old
# chunk buffer. Record i lies at place i // 4 of shard i % 4.
BIG = 2000
BIG_SHARDS = 4


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> SplitSource:
    directory = str(tmp_path_factory.mktemp("big"))
    write_split(directory, "train", list(range(BIG)), num_shards=BIG_SHARDS)
    return SplitSource(directory, "train", PARAMS, count=BIG, index_size=BIG)


def quartile_of(indices: np.ndarray) -> np.ndarray:
    """File-position quartile of record indices (their place inside their shard)."""
    return np.minimum(4 * (indices // BIG_SHARDS) // (BIG // BIG_SHARDS), 3)


def single_chunk_clustering() -> np.ndarray:
    """Clusters 2 and 3 over homogeneous sentences, 20 chunks of cluster 1 and one of cluster 0."""
    rng = np.random.default_rng(4)
    labels = np.repeat(rng.integers(2, 4, BIG)[:, None], C, axis=1)
    labels[rng.choice(BIG, 10, replace=False)[:, None], [0, 2]] = 1
    labels[BIG // 2, 1] = 0
    return labels.astype(np.int32)


def batch_copies(batches: list[np.ndarray]) -> int:
    return max(int(np.unique(keys, return_counts=True)[1].max()) for keys in batches)


def test_sentence_draw_has_no_file_position_bias_and_a_global_order(big_source):
    # 400 / 800 / 800 homogeneous sentences: weights 2:1:1, so passes with rejection
    # would need 5/3 passes per epoch and over-draw records early in the files.
    labels = np.repeat(np.random.default_rng(2).permutation(np.repeat([0, 1, 2], [400, 800, 800]))[:, None], C, 1)
    sampler = SentenceSampler(big_source)
    sampler.refresh(np.arange(BIG), labels.astype(np.int32), 3)
    drawn = epochs(sampler.dataset(batch_size=100, seed=1), 4)
    index = np.concatenate([epoch["index"] for epoch in drawn])
    weights = np.where(labels[:, 0] == 0, 2.0, 1.0)
    target = np.bincount(quartile_of(np.arange(BIG)), weights) / weights.sum()
    achieved = np.bincount(quartile_of(index), minlength=4) / len(index)
    np.testing.assert_allclose(achieved / target, 1.0, atol=0.08)
    for epoch in drawn:  # no drift from the files' front to their back within an epoch
        order = np.argsort(np.argsort(epoch["index"] // BIG_SHARDS))
        assert abs(np.corrcoef(order, np.arange(BIG))[0, 1]) < 0.1


def test_vanilla_draw_gives_every_cluster_its_count_and_spreads_copies_over_batches(big_source):
    labels = single_chunk_clustering()
    sampler = ChunkSampler(big_source)
    sampler.refresh(np.arange(BIG), labels, 4)
    batch = 64 * C
    (epoch,) = epochs(sampler.dataset(batch_size=batch, seed=2), 1)
    per_cluster = BIG * C // 4 + 1
    counts = np.bincount(epoch["cluster_labels"].ravel(), minlength=4)
    assert counts.sum() == BIG * C
    assert counts.max() <= per_cluster and counts.min() >= per_cluster - 4  # cut to N*C
    # The single chunk is a quarter of the draws: a global shuffle puts 64 +- 7 of it in
    # each batch of 256, at most about 80.
    keys = epoch["index"] * C + epoch["features"][:, 0, 0, 0].astype(int)
    batches = [keys[k:k + batch] for k in range(0, len(keys), batch)]
    assert batch_copies(batches) <= 100
    chunk_target = (1.0 / np.bincount(labels.ravel())[labels]).ravel()  # 1 / (Q' |cluster|), unnormalised
    target = np.bincount(quartile_of(np.arange(BIG * C) // C), chunk_target) / chunk_target.sum()
    achieved = np.bincount(quartile_of(epoch["index"]), minlength=4) / len(keys)
    np.testing.assert_allclose(achieved / target, 1.0, atol=0.08)


def test_plain_sampler_keeps_one_seeded_subset_and_reshuffles_it(big_source):
    subset = _sample_indices(big_source, 300, seed=7)
    assert len(subset) == 300 and np.array_equal(subset, _sample_indices(big_source, 300, seed=7))
    assert not np.array_equal(subset, _sample_indices(big_source, 300, seed=8))
    sampler = PlainSampler(big_source, subset=subset)
    assert sampler.source.count == 300
    dataset = sampler.dataset(batch_size=64, seed=0)
    assert dataset.cardinality() == 5
    drawn = [epoch["index"] for epoch in epochs(dataset, 3)]
    for order in drawn:
        np.testing.assert_array_equal(np.sort(order), subset)
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[1], drawn[2])
    embedded = np.concatenate([b["index"] for b in sampler.ordered_batches(64).as_numpy_iterator()])
    np.testing.assert_array_equal(np.sort(embedded), subset)  # re-clustering sees the same sentences
    assert set(SentenceSampler(big_source, subset=subset).draw(seed=0, epoch=0)) <= set(sampler.rows)


def test_reads_stay_within_one_split_per_epoch_with_a_single_chunk_cluster(big_source):
    labels = single_chunk_clustering()
    for kind, batch in ((SentenceSampler, 64), (ChunkSampler, 64 * C), (PlainSampler, 64)):
        sampler = kind(big_source)
        if kind is not PlainSampler:
            sampler.refresh(np.arange(BIG), labels, 4)
        before = sampler.records_read
        (epoch,) = epochs(sampler.dataset(batch_size=batch, seed=3), 1)
        assert len(epoch["index"]) == sampler.epoch_size
        assert sampler.records_read - before <= 1.1 * BIG, kind.__name__


def test_each_epoch_is_a_function_of_seed_and_epoch_and_a_restored_run_repeats_it(big_source, tmp_path):
    labels = single_chunk_clustering()
    sampler = SentenceSampler(big_source)
    sampler.refresh(np.arange(BIG), labels, 4)
    dataset = sampler.dataset(batch_size=128, seed=9)
    (first,) = epochs(dataset, 1)
    saved = tf.train.Checkpoint(epochs=sampler.epochs_started, assignments=sampler.assignments.labels).write(
        str(tmp_path / "ckpt"))
    (second,) = epochs(dataset, 1)
    assert not np.array_equal(first["index"], second["index"])
    np.testing.assert_array_equal(sampler.cache.index[sampler.draw(9, 1)], second["index"])
    resumed = SentenceSampler(big_source)  # a new process: only the checkpoint is known
    tf.train.Checkpoint(epochs=resumed.epochs_started, assignments=resumed.assignments.labels).restore(saved)
    (again,) = epochs(resumed.dataset(batch_size=128, seed=9), 1)
    np.testing.assert_array_equal(again["index"], second["index"])


def test_store_is_written_once_and_rebuilt_when_the_records_change(tmp_path):
    directory = str(tmp_path)
    write_split(directory, "train", [0, 1, 2, 3], num_shards=2)
    source = SplitSource(directory, "train", PARAMS, count=4, index_size=10)
    first = SplitCache.open(source)
    assert first.directory == str(tmp_path / "sampler-cache" / "train")
    np.testing.assert_array_equal(first.read(np.arange(4))[:, 0, 0, 1], first.index)
    built = os.path.getmtime(os.path.join(first.directory, "manifest.json"))
    assert os.path.getmtime(os.path.join(SplitCache.open(source).directory, "manifest.json")) == built
    write_split(directory, "train", [5, 6, 7, 8], num_shards=2)  # the pipeline re-run into the same folder
    rebuilt = SplitCache.open(source)
    np.testing.assert_array_equal(np.sort(rebuilt.index), [5, 6, 7, 8])
    np.testing.assert_array_equal(rebuilt.read(np.arange(4))[:, 0, 0, 1], rebuilt.index)
    with pytest.raises(ValueError, match="metadata says 5"):
        SplitCache.open(dataclasses.replace(source, count=5))
