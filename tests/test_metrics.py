"""model.evaluation.metrics against scipy/numpy references: CCC, Pearson r, RMSE, sub-sets, t-tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from model.evaluation.metrics import (SampleMismatch, attribute_scores, concordance, p_value, paired_t_test, pearson, rmse,
                           sample_std, significantly_better, split_scores, subset_ccc, subset_ids, t_test,
                           trial_means, trials_t_test)
from model.evaluation.split_predictions import SplitPredictions
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


def keyed(values, subsets: int = 4) -> dict[tuple[int, int], float]:
    """Values in trial-major order -> {(trial, sub-set): value}, as ``model.experiments`` keys them."""
    return {divmod(i, subsets): float(v) for i, v in enumerate(values)}


def test_significance_needs_both_a_higher_mean_and_p_below_005() -> None:
    rng = np.random.default_rng(2)
    baseline = keyed(rng.normal(0.50, 0.01, 20))
    clearly_better = keyed(rng.normal(0.56, 0.01, 20))
    barely_different = {k: v + rng.normal(0.001, 0.01) for k, v in baseline.items()}
    assert significantly_better(clearly_better, baseline)
    assert not significantly_better(baseline, clearly_better)
    assert not significantly_better(barely_different, baseline)
    assert not significantly_better(keyed([0.5, 0.5]), keyed([0.5, 0.5]))
    assert significantly_better(keyed([0.6, 0.6]), keyed([0.5, 0.5])) and t_test([0.6, 0.6], [0.5, 0.5]) == 0.0


def subset_dominated() -> tuple[dict, dict]:
    """5 trials x 4 sub-sets where the sub-sets differ a lot (0.2 .. 0.6) and so do trials (the same
    trial effect for both models), but the model ``a`` beats ``b`` by 0.01 on every sub-set of every
    trial: significant when matched by (trial, sub-set), not as independent samples nor over trials."""
    rng = np.random.default_rng(4)
    difficulty = np.array([0.2, 0.5, 0.35, 0.6])
    trial_effect = rng.normal(0, 0.02, 5)
    b = {(t, s): float(difficulty[s] + trial_effect[t] + rng.normal(0, 0.01)) for t in range(5) for s in range(4)}
    a = {k: v + 0.01 + float(rng.normal(0, 0.002)) for k, v in b.items()}
    return a, b


def test_paired_test_is_scipys_ttest_rel_matched_by_trial_and_subset_not_by_position() -> None:
    a, b = subset_dominated()
    keys = sorted(a)
    expected = stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys]).pvalue
    assert paired_t_test(a, b) == pytest.approx(expected, rel=1e-12) and expected < 1e-10
    unpaired = stats.ttest_ind(list(a.values()), list(b.values())).pvalue
    assert p_value(a, b, "independent") == pytest.approx(unpaired, rel=1e-12) and unpaired > 0.5
    shuffled = dict(reversed(list(b.items())))
    assert p_value(a, shuffled, "paired") == pytest.approx(expected, rel=1e-12), "pairs follow the keys"
    assert significantly_better(a, b, test="paired") and not significantly_better(a, b)
    assert not significantly_better(b, a, test="paired"), "the lower mean is never better"
    with pytest.raises(SampleMismatch, match=r"only the first has \(trial 4, sub-set 3\)"):
        paired_t_test(a, {k: v for k, v in b.items() if k != (4, 3)})
    assert math.isnan(paired_t_test({(0, 0): 0.5}, {(0, 0): 0.4}))
    assert paired_t_test(keyed([0.6, 0.7]), keyed([0.5, 0.6])) == 0.0, "equal non-zero differences"


def test_trials_test_is_a_two_sample_test_over_the_per_trial_means() -> None:
    a, b = subset_dominated()
    means_a, means_b = trial_means(a), trial_means(b)
    assert list(means_a) == [0, 1, 2, 3, 4]
    assert means_a[2] == pytest.approx(np.mean([a[(2, s)] for s in range(4)]))
    expected = stats.ttest_ind(list(means_a.values()), list(means_b.values())).pvalue
    assert trials_t_test(a, b) == pytest.approx(expected, rel=1e-12) and p_value(a, b, "trials") == trials_t_test(a, b)
    assert expected > 0.05 and not significantly_better(a, b, test="trials")
    with pytest.raises(SampleMismatch, match="same sub-sets"):
        trials_t_test(a, {k: v for k, v in b.items() if k != (1, 2)})
    with pytest.raises(ValueError, match="unknown significance test 'welch'"):
        p_value(a, b, "welch")
