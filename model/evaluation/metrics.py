"""Scores of the paper's protocol (Sec. 4.3): CCC, Pearson r, RMSE, random sub-sets, t-tests.

Every score is computed on the 1..7 scale over whole sets of sentences. CCC is
``model.nets.losses.ccc`` evaluated in float64, the one definition the trainer selects
models with, so evaluation never disagrees with training about what CCC means.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # TensorFlow and SciPy where used: model.experiments --help needs the constants only
    from model.evaluation.split_predictions import SplitPredictions

METRICS: tuple[str, ...] = ("ccc", "pearson", "rmse")
SIGNIFICANCE_LEVEL = 0.05
"""Two-tailed p-value below which one model counts as better than another (the paper's)."""
Key = tuple[int, int]
Keyed = Mapping[Key, float]
"""One model's values keyed by (trial, sub-set): tests pair values by key, never by list position."""


def concordance(truth: np.ndarray, predicted: np.ndarray) -> float:
    """CCC of two 1-D arrays (population statistics, as ``model.nets.losses.ccc``)."""
    import tensorflow as tf

    from model.nets.losses import ccc

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
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] != b[0] else math.nan
    return float(stats.ttest_ind(a, b).pvalue)


class SampleMismatch(ValueError):
    """Two models' values cannot be matched as a test needs (different trials or sub-sets)."""


def _keys_text(keys: Iterable[Key]) -> str:
    return ", ".join(f"(trial {trial}, sub-set {subset})" for trial, subset in sorted(keys))


def matched_keys(a: Keyed, b: Keyed) -> list[Key]:
    """The (trial, sub-set) keys of a paired test: both models must hold exactly the same ones."""
    if set(a) != set(b):
        raise SampleMismatch(
            "the paired test needs the same (trial, sub-set) values for both models; only the first has "
            f"{_keys_text(set(a) - set(b)) or 'none'}, only the second has {_keys_text(set(b) - set(a)) or 'none'}")
    return sorted(a)


def paired_t_test(a: Keyed, b: Keyed) -> float:
    """Two-tailed p-value of the paired t-test (``scipy.stats.ttest_rel``) over matched (trial, sub-set) values.

    Every model is scored on the same sub-sets and trial seeds, so the sub-set's own
    difficulty cancels in each difference. NaN for fewer than two pairs or all-zero
    differences; 0 for equal non-zero differences (scipy's limit).
    """
    from scipy import stats

    keys = matched_keys(a, b)
    first, second = np.array([a[k] for k in keys], np.float64), np.array([b[k] for k in keys], np.float64)
    differences = first - second
    if len(keys) < 2:
        return math.nan
    if np.ptp(differences) == 0:
        return 0.0 if differences[0] != 0 else math.nan
    return float(stats.ttest_rel(first, second).pvalue)


def trial_means(values: Keyed) -> dict[int, float]:
    """{trial: mean over its sub-sets}: one value per trained network."""
    by_trial: dict[int, list[float]] = {}
    for (trial, _), value in values.items():
        by_trial.setdefault(trial, []).append(value)
    return {trial: float(np.mean(v)) for trial, v in sorted(by_trial.items())}


def trials_t_test(a: Keyed, b: Keyed) -> float:
    """Two-tailed Student's t-test (``scipy.stats.ttest_ind``) over the two models' per-trial means.

    The trained network is the independent unit (5 vs 5 in the paper, 8 degrees of
    freedom). Trials are not paired: trial k of two models shares a seed, not initial
    weights or batch order. Every trial must hold the same sub-sets, so that sub-set
    difficulty is the same inside every mean.
    """
    subsets = {frozenset(s for t, s in values if t == trial) for values in (a, b) for trial, _ in values}
    if len(subsets) > 1:
        raise SampleMismatch("the trials test needs every trial of both models scored on the same sub-sets; found "
                             + " and ".join(str(sorted(s)) for s in sorted(subsets, key=sorted)))
    return t_test(list(trial_means(a).values()), list(trial_means(b).values()))


TESTS: dict[str, str] = {
    "independent": "two-tailed Student's t-test for independent samples over the sub-set x trial values of the "
                   "two models (scipy.stats.ttest_ind), as the paper",
    "paired": "two-tailed paired t-test over the values matched by (trial, sub-set) (scipy.stats.ttest_rel)",
    "trials": "two-tailed Student's t-test over the per-trial means, one value per trained network "
              "(scipy.stats.ttest_ind)",
}
"""The significance tests on offer, named as ``--test`` takes them, with what each does."""
DEFAULT_TEST = "independent"
"""The paper's: "20 values (4 subsets x 5 trials) ... compared using a two-tailed t-test"."""


def p_value(a: Keyed, b: Keyed, test: str = DEFAULT_TEST) -> float:
    """Two-tailed p-value of ``test`` (a key of ``TESTS``) comparing two models' keyed values."""
    if test == "independent":
        return t_test(list(a.values()), list(b.values()))
    if test == "paired":
        return paired_t_test(a, b)
    if test == "trials":
        return trials_t_test(a, b)
    raise ValueError(f"unknown significance test {test!r}; one of {', '.join(TESTS)}")


def significantly_better(a: Keyed, b: Keyed, level: float = SIGNIFICANCE_LEVEL, test: str = DEFAULT_TEST) -> bool:
    """``a`` has the higher mean and the two-tailed ``test`` rejects equal means at ``level``."""
    p = p_value(a, b, test)
    return bool(np.mean(list(a.values())) > np.mean(list(b.values())) and p < level)
