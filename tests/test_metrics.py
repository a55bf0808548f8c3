"""model.metrics against scipy/numpy references: CCC, Pearson r, RMSE, sub-sets, t-tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from model.metrics import (attribute_scores, concordance, pearson, rmse, sample_std, significantly_better,
                           split_scores, subset_ccc, subset_ids, t_test)
from model.predictions import SplitPredictions
from pipeline.params import ATTRIBUTES


def reference_ccc(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Lin's CCC with population moments, written out in numpy."""
    covariance = np.mean((truth - truth.mean()) * (predicted - predicted.mean()))
    return 2 * covariance / (truth.var() + predicted.var() + (truth.mean() - predicted.mean()) ** 2)


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    truth = rng.uniform(1, 7, 200)
    return truth, 0.6 * truth + rng.normal(1.2, 0.8, 200)


def test_ccc_r_and_rmse_match_the_references(scores) -> None:
    truth, predicted = scores
    assert concordance(truth, predicted) == pytest.approx(reference_ccc(truth, predicted), abs=1e-9)
    assert pearson(truth, predicted) == pytest.approx(stats.pearsonr(truth, predicted).statistic, abs=1e-12)
    assert rmse(truth, predicted) == pytest.approx(math.sqrt(np.mean((truth - predicted) ** 2)), abs=1e-12)
    assert attribute_scores(truth, predicted) == {"ccc": concordance(truth, predicted),
                                                  "pearson": pearson(truth, predicted), "rmse": rmse(truth, predicted)}


def test_ccc_punishes_bias_and_scale_that_r_ignores(scores) -> None:
    truth, _ = scores
    assert concordance(truth, truth) == pytest.approx(1.0, abs=1e-9)
    shifted = truth + 1.0
    assert pearson(truth, shifted) == pytest.approx(1.0)
    assert concordance(truth, shifted) == pytest.approx(reference_ccc(truth, shifted), abs=1e-9)
    assert concordance(truth, shifted) < 0.9


def test_constant_predictions_give_ccc_zero_and_undefined_r(scores) -> None:
    truth, _ = scores
    constant = np.full_like(truth, 4.0)
    assert concordance(truth, constant) == 0.0
    assert math.isnan(pearson(truth, constant))
    assert rmse(truth, constant) == pytest.approx(math.sqrt(np.mean((truth - 4.0) ** 2)))


def test_split_scores_cover_each_attribute_and_their_mean(scores) -> None:
    truth, predicted = scores
    labels = np.stack([truth, truth[::-1], np.full_like(truth, 3.0)], axis=1)
    predictions = SplitPredictions(("arousal", "valence"), np.array([f"u{i}" for i in range(200)]),
                                   np.arange(200), labels, np.stack([predicted, predicted], axis=1))
    result = split_scores(predictions)
    assert list(result) == ["arousal", "valence", "mean"]
    assert result["valence"]["ccc"] == pytest.approx(reference_ccc(truth[::-1], predicted), abs=1e-9)
    for metric in ("ccc", "pearson", "rmse"):
        assert result["mean"][metric] == pytest.approx((result["arousal"][metric] + result["valence"][metric]) / 2)


def test_subsets_are_a_seeded_near_equal_partition_that_ignores_read_order() -> None:
    indices = np.arange(100, 143)
    ids = subset_ids(indices, 4, seed=7)
    assert sorted(np.bincount(ids).tolist()) == [10, 11, 11, 11]
    assert np.array_equal(ids, subset_ids(indices, 4, seed=7))
    assert not np.array_equal(ids, subset_ids(indices, 4, seed=8))
    order = np.random.default_rng(0).permutation(len(indices))
    assert np.array_equal(subset_ids(indices[order], 4, seed=7), ids[order])
    with pytest.raises(ValueError, match="cannot cut 3 sentences into 4"):
        subset_ids(np.arange(3), 4, seed=0)


def test_subset_ccc_is_the_ccc_of_each_subset(scores) -> None:
    truth, predicted = scores
    labels = np.stack([truth] * len(ATTRIBUTES), axis=1)
    predictions = SplitPredictions(("dominance",), np.array(["u"] * 200), np.arange(200), labels, predicted[:, None])
    ids = subset_ids(predictions.indices, 4, seed=0)
    values = subset_ccc(predictions, ids)["dominance"]
    assert len(values) == 4
    for k, value in enumerate(values):
        assert value == pytest.approx(reference_ccc(truth[ids == k], predicted[ids == k]), abs=1e-9)


def test_sample_std_is_numpys_with_one_degree_of_freedom() -> None:
    values = [0.51, 0.55, 0.49, 0.56]
    assert sample_std(values) == pytest.approx(np.std(values, ddof=1))
    assert sample_std([0.5]) == 0.0


def test_t_test_is_scipys_two_tailed_independent_test() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.55, 0.01, 20), rng.normal(0.54, 0.01, 20)
    assert t_test(a, b) == pytest.approx(stats.ttest_ind(a, b).pvalue)
    assert math.isnan(t_test([0.5], b))


def test_significance_needs_both_a_higher_mean_and_p_below_005() -> None:
    rng = np.random.default_rng(2)
    baseline = rng.normal(0.50, 0.01, 20)
    clearly_better = rng.normal(0.56, 0.01, 20)
    barely_different = baseline + rng.normal(0.001, 0.01, 20)
    assert significantly_better(clearly_better, baseline)
    assert not significantly_better(baseline, clearly_better)
    assert not significantly_better(barely_different, baseline)
    assert not significantly_better([0.5, 0.5], [0.5, 0.5])
    assert significantly_better([0.6, 0.6], [0.5, 0.5]) and t_test([0.6, 0.6], [0.5, 0.5]) == 0.0
