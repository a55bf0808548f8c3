"""model.evaluate and model.evaluation.analyses: the paper's scores and analyses on a real trained job."""

from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from model.evaluation import analyses
from model.evaluation.evaluate import JobResult, build_parser, main as evaluate_main, run_analyses
from pipeline.metadata import Metadata
from pipeline.params import ATTRIBUTES
from tests.fixtures.jobs import train_job


@pytest.mark.parametrize("assignments, ratio", [
    ([0, 0, 0, 0], 0.0), ([0, 1, 0, 1], 1.0), ([0, 0, 1, 1], 1 / 3), ([3, 3, 3, 7, 7, 3], 0.4), ([5, 2], 1.0)])
def test_transition_ratio_counts_changes_between_consecutive_chunks(assignments, ratio) -> None:
    assert analyses.transition_ratios(np.array([assignments]))[0] == pytest.approx(ratio)


def test_transition_ratios_are_per_sentence_and_their_distribution_is_exact() -> None:
    assignments = np.array([[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1], [2, 2, 1, 1]])
    ratios = analyses.transition_ratios(assignments)
    assert ratios.tolist() == pytest.approx([0.0, 1.0, 1 / 3, 1 / 3])
    distribution = analyses.ratio_distribution(ratios, num_chunks=4)
    assert distribution["bins"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert distribution["counts"] == [1, 2, 0, 1]
    assert distribution["fractions"] == pytest.approx([0.25, 0.5, 0.0, 0.25])
    with pytest.raises(ValueError, match="chunks >= 2"):
        analyses.transition_ratios(np.zeros((3, 1), int))


def test_emotion_levels_follow_the_papers_three_bins() -> None:
    levels = analyses.emotion_levels(np.array([1.0, 2.99, 3.0, 4.5, 4.99, 5.0, 7.0]))
    assert levels.tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_cluster_chunks_finds_planted_clusters_and_keeps_sentence_shape() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    planted = rng.integers(0, 3, size=(20, 5))
    features = centres[planted] + rng.normal(0, 0.1, (20, 5, 2))
    found = analyses.cluster_chunks(features, 3, seed=1)
    assert found.shape == (20, 5)
    mapping = {p: set(found[planted == p].tolist()) for p in range(3)}
    assert all(len(ids) == 1 for ids in mapping.values()) and len(set.union(*mapping.values())) == 3
    with pytest.raises(ValueError, match="cannot form 200 clusters"):
        analyses.cluster_chunks(features, 200)


def test_linear_probe_separates_separable_levels_and_skips_a_single_level() -> None:
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 3, 90)
    points = np.eye(3)[levels] * 4 + rng.normal(0, 0.3, (90, 3))
    result = analyses.linear_probe(points[:60], levels[:60], points[60:], levels[60:])
    assert result["macro_f1"] == pytest.approx(1.0) and result["accuracy"] == pytest.approx(1.0)
    assert sum(result["test_counts"].values()) == 30
    noise = analyses.linear_probe(rng.normal(size=(60, 3)), levels[:60], rng.normal(size=(30, 3)), levels[60:])
    assert noise["macro_f1"] < 0.8
    single = analyses.linear_probe(points[:60], np.zeros(60, int), points[60:], levels[60:])
    assert single["macro_f1"] is None and "single emotion level" in single["skipped"]


def test_tsne_map_gives_two_coordinates_per_point_even_for_few_points() -> None:
    points = np.random.default_rng(0).normal(size=(12, 8))
    xy = analyses.tsne_map(points, seed=0)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    assert analyses.subsample(10, 20).tolist() == list(range(10))
    picked = analyses.subsample(100, 7, seed=3)
    assert len(set(picked.tolist())) == 7 and np.array_equal(picked, np.sort(picked))


def planted_infer(features: tf.Tensor) -> dict[str, tf.Tensor]:
    """A stand-in network: every chunk of a sentence has the same embedding h (a value of the
    sentence's features), while the cluster features sit at one of 4 far-apart places by chunk
    position, as a temporal net could make them. K-means on h: no transitions; on the cluster
    features: a change at (nearly) every step."""
    chunks = features.shape[1]
    level = tf.reduce_mean(features, axis=[1, 2, 3])[:, None, None]
    embeddings = tf.tile(tf.concat([level, 10 * level], axis=-1), [1, chunks, 1])
    position = tf.cast(tf.range(chunks), tf.float32)[None, :, None] * 10.0
    cluster_features = tf.concat([position + 0.01 * level, tf.zeros_like(position + level)], axis=-1)
    return {"embeddings": embeddings, "cluster_features": cluster_features}


def planted_transition(data_dir: Path, *flags: str) -> dict:
    metadata = Metadata.load(str(data_dir))
    config = types.SimpleNamespace(variant=types.SimpleNamespace(clustering=True), clusters=4, kmeans_iterations=20)
    job = types.SimpleNamespace(infer=planted_infer, data_dir=str(data_dir), metadata=metadata, config=config)
    result = JobResult(job, "planted", None, np.zeros(0), {})
    args = build_parser().parse_args(["--data-dir", str(data_dir), "--job-dir", "-", "--output", "-", "--no-tsne",
                                      "--no-probe", *flags])
    run_analyses(result, args)
    return result.report["transition_ratio"]


def test_transition_ratio_clusters_the_encoder_embeddings_by_default(tiny_features: Path) -> None:
    default = planted_transition(tiny_features)
    assert default["features"] == "embeddings" and default["transition_features"] == "embeddings"
    assert default["mean"] == 0.0 and default["sentences"] == 6 and default["clusters"] == 4
    assert "Eq. 4" in default["basis"]
    for flag in ("cluster-features", "cluster_features"):
        after_temporal_net = planted_transition(tiny_features, "--transition-features", flag)
        assert after_temporal_net["features"] == "cluster_features"
        assert after_temporal_net["transition_features"] == "cluster-features"
        assert min(after_temporal_net["per_sentence"].values()) >= 1 / 3, "every sentence changes cluster"


def assert_readable_png(path: Path) -> None:
    """Written, drawn on (not a blank canvas) and of a readable size."""
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] >= 300 and image.shape[1] >= 300, image.shape
    assert image.std() > 0.05, f"{path.name} looks blank"
    assert np.mean(image.min(axis=-1) < 0.9) > 0.01, f"{path.name} has almost nothing drawn"


@pytest.fixture(scope="module")
def regressor_job(tmp_path_factory: pytest.TempPathFactory, tiny_features: Path) -> Path:
    """A CNN-regressor (no cluster head) for arousal only, to compare against."""
    return train_job(tiny_features, tmp_path_factory.mktemp("eval_jobs") / "regressor", "--model", "regressor",
                     "--epochs", "1", "--batch-size", "4", "--attributes", "arousal")


def test_evaluate_scores_a_job_runs_the_analyses_and_overlays_a_compared_job(
        tmp_path: Path, tiny_features: Path, trained_job: Path, regressor_job: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert evaluate_main(["--data-dir", str(tiny_features), "--job-dir", str(trained_job), "--output", str(out),
                          "--compare", str(regressor_job), "--tsne-max-points", "20"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # Scores: the trainer's own test CCC (same best weights), plus r and RMSE, on the 1..7 scale.
    trainer_metrics = json.loads((trained_job / "metrics.json").read_text())
    assert metrics["model"] == "temp-gru" and metrics["split"] == "test" and metrics["sentences"] == 6
    for attribute in ATTRIBUTES:
        scores = metrics["scores"][attribute]
        assert scores["ccc"] == pytest.approx(trainer_metrics["test"]["ccc"][attribute], abs=1e-5)
        assert scores["rmse"] > 0 and set(scores) == {"ccc", "pearson", "rmse"}
    assert set(metrics["scores"]["mean"]) == {"ccc", "pearson", "rmse"}
    subsets = metrics["subsets"]
    assert subsets["count"] == 4 and sum(subsets["sizes"]) == 6
    assert all(len(subsets["ccc"][a]) == 4 for a in ATTRIBUTES)

    # Temporal consistency: K-means on the encoder embeddings h with the job's Q; C = 4 chunks.
    transition = metrics["transition_ratio"]
    assert transition["features"] == "embeddings" and transition["clusters"] == 10
    assert transition["transition_features"] == "embeddings" and metrics["tsne"]["clustered_on"] == "embeddings"
    assert transition["distribution"]["bins"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert sum(transition["distribution"]["counts"]) == 6 and len(transition["per_sentence"]) == 6
    per_sentence = np.array(list(transition["per_sentence"].values()))
    assert transition["mean"] == pytest.approx(per_sentence.mean())
    assert set(np.round(per_sentence * 3, 6)) <= {0.0, 1.0, 2.0, 3.0}

    assert metrics["tsne"]["points"] == 20 and metrics["tsne"]["of_chunks"] == 24
    assert metrics["tsne"]["attribute"] == "arousal" and sum(metrics["tsne"]["level_counts"].values()) == 20
    probe = metrics["linear_probe"]
    assert probe["train_sentences"] == 12
    for attribute in ATTRIBUTES:
        assert probe[attribute]["macro_f1"] is None or 0.0 <= probe[attribute]["macro_f1"] <= 1.0

    # The compared job has no cluster head: clustered on the encoder embeddings with Q = 10.
    (compared,) = metrics["compared"]
    assert compared["model"] == "regressor" and compared["attributes"] == ["arousal"]
    assert compared["transition_ratio"]["features"] == "embeddings" and compared["transition_ratio"]["clusters"] == 10
    assert "no cluster head" in compared["transition_ratio"]["basis"]

    figures = metrics["figures"]
    assert figures["scatter"] == {a: f"scatter_{a}.png" for a in ATTRIBUTES}
    for name in [*figures["scatter"].values(), figures["transition_ratio"], figures["tsne"], figures["linear_probe"]]:
        assert_readable_png(out / name)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 12 and {r["label"] for r in rows} == {metrics["label"], compared["label"]}
    assert all(r["pred_valence"] == "" for r in rows if r["label"] == compared["label"])
    assert len(list(csv.DictReader((out / "tsne.csv").open()))) == 40
    printed = capsys.readouterr().out
    assert "Temp-GRU (SSL)" in printed and "CNN-regressor (FSL)" in printed
    assert "transition ratio: mean" in printed and "(Q=10 on embeddings)" in printed


def test_evaluate_skips_analyses_on_request_and_rejects_a_folder_that_is_no_job(
        tmp_path: Path, tiny_features: Path, trained_job: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert evaluate_main(["--data-dir", str(tiny_features), "--job-dir", str(trained_job), "--output", str(out),
                          "--subsets", "2", "--seed", "3", "--no-transition", "--no-tsne", "--no-probe"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert not {"transition_ratio", "tsne", "linear_probe"} & set(metrics)
    assert metrics["subsets"]["count"] == 2 and metrics["subsets"]["seed"] == 3
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{kind}_{a}.png" for kind in ("confusion", "scatter") for a in ATTRIBUTES)
    assert evaluate_main(["--data-dir", str(tiny_features), "--job-dir", str(tmp_path), "--output",
                          str(tmp_path / "x")]) == 2
    assert "is not a training job directory" in capsys.readouterr().err
