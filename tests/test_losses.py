"""CCC, cluster cross-entropy and the temporal triplet loss against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.nets.losses import (
    ccc,
    ccc_loss,
    cluster_cross_entropy,
    sample_triplets,
    temporal_triplet_loss,
    triplet_loss_from_indices,
)


def ccc_reference(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Population-statistics CCC in float64, per column."""
    t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    cov = ((t - t.mean(0)) * (p - p.mean(0))).mean(0)
    return 2 * cov / (t.var(0) + p.var(0) + (t.mean(0) - p.mean(0)) ** 2)


@pytest.mark.parametrize("shape", [(200,), (64, 3)])
def test_ccc_matches_float64_reference(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.normal(4.0, 1.0, shape).astype("float32")
    y_pred = (0.6 * y_true + rng.normal(0.3, 0.8, shape)).astype("float32")
    result = np.asarray(ccc(y_true, y_pred))
    assert result.shape == shape[1:]
    np.testing.assert_allclose(result, ccc_reference(y_true, y_pred), atol=1e-5)
    expected_loss = np.mean(1 - ccc_reference(y_true, y_pred))
    np.testing.assert_allclose(np.asarray(ccc_loss(y_true, y_pred)), expected_loss, atol=1e-5)


def test_ccc_edge_cases() -> None:
    y = np.random.default_rng(1).standard_normal((50, 2)).astype("float32")
    constant = np.full_like(y, 0.3)
    assert np.asarray(ccc(y, constant)) == pytest.approx([0.0, 0.0], abs=1e-6)
    assert np.all(np.isfinite(ccc(constant, constant)))
    assert np.asarray(ccc(y, y)) == pytest.approx([1.0, 1.0], abs=1e-6)
    centred = y - y.mean(0)
    assert np.asarray(ccc(centred, -centred)) == pytest.approx([-1.0, -1.0], abs=1e-5)


def test_ccc_loss_gradient_is_finite_on_constant_predictions() -> None:
    y = tf.constant(np.random.default_rng(2).standard_normal((16, 1)), tf.float32)
    pred = tf.Variable(tf.fill([16, 1], 0.5))
    with tf.GradientTape() as tape:
        loss = ccc_loss(y, pred)
    assert np.all(np.isfinite(tape.gradient(loss, pred)))
    assert float(loss) == pytest.approx(1.0, abs=1e-6)


def test_cluster_cross_entropy_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 4, 5)).astype("float32")
    labels = rng.integers(0, 5, (3, 4)).astype("int32")
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_softmax, labels[..., None], -1).mean()
    assert float(cluster_cross_entropy(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_triplet_loss_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    embeddings = rng.standard_normal((3, 6, 5)).astype("float32")
    anchor, positive, negative = (np.asarray(t) for t in sample_triplets(3, 6, window=2, per_sentence=7, seed=5))
    embeddings[0, positive[0, 0]] = embeddings[0, anchor[0, 0]]  # a zero distance
    terms = []
    for b in range(3):
        for j in range(7):
            e = embeddings[b].astype(np.float64)
            d_pos = np.linalg.norm(e[anchor[b, j]] - e[positive[b, j]])
            d_neg = np.linalg.norm(e[anchor[b, j]] - e[negative[b, j]])
            terms.append(max(d_pos - d_neg + 0.5, 0.0))
    loss = triplet_loss_from_indices(embeddings, anchor, positive, negative, margin=0.5)
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)


def test_triplet_gradient_is_finite_at_zero_distance() -> None:
    embeddings = tf.Variable(tf.ones([2, 5, 4]))
    index = tf.constant([[0], [1]])
    with tf.GradientTape() as tape:
        loss = triplet_loss_from_indices(embeddings, index, index + 1, index + 3)
    assert float(loss) == pytest.approx(1.0)
    assert np.all(np.isfinite(tape.gradient(loss, embeddings)))


@pytest.mark.parametrize("num_chunks,window", [(11, 4), (5, 2), (4, 4), (7, 6), (11, 5)])
def test_sampled_triplets_respect_the_window(num_chunks: int, window: int) -> None:
    half = window // 2
    anchor, positive, negative = (np.asarray(t) for t in sample_triplets(
        64, num_chunks, window=window, per_sentence=50, seed=tf.random.Generator.from_seed(6)))
    assert anchor.shape == positive.shape == negative.shape == (64, 50)
    assert anchor.dtype == np.int32
    pos_gap, neg_gap = np.abs(positive - anchor), np.abs(negative - anchor)
    assert np.all((pos_gap > 0) & (pos_gap <= half)) and np.all(neg_gap > half)
    assert np.all((negative >= 0) & (negative < num_chunks)) and np.all((positive >= 0) & (positive < num_chunks))
    chunks = np.arange(num_chunks)
    gaps = np.abs(chunks[:, None] - chunks[None, :])
    valid_anchors = {a for a in chunks if np.any((gaps[a] > 0) & (gaps[a] <= half)) and np.any(gaps[a] > half)}
    assert set(anchor.ravel()) == valid_anchors  # every valid anchor is drawn, no other
    observed_pairs = set(zip(anchor.ravel(), negative.ravel()))
    assert observed_pairs == {(a, n) for a in valid_anchors for n in chunks if abs(n - a) > half}


@pytest.mark.parametrize("num_chunks,window", [(3, 4), (11, 1), (1, 4)])
def test_impossible_triplets_are_rejected(num_chunks: int, window: int) -> None:
    with pytest.raises(ValueError, match="no valid triplet"):
        sample_triplets(2, num_chunks, window=window)


def test_triplets_are_redrawn_per_call_and_per_sentence() -> None:
    generator = tf.random.Generator.from_seed(7)
    first = np.stack([np.asarray(t) for t in sample_triplets(8, 11, seed=generator)])
    second = np.stack([np.asarray(t) for t in sample_triplets(8, 11, seed=generator)])
    assert not np.array_equal(first, second)
    assert len({tuple(row) for row in first[0]}) > 1  # sentences draw independently
    again = np.stack([np.asarray(t) for t in sample_triplets(8, 11, seed=3)])
    np.testing.assert_array_equal(again, np.stack([np.asarray(t) for t in sample_triplets(8, 11, seed=3)]))


def test_temporal_triplet_loss_in_a_graph_matches_its_parts() -> None:
    embeddings = tf.constant(np.random.default_rng(8).standard_normal((4, 11, 16)), tf.float32)
    indices = sample_triplets(4, 11, seed=tf.random.Generator.from_seed(9))
    expected = float(triplet_loss_from_indices(embeddings, *indices))
    generator = tf.random.Generator.from_seed(9)
    loss = tf.function(lambda e: temporal_triplet_loss(e, generator=generator))
    assert float(loss(embeddings)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(embeddings)) != pytest.approx(expected, rel=1e-6)
