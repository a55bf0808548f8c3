"""model.experiments and model.evaluation.tables: the run plan, the paper's tables and markers, resuming."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from model.evaluation import tables
from model.evaluation.experiments import (Outcome, build_parser, main as experiments_main, plan, report, result_rows,
                               write_outputs)
from pipeline.params import ATTRIBUTES


def keyed(values) -> dict[tuple[int, int], float]:
    """Values in trial-major order -> {(trial, sub-set): value} over 4 sub-sets."""
    return {divmod(i, 4): float(v) for i, v in enumerate(values)}


def planted_samples() -> dict[tuple[str, str], dict[tuple[int, int], float]]:
    """20 arousal values per model: temp-gru clearly above every baseline, temp-cnn only above the
    reconstruction baselines, temp-trans indistinguishable from them."""
    rng = np.random.default_rng(0)
    means = {"regressor": 0.50, "ae": 0.50, "vae": 0.51, "ladder": 0.50, "vanilla": 0.55,
             "temp-gru": 0.60, "temp-cnn": 0.55, "temp-trans": 0.505}
    return {(model, "arousal"): keyed(rng.normal(mean, 0.01, 20)) for model, mean in means.items()}


def test_markers_follow_the_papers_two_significance_tests() -> None:
    samples = planted_samples()
    assert tables.markers("temp-gru", "arousal", samples) == "†*"
    assert tables.markers("temp-cnn", "arousal", samples) == "*"
    assert tables.markers("temp-trans", "arousal", samples) == ""
    assert tables.markers("vanilla", "arousal", samples) == "", "markers only on the proposed models"
    assert tables.markers("temp-gru", "valence", samples) == "", "no values, no marker"
    only_vanilla = {k: v for k, v in samples.items() if k[0] in ("vanilla", "temp-gru", "temp-cnn")}
    assert tables.markers("temp-gru", "arousal", only_vanilla) == "†", "no reconstruction baseline: no *"
    assert tables.markers("temp-cnn", "arousal", only_vanilla) == ""


def test_model_table_is_laid_out_like_tables_2_and_3() -> None:
    samples = planted_samples()
    samples[("temp-gru", "valence")] = keyed([0.1, 0.12, 0.11])
    samples[("vanilla", "valence")] = keyed([0.2, 0.21, 0.22])
    lines = tables.model_table("FSL", ["temp-gru", "temp-cnn", "vanilla", "regressor", "ae"], ["arousal", "valence"],
                               samples)
    assert lines[0] == "| Approach (FSL) | Aro.-CCC | Val.-CCC |"
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == ["*CNN-regressor*", "*CNN-AE*", "*vanilla DeepEmoCluster*", "*Temp-GRU*", "*Temp-CNN*"]
    gru = lines[2 + names.index("*Temp-GRU*")]
    gru_mean = np.mean(list(samples[("temp-gru", "arousal")].values()))
    assert f"**{gru_mean:.4f}**<sup>†*</sup>" in gru, "best arousal in bold, with both markers"
    assert "| 0.1100 |" in gru, "valence: not best, no baseline beaten"
    assert "**0.2100**" in lines[2 + names.index("*vanilla DeepEmoCluster*")]
    assert "| — |" in lines[2 + names.index("*CNN-AE*")], "no valence values for CNN-AE"


def test_sweep_table_is_laid_out_like_tables_4_to_6() -> None:
    samples = {("10", "arousal"): keyed([0.55, 0.56]), ("30", "arousal"): keyed([0.57, 0.58]),
               ("50", "arousal"): keyed([0.56, 0.57])}
    lines = tables.sweep_table("temp-trans", "clusters", ["10", "30", "50"], ["arousal"], samples)
    assert lines[0] == "| Temp-Trans | Aro.-CCC |"
    assert lines[2:] == ["| *Q=10* | 0.5550 |", "| *Q=30* | **0.5750** |", "| *Q=50* | 0.5650 |"]


def test_plan_names_one_job_per_model_seed_attribute_and_sweep_value(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--data-dir", "D", "--models", "temp-trans,vanilla", "--setting", "ssl",
                                      "--trials", "2", "--output", str(tmp_path), "--epochs", "3",
                                      "--sweep", "clusters=10,30", "--trainer-args", "--patience 2"])
    runs = plan(args)
    assert len(runs) == 2 * 2 * 2 * 3
    first = runs[0]
    assert first.name == "temp-trans-ssl-clusters10-seed0" and first.attributes == "arousal"
    assert first.job_dir == str(tmp_path / "runs" / "temp-trans-ssl-clusters10-seed0" / "arousal")
    assert first.argv[first.argv.index("--clusters") + 1] == "10"
    assert first.argv[-4:] == ("--epochs", "3", "--patience", "2")
    multitask = plan(build_parser().parse_args(["--data-dir", "D", "--models", "vanilla", "--setting", "fsl",
                                                "--trials", "1", "--output", "E", "--attributes", "all"]))
    assert [(r.name, r.job_dir) for r in multitask] == [("vanilla-fsl-seed0", "E/runs/vanilla-fsl-seed0")]
    clash = build_parser().parse_args(["--data-dir", "D", "--models", "vanilla", "--setting", "fsl", "--output", "E",
                                       "--trainer-args", "--seed 3"])
    with pytest.raises(ValueError, match="may not set --seed"):
        plan(clash)


def test_a_sweep_writes_one_table_per_model_and_every_value_to_csv(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--data-dir", "D", "--models", "temp-trans,temp-gru", "--setting", "ssl",
                                      "--trials", "2", "--output", str(tmp_path), "--attributes", "arousal",
                                      "--sweep", "clusters=10,30"])
    outcomes = [Outcome(run, "trained") for run in plan(args)]
    for outcome in outcomes:
        level = 0.5 + 0.01 * int(outcome.run.sweep_value) / 10 + 0.001 * outcome.run.seed
        outcome.evaluation = {"subsets": {"ccc": {"arousal": [level, level + 0.002]}}}
    outcomes[-1].status, outcomes[-1].evaluation, outcomes[-1].error = "failed", None, "trainer.py exited with 1"
    markdown = write_outputs(outcomes, args)
    assert "# Results: SSL, sweep of clusters" in markdown
    assert "| Temp-GRU | Aro.-CCC |\n|---|---:|\n| *Q=10* | 0.5115 |\n| *Q=30* | **0.5310** |" in markdown
    assert "| *Q=30* | **0.5315** |" in markdown, "Temp-Trans, Q=30: both seeds"
    assert "| *Q=30* | **0.5310** |" in markdown, "Temp-GRU, Q=30: seed 1 failed"
    assert "7 of 8 runs finished; 1 failed" in markdown
    rows = results(tmp_path)
    assert len(rows) == 7 * 2 and {r["sweep"] for r in rows} == {"clusters"}
    assert {r["sweep_value"] for r in rows} == {"10", "30"} and {r["setting"] for r in rows} == {"ssl"}
    assert (tmp_path / "results.png").exists()


def controlled_comparison(tmp_path: Path, test: str | None, trials: int = 5) -> tuple[list[Outcome], object]:
    """Vanilla and Temp-Triplet runs (arousal, 4 sub-sets) whose sub-sets differ far more than the
    models do; Temp-Triplet is 0.01 better on every sub-set of every trial."""
    argv = ["--data-dir", "D", "--models", "vanilla,temp-triplet", "--setting", "fsl", "--trials", str(trials),
            "--output", str(tmp_path), "--attributes", "arousal"]
    args = build_parser().parse_args(argv + (["--test", test] if test else []))
    rng = np.random.default_rng(5)
    difficulty, trial_effect = np.array([0.2, 0.5, 0.35, 0.6]), rng.normal(0, 0.02, trials)
    base = {(seed, s): difficulty[s] + trial_effect[seed] + rng.normal(0, 0.01) for seed in range(trials)
            for s in range(4)}
    outcomes = [Outcome(run, "trained") for run in plan(args)]
    for outcome in outcomes:
        gain = 0.01 if outcome.run.model == "temp-triplet" else 0.0
        outcome.evaluation = {"subsets": {"ccc": {"arousal": [base[(outcome.run.seed, s)] + gain
                                                              + rng.normal(0, 0.002) * (gain > 0)
                                                              for s in range(4)]}}}
    return outcomes, args


def results_md(outcomes: list[Outcome], args) -> str:
    return report(outcomes, args, result_rows(outcomes, args.setting, ""))


def triplet_row(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("| *Temp-Triplet* |"))


def test_results_md_names_the_significance_test_and_the_paired_test_matches_trial_and_subset(
        tmp_path: Path) -> None:
    default = results_md(*controlled_comparison(tmp_path / "default", None))
    assert "Significance test: `independent`, two-tailed Student's t-test for independent samples" in default
    assert "<sup>" not in triplet_row(default), "sub-set spread hides a 0.01 gain from the unpaired test"
    trials = results_md(*controlled_comparison(tmp_path / "trials", "trials"))
    assert "Significance test: `trials`" in trials and "per-trial means" in trials
    assert "<sup>" not in triplet_row(trials), "the shared trial effect hides it from 5 vs 5 trial means"
    paired = results_md(*controlled_comparison(tmp_path / "paired", "paired"))
    assert "Significance test: `paired`" in paired and "scipy.stats.ttest_rel" in paired
    assert "<sup>†</sup>" in triplet_row(paired), "matched by (trial, sub-set) the gain is significant"

    outcomes, args = controlled_comparison(tmp_path / "failed", "paired")
    outcomes[-1].status, outcomes[-1].evaluation, outcomes[-1].error = "failed", None, "trainer.py exited with 1"
    markdown = results_md(outcomes, args)
    assert "<sup>" not in triplet_row(markdown)
    assert ("No markers: Temp-Triplet (first) against vanilla DeepEmoCluster (second), arousal: the paired test "
            "needs the same (trial, sub-set) values for both models") in markdown
    assert "(trial 4, sub-set 0)" in markdown and "9 of 10 runs finished; 1 failed" in markdown


def results(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").open()))


def test_an_experiment_trains_scores_reports_failures_and_resumes(tmp_path: Path, tiny_features: Path,
                                                                    capsys) -> None:
    out = tmp_path / "exp"
    common = ["--data-dir", str(tiny_features), "--setting", "fsl", "--output", str(out), "--epochs", "1",
              "--batch-size", "4", "--attributes", "all"]
    status = experiments_main([*common, "--models", "regressor,temp-gru,no-such-model", "--trials", "2", "--inline"])
    assert status == 1, "a failed run makes the exit status non-zero"
    printed = capsys.readouterr().out
    assert "FAILED no-such-model-fsl-seed0" in printed

    rows = results(out)
    assert len(rows) == 2 * 2 * 4 * 3, "models x trials x sub-sets x attributes"
    assert {(r["model"], r["seed"]) for r in rows} == {(m, s) for m in ("regressor", "temp-gru") for s in "01"}
    assert {r["subset"] for r in rows} == {"0", "1", "2", "3"} and {r["attribute"] for r in rows} == set(ATTRIBUTES)
    assert all(-1 <= float(r["ccc"]) <= 1 for r in rows)
    evaluation = json.loads((out / "runs" / "temp-gru-fsl-seed1" / "evaluation.json").read_text())
    assert [float(r["ccc"]) for r in rows if r["model"] == "temp-gru" and r["seed"] == "1"
            and r["attribute"] == "valence"] == pytest.approx(evaluation["subsets"]["ccc"]["valence"], abs=1e-6)

    markdown = (out / "results.md").read_text()
    assert "| Approach (FSL) | Aro.-CCC | Val.-CCC | Dom.-CCC |" in markdown
    assert "| *CNN-regressor* |" in markdown and "| *Temp-GRU* |" in markdown
    assert "| *no-such-model* | — | — | — |" in markdown
    assert "4 of 6 runs finished; 2 failed" in markdown and "invalid choice: 'no-such-model'" in markdown
    status_records = {r["name"]: r for r in json.loads((out / "status.json").read_text())}
    assert status_records["temp-gru-fsl-seed0"]["status"] == "trained"
    assert status_records["no-such-model-fsl-seed1"]["status"] == "failed"
    assert (out / "results.png").stat().st_size > 10_000

    finished = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}
    assert len(finished) == 4
    # Re-run in the default mode (a trainer subprocess per run) with one more trial of one model:
    # the four finished runs are skipped, only the new seed trains.
    assert experiments_main([*common, "--models", "regressor", "--trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert "3 runs: 1 to train, 2 finished earlier, 0 cannot start" in printed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert (out / "runs" / "regressor-fsl-seed2" / "metrics.json").exists()
    assert "best epoch 1" in (out / "runs" / "regressor-fsl-seed2" / "train.log").read_text()
    assert {(r["model"], r["seed"]) for r in results(out)} == {("regressor", s) for s in "012"}
