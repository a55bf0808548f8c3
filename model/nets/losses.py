"""Loss terms of paper Eq. 3, 6 and 7: CCC, cluster cross-entropy and the temporal triplet loss.

Each term is a plain function of tensors, so a trainer composes a variant's objective
from the terms it needs. Triplets are sampled in-graph, independently per sentence and
per step, with no Python loop over the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from keras import ops

_CCC_EPSILON = 1e-12
"""Keeps CCC finite on constant inputs; far below any normal variance, so CCC stays exact."""


def ccc(y_true: Any, y_pred: Any) -> Any:
    """Concordance correlation coefficient over the batch axis: [N] -> [], [N, A] -> [A].

    2 cov / (var_t + var_p + (mean_t - mean_p)^2) with population statistics (ddof 0)
    throughout, unlike the reference, which mixed biased and unbiased variances.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    mean_true, mean_pred = ops.mean(y_true, axis=0), ops.mean(y_pred, axis=0)
    dev_true, dev_pred = y_true - mean_true, y_pred - mean_pred
    covariance = ops.mean(dev_true * dev_pred, axis=0)
    denominator = (ops.mean(ops.square(dev_true), axis=0) + ops.mean(ops.square(dev_pred), axis=0)
                   + ops.square(mean_true - mean_pred))
    return 2.0 * covariance / (denominator + _CCC_EPSILON)


def ccc_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean over attributes of 1 - CCC (the emotion term of Eq. 3)."""
    return ops.mean(1.0 - ccc(y_true, y_pred))


def cluster_cross_entropy(cluster_labels: Any, cluster_logits: Any) -> Any:
    """Mean sparse cross-entropy over all chunks: labels [B, C] int, logits [B, C, Q]."""
    return ops.mean(ops.sparse_categorical_crossentropy(cluster_labels, cluster_logits, from_logits=True))


def triplet_masks(num_chunks: int, window: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor [C], positive [C, C], negative [C, C]) boolean masks of valid choices.

    Positives of anchor a are the chunks p with 0 < |p - a| <= window // 2, negatives
    those with |n - a| > window // 2; anchors are the chunks with at least one of each.
    """
    half = window // 2
    index = np.arange(num_chunks)
    distance = np.abs(index[:, None] - index[None, :])
    positive = (distance > 0) & (distance <= half)
    negative = distance > half
    anchor = positive.any(axis=1) & negative.any(axis=1)
    if not anchor.any():
        raise ValueError(
            f"no valid triplet with {num_chunks} chunks and window {window}: an anchor needs a chunk "
            f"within +-{half} and one further away (need window >= 2 and num_chunks >= window // 2 + 2)"
        )
    return anchor, positive, negative


def _generator(seed: int | tf.random.Generator | None) -> tf.random.Generator:
    if isinstance(seed, tf.random.Generator):
        return seed
    if seed is None:
        return tf.random.get_global_generator()
    return tf.random.Generator.from_seed(seed)


def _masked_choice(mask: Any, scores: Any) -> Any:
    """Index of a uniformly drawn True entry along the last axis (argmax of masked uniform scores)."""
    return tf.argmax(tf.where(mask, scores, -1.0), axis=-1, output_type=tf.int32)


def sample_triplets(batch_size: Any, num_chunks: int, window: int = 4, per_sentence: int = 10,
                    seed: int | tf.random.Generator | None = None) -> tuple[Any, Any, Any]:
    """Draws (anchor, positive, negative) chunk indices, each int32 [batch_size, per_sentence].

    Every sentence gets its own draws at every call. ``seed`` is a ``tf.random.Generator``
    (create it outside any ``tf.function`` and pass it in a training step), an int (a fresh
    generator from that seed: the same draw every call) or None (TensorFlow's global generator).
    """
    anchor_mask, positive_mask, negative_mask = triplet_masks(num_chunks, window)
    scores = _generator(seed).uniform(tf.stack([3, batch_size, per_sentence, num_chunks]))
    anchor = _masked_choice(tf.constant(anchor_mask), scores[0])
    positive = _masked_choice(tf.gather(tf.constant(positive_mask), anchor), scores[1])
    negative = _masked_choice(tf.gather(tf.constant(negative_mask), anchor), scores[2])
    return anchor, positive, negative


def _euclidean(a: Any, b: Any) -> Any:
    """L2 distance over the last axis, with a zero (not NaN) gradient at zero distance."""
    squared = ops.sum(ops.square(a - b), axis=-1)
    nonzero = squared > 0
    return ops.where(nonzero, ops.sqrt(ops.where(nonzero, squared, 1.0)), 0.0)


def triplet_loss_from_indices(embeddings: Any, anchor: Any, positive: Any, negative: Any,
                              margin: float = 1.0) -> Any:
    """Mean over all B*k triplets of max(d(a, p) - d(a, n) + margin, 0) (Eq. 6).

    ``embeddings`` [B, C, D]; index tensors [B, k] pick chunks within each sentence.
    """
    def pick(index: Any) -> Any:
        return tf.gather(embeddings, index, batch_dims=1)

    anchors = pick(anchor)
    return ops.mean(ops.relu(_euclidean(anchors, pick(positive)) - _euclidean(anchors, pick(negative)) + margin))


def temporal_triplet_loss(embeddings: Any, window: int = 4, margin: float = 1.0, per_sentence: int = 10,
                          generator: int | tf.random.Generator | None = None) -> Any:
    """Eq. 6 on freshly drawn triplets: ``per_sentence`` per sentence of ``embeddings`` [B, C, D]."""
    embeddings = tf.convert_to_tensor(embeddings)
    num_chunks = embeddings.shape[1]
    if num_chunks is None:
        raise ValueError("temporal_triplet_loss needs a static number of chunks (axis 1)")
    indices = sample_triplets(tf.shape(embeddings)[0], num_chunks, window, per_sentence, seed=generator)
    return triplet_loss_from_indices(embeddings, *indices, margin=margin)
