"""Scores of the paper's protocol (Sec. 4.3): CCC, Pearson r, RMSE, random sub-sets, t-tests.

Every score is computed on the 1..7 scale over whole sets of sentences. CCC is
``model.losses.ccc`` evaluated in float64, the one definition the trainer selects
models with, so evaluation never disagrees with training about what CCC means.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf
from scipy import stats

from model.losses import ccc
from model.predictions import SplitPredictions

METRICS: tuple[str, ...] = ("ccc", "pearson", "rmse")
SIGNIFICANCE_LEVEL = 0.05
"""Two-tailed p-value below which one model counts as better than another (the paper's)."""


def concordance(truth: np.ndarray, predicted: np.ndarray) -> float:
    """CCC of two 1-D arrays (population statistics, as ``model.losses.ccc``)."""
    return float(ccc(tf.constant(truth, tf.float64), tf.constant(predicted, tf.float64)))


def pearson(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (r is undefined there)."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    dev_t, dev_p = truth - truth.mean(), predicted - predicted.mean()
    denominator = math.sqrt(float((dev_t ** 2).sum() * (dev_p ** 2).sum()))
    return float((dev_t * dev_p).sum() / denominator) if denominator > 0 else math.nan


def rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    return float(np.sqrt(np.mean((truth - predicted) ** 2)))


def attribute_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {"ccc": concordance(truth, predicted), "pearson": pearson(truth, predicted),
            "rmse": rmse(truth, predicted)}


def split_scores(predictions: SplitPredictions) -> dict[str, dict[str, float]]:
    """{attribute: {ccc, pearson, rmse}} for each predicted attribute, plus their ``mean``."""
    scores = {a: attribute_scores(predictions.truth(a), predictions.predicted(a)) for a in predictions.attributes}
    scores["mean"] = {m: float(np.mean([scores[a][m] for a in predictions.attributes])) for m in METRICS}
    return scores


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with ddof 1, the usual spread of a few trial values; 0 for one value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def subset_ids(indices: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sub-set number (0..count-1) of each sentence: a seeded random cut into near-equal parts.

    The cut depends only on the set of record ``indices`` and the seed, not on the order
    the sentences were read in, so every model of an experiment is scored on the same
    sub-sets.
    """
    indices = np.asarray(indices)
    if count < 1 or count > len(indices):
        raise ValueError(f"cannot cut {len(indices)} sentences into {count} sub-sets")
    order = np.argsort(indices, kind="stable")
    shuffled = order[np.random.default_rng(seed).permutation(len(order))]
    ids = np.empty(len(indices), np.int64)
    for number, part in enumerate(np.array_split(shuffled, count)):
        ids[part] = number
    return ids


def subset_ccc(predictions: SplitPredictions, ids: np.ndarray) -> dict[str, list[float]]:
    """{attribute: [CCC of sub-set 0, 1, ...]} for the sub-set numbers ``ids``."""
    numbers = range(int(ids.max()) + 1)
    return {a: [concordance(predictions.truth(a)[ids == k], predictions.predicted(a)[ids == k]) for k in numbers]
            for a in predictions.attributes}


def t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-tailed p-value of Student's t-test for independent samples (``scipy.stats.ttest_ind``).

    NaN when it is undefined: fewer than two values on a side, or two equal constant
    samples; two different constant samples differ surely (p = 0, scipy's limit).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] != b[0] else math.nan
    return float(stats.ttest_ind(a, b).pvalue)


def significantly_better(a: Sequence[float], b: Sequence[float], level: float = SIGNIFICANCE_LEVEL) -> bool:
    """``a`` has the higher mean and the two-tailed t-test rejects equal means at ``level``."""
    p = t_test(a, b)
    return bool(np.mean(a) > np.mean(b) and p < level)
