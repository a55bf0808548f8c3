"""What a finished job and an evaluation leave for people to read: JOB/train.log,
JOB/training_curves.png and model.evaluate's low/middle/high confusion matrices."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from model.evaluation import analyses
from model.evaluation import plots
from model.evaluation.evaluate import main as evaluate_main
from pipeline.metadata import Metadata
from pipeline.params import ATTRIBUTES


def assert_readable_png(path: Path, size: tuple[int, int]) -> None:
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == size, (path.name, image.shape)
    assert image.std() > 0.05, f"{path.name} looks blank"
    assert np.mean(image[..., :3].min(axis=-1) < 0.9) > 0.01, f"{path.name} has almost nothing drawn"


def test_a_finished_job_keeps_a_train_log_of_what_it_logged(trained_job: Path, tiny_features: Path) -> None:
    lines = (trained_job / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines[:3]
    text = [line[20:] for line in lines]
    splits = Metadata.load(str(tiny_features)).splits
    # --quiet: no running lines, but the trainer's own lines and each step's closing line.
    for split in ("unlabeled", "train"):
        embedded = [t for t in text if t.startswith(f"embedding {split}: ")]
        assert len(embedded) == 2, (split, embedded)  # one per epoch
        assert all(t.startswith(f"embedding {split}: {splits[split].count} sentences in ") for t in embedded)
        chunks = splits[split].count * 4
        assert sum(t.startswith(f"k-means on {chunks} {split} chunks, Q=10: done in ") for t in text) == 2
    assert [t.split(" | ")[0] for t in text if " | dev CCC " in t] == ["epoch 1/2", "epoch 2/2"]
    assert any(t.startswith("best epoch ") for t in text) and text[-1].startswith("SavedModel: ")
    assert text[0].startswith("log opened by process")


def test_a_finished_job_draws_its_training_curves(trained_job: Path) -> None:
    assert_readable_png(trained_job / "training_curves.png", (576, 1920))


def test_the_training_curves_draw_every_history_column_they_name(trained_job: Path, monkeypatch) -> None:
    rows = list(csv.DictReader((trained_job / "history.csv").open()))
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.setdefault("figure", figure))
    plots.training_curves("unused.png", rows, ATTRIBUTES, ["loss", "cluster_ce", "ccc_loss"], "Temp-GRU (SSL)", 2)
    ccc, loss, clusters = drawn["figure"].axes
    lines = {axes: {line.get_label(): line.get_ydata() for line in axes.get_lines()} for axes in (ccc, loss, clusters)}
    for attribute in ATTRIBUTES:
        np.testing.assert_allclose(lines[ccc][attribute], [float(r[f"dev_ccc_{attribute}"]) for r in rows])
    assert "mean" in lines[ccc] and "best epoch (2)" in lines[ccc]
    # Stage I has no CCC term, and its total equals its one term: neither is drawn twice.
    assert set(lines[loss]) == {"train total", "train cluster_ce", "train ccc_loss", "unlabeled cluster_ce"}
    np.testing.assert_allclose(lines[loss]["unlabeled cluster_ce"], [float(r["unlabeled_cluster_ce"]) for r in rows])
    nmi = lines[clusters]["train: NMI with previous epoch"]
    assert np.isnan(nmi[0]) and nmi[1] == pytest.approx(float(rows[1]["train_nmi"]))
    assert "unlabeled: size entropy / log Q" in lines[clusters]


def test_evaluate_draws_a_level_confusion_matrix_next_to_each_scatter(tmp_path: Path, tiny_features: Path,
                                                                      trained_job: Path) -> None:
    out = tmp_path / "eval"
    assert evaluate_main(["--data-dir", str(tiny_features), "--job-dir", str(trained_job), "--output", str(out),
                          "--no-transition", "--no-tsne", "--no-probe"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["figures"]["confusion"] == {a: f"confusion_{a}.png" for a in ATTRIBUTES}
    confusion = metrics["level_confusion"]
    assert confusion["levels"] == list(analyses.LEVELS)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    for attribute in ATTRIBUTES:
        truth = analyses.emotion_levels(np.array([float(r[f"true_{attribute}"]) for r in rows]))
        predicted = analyses.emotion_levels(np.array([float(r[f"pred_{attribute}"]) for r in rows]))
        expected = [[int(np.sum((truth == t) & (predicted == p))) for p in range(3)] for t in range(3)]
        assert confusion["counts"][attribute] == expected, attribute
        assert_readable_png(out / f"confusion_{attribute}.png", (552, 624))
