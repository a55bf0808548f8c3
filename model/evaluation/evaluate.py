"""Evaluates trained jobs the paper's way and runs its analyses (Sec. 4.3, 5.1-5.3).

    python -m model.evaluate --data-dir OUT --job-dir JOB [--split test] [--subsets 4] --output EVAL \
        [--compare JOB2 ...] [--transition-features embeddings|cluster-features] [--no-transition] [--no-tsne] \
        [--no-probe]

Writes into EVAL: ``metrics.json`` (scores, sub-set CCCs and the analyses of JOB, the
same for every compared job under ``compared``), ``predictions.csv`` (every sentence of
every job), ``tsne.csv`` (the t-SNE coordinates) and the PNG figures; prints a table.
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from model.evaluation import analyses
from model.evaluation import plots
from model.evaluation.metrics import sample_std, split_scores, subset_ccc, subset_ids
from model.progress import SILENT, Reporter
from pipeline.params import ATTRIBUTES

if TYPE_CHECKING:  # TensorFlow (through these) where used, so that --help answers at once
    from model.training.job_folder import TrainedJob
    from model.evaluation.split_predictions import SplitPredictions


@dataclasses.dataclass
class JobResult:
    """One evaluated job: its JSON report plus the arrays the figures and CSVs need."""

    job: TrainedJob
    label: str
    predictions: SplitPredictions
    subsets: np.ndarray
    report: dict[str, Any]
    chunks: analyses.ChunkOutputs | None = None
    assignments: np.ndarray | None = None
    ratios: np.ndarray | None = None
    tsne_points: np.ndarray | None = None
    tsne_xy: np.ndarray | None = None


def log(message: str) -> None:
    print(message, flush=True)


REPORTER = Reporter(log=log)
"""Prediction, chunk outputs, K-means and t-SNE: counts and time left on a terminal, a line when done."""


def level_confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[3, 3] counts: true level (row) against predicted level (column), low / middle / high."""
    matrix = np.zeros((len(analyses.LEVELS), len(analyses.LEVELS)), np.int64)
    np.add.at(matrix, (analyses.emotion_levels(truth), analyses.emotion_levels(predicted)), 1)
    return matrix


def json_ready(value: Any) -> Any:
    """Non-finite floats become null: strict JSON readers reject NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, value: Any) -> None:
    with open(path, "w") as handle:
        json.dump(json_ready(value), handle, indent=2)
        handle.write("\n")


def score_job(job: TrainedJob, split: str, subsets: int, seed: int, batch_size: int = 64,
              reporter: Reporter = SILENT) -> tuple[SplitPredictions, np.ndarray, dict[str, Any]]:
    """Predicts ``split`` with the job's best weights; scores it whole and on seeded sub-sets."""
    from model.evaluation.split_predictions import output_of, predict_split

    if split not in job.metadata.splits:
        raise ValueError(f"split {split!r} is not in {job.data_dir} (present: {sorted(job.metadata.splits)})")
    predict = output_of(job.infer, "predictions")
    with reporter.counting(f"  {split} predictions", job.metadata.splits[split].count, "sentences") as progress:
        predictions = predict_split(predict, job.data_dir, split, job.metadata, job.config.attributes, batch_size,
                                    progress)
    ids = subset_ids(predictions.indices, subsets, seed)
    per_subset = subset_ccc(predictions, ids)
    report = {
        "split": split,
        "sentences": int(len(predictions.indices)),
        "attributes": list(predictions.attributes),
        "scores": split_scores(predictions),
        "level_confusion": {"levels": list(analyses.LEVELS), "rows": "true level", "columns": "predicted level",
                            "counts": {a: level_confusion(predictions.truth(a), predictions.predicted(a)).tolist()
                                       for a in predictions.attributes}},
        "subsets": {"count": subsets, "seed": seed, "sizes": np.bincount(ids, minlength=subsets).tolist(),
                    "ccc": per_subset,
                    "ccc_mean": {a: float(np.mean(v)) for a, v in per_subset.items()},
                    "ccc_std": {a: sample_std(v) for a, v in per_subset.items()}},
    }
    return predictions, ids, report


def job_description(job: TrainedJob) -> dict[str, Any]:
    config = job.config
    return {"job_dir": job.job_dir, "data_dir": job.data_dir, "model": config.model,
            "paper_name": config.variant.paper_name or config.model, "setting": config.setting,
            "seed": config.seed, "clusters": config.clusters if config.variant.clustering else None,
            "best_epoch": job.best_epoch}


def job_labels(jobs: Sequence[TrainedJob]) -> list[str]:
    """'Temp-GRU (SSL)'; the job folder (or its whole path) is added where two jobs would read the same."""
    labels = [f"{job.config.variant.paper_name or job.config.model} ({job.config.setting.upper()})" for job in jobs]
    folders = [os.path.basename(job.job_dir.rstrip("/")) for job in jobs]
    return [label if labels.count(label) == 1 else
            f"{label} [{folder if folders.count(folder) == 1 else job.job_dir}]"
            for label, folder, job in zip(labels, folders, jobs)]


def clustering_basis(job: TrainedJob, option: str = analyses.DEFAULT_TRANSITION_FEATURES) -> tuple[str, int, str]:
    """(output to cluster, Q, why) for ``--transition-features option``.

    ``embeddings``: the encoder's chunk embeddings h (Eq. 4), as the paper's Sec. 5.2;
    ``cluster-features``: what training clusters, after the temporal net. Q is the job's,
    or 10 without a cluster head, which also has no cluster features: h then.
    """
    if not job.config.variant.clustering:
        return (analyses.EMBEDDINGS, analyses.NO_HEAD_CLUSTERS,
                f"the model has no cluster head: K-means (Q={analyses.NO_HEAD_CLUSTERS}) on the encoder's chunk "
                "embeddings h")
    clusters = job.config.clusters
    if analyses.TRANSITION_FEATURES[option] == analyses.CLUSTER_FEATURES:
        return (analyses.CLUSTER_FEATURES, clusters,
                f"K-means (Q={clusters}, the job's) on the cluster head's pre-activation features of every chunk, "
                "the features training clusters (after the temporal net where there is one)")
    return (analyses.EMBEDDINGS, clusters,
            f"K-means (Q={clusters}, the job's) on the encoder's chunk embeddings h (Eq. 4), as the paper")


def transition_report(result: JobResult, option: str, feature: str, clusters: int, basis: str, seed: int,
                      iterations: int) -> dict[str, Any]:
    ratios = result.ratios
    chunks = result.assignments.shape[1]
    return {"features": feature, "transition_features": option, "clusters": clusters, "seed": seed,
            "kmeans_iterations": iterations,
            "basis": basis, "sentences": int(len(ratios)), "chunks": chunks,
            "mean": float(ratios.mean()), "median": float(np.median(ratios)), "std": float(ratios.std()),
            "distribution": analyses.ratio_distribution(ratios, chunks),
            "per_sentence": dict(zip(result.chunks.utt_ids.tolist(), ratios.tolist()))}


def run_analyses(result: JobResult, args: argparse.Namespace) -> None:
    """Transition ratio, t-SNE and linear probe for one job, as the flags ask."""
    job = result.job
    feature, clusters, basis = clustering_basis(job, args.transition_features)
    names = sorted({analyses.EMBEDDINGS, feature})
    with REPORTER.counting(f"  chunk outputs of the {args.split} split", job.metadata.splits[args.split].count,
                           "sentences") as progress:
        result.chunks = analyses.chunk_outputs(job.infer, job.data_dir, args.split, job.metadata.params, names,
                                               args.batch_size, progress)
    if args.transition or args.tsne:
        num, chunks, _ = result.chunks.outputs[feature].shape
        with REPORTER.phase(f"  K-means (Q={clusters}) on {num * chunks:,} chunks"):
            result.assignments = analyses.cluster_chunks(result.chunks.outputs[feature], clusters, args.seed,
                                                         job.config.kmeans_iterations)
        result.ratios = analyses.transition_ratios(result.assignments)
    if args.transition:
        result.report["transition_ratio"] = transition_report(result, args.transition_features, feature, clusters,
                                                              basis, args.seed, job.config.kmeans_iterations)
        log(f"  transition ratio: mean {result.ratios.mean():.3f} (K-means, Q={clusters}, on {feature})")
    if args.tsne:
        embeddings = result.chunks.outputs[analyses.EMBEDDINGS]
        num, chunks, dim = embeddings.shape
        result.tsne_points = analyses.subsample(num * chunks, args.tsne_max_points, args.seed)
        with REPORTER.phase(f"  t-SNE of {len(result.tsne_points):,} chunk embeddings"):
            result.tsne_xy = analyses.tsne_map(embeddings.reshape(num * chunks, dim)[result.tsne_points], args.seed)
        levels = tsne_levels(result, args.tsne_attribute)
        result.report["tsne"] = {
            "features": analyses.EMBEDDINGS, "attribute": args.tsne_attribute, "points": int(len(result.tsne_points)),
            "of_chunks": int(num * chunks), "clusters": clusters, "clustered_on": feature, "seed": args.seed,
            "level_counts": {name: int(np.count_nonzero(levels == i)) for i, name in enumerate(analyses.LEVELS)}}
    if args.probe:
        result.report["linear_probe"] = probe_report(result, args)


def tsne_levels(result: JobResult, attribute: str) -> np.ndarray:
    """Emotion level of each t-SNE point: its sentence's label (every chunk shares it, as the paper)."""
    chunks = result.chunks.outputs[analyses.EMBEDDINGS].shape[1]
    sentence_levels = analyses.emotion_levels(result.chunks.labels[:, ATTRIBUTES.index(attribute)])
    return np.repeat(sentence_levels, chunks)[result.tsne_points]


def probe_report(result: JobResult, args: argparse.Namespace) -> dict[str, Any]:
    """Linear probe per attribute: trained on the train split's sentence embeddings, scored on ``split``."""
    job = result.job
    if "train" not in job.metadata.splits:
        reason = f"{job.data_dir} has no train split to fit the probe on"
        return {"skipped": reason, **{a: {"macro_f1": None, "accuracy": None, "skipped": reason} for a in ATTRIBUTES}}
    start = time.perf_counter()
    with REPORTER.counting("  chunk outputs of the train split (probe)", job.metadata.splits["train"].count,
                           "sentences") as progress:
        train = analyses.chunk_outputs(job.infer, job.data_dir, "train", job.metadata.params, [analyses.EMBEDDINGS],
                                       args.batch_size, progress)
    train_x = train.outputs[analyses.EMBEDDINGS].mean(axis=1)
    test_x = result.chunks.outputs[analyses.EMBEDDINGS].mean(axis=1)
    report: dict[str, Any] = {"features": "mean of the chunk embeddings h per sentence (frozen encoder)",
                              "classifier": "logistic regression on standardised features",
                              "train_split": "train", "train_sentences": int(len(train.indices))}
    for i, attribute in enumerate(ATTRIBUTES):
        report[attribute] = analyses.linear_probe(
            train_x, analyses.emotion_levels(train.labels[:, i]), test_x,
            analyses.emotion_levels(result.chunks.labels[:, i]), args.seed)
    scores = ", ".join(f"{a} {number(report[a]['macro_f1'])}" if report[a]["macro_f1"] is not None else f"{a} -"
                       for a in ATTRIBUTES)
    log(f"  linear probe macro-F1: {scores} ({time.perf_counter() - start:.1f} s)")
    return report


def evaluate_jobs(args: argparse.Namespace) -> list[JobResult]:
    from model.training.job_folder import check_trained_on, load_job

    jobs = []
    for job_dir in [args.job_dir, *args.compare]:
        log(f"loading {job_dir}")
        jobs.append(check_trained_on(load_job(job_dir, args.data_dir)))
    results = []
    for job, label in zip(jobs, job_labels(jobs)):
        start = time.perf_counter()
        log(f"{label}: predicting the {args.split} split")
        predictions, ids, report = score_job(job, args.split, args.subsets, args.seed, args.batch_size, REPORTER)
        result = JobResult(job, label, predictions, ids, {**job_description(job), "label": label, **report})
        if args.transition or args.tsne or args.probe:
            run_analyses(result, args)
        log(f"{label}: done in {time.perf_counter() - start:.1f} s")
        results.append(result)
    return results


def draw_figures(results: Sequence[JobResult], args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, all jobs on each; returns {figure: file name} for metrics.json."""
    out = args.output
    colours = plots.job_colours([r.job.config.model for r in results])
    series = [plots.Series(r.label, colour) for r, colour in zip(results, colours)]
    figures: dict[str, Any] = {"scatter": {}}
    for attribute in results[0].predictions.attributes:
        having = [i for i, r in enumerate(results) if attribute in r.predictions.attributes]
        name = f"scatter_{attribute}.png"
        plots.prediction_scatter(
            os.path.join(out, name), attribute, args.split, [series[i] for i in having],
            [results[i].predictions.truth(attribute) for i in having],
            [results[i].predictions.predicted(attribute) for i in having],
            [results[i].report["scores"][attribute]["ccc"] for i in having])
        figures["scatter"][attribute] = name
        name = f"confusion_{attribute}.png"
        plots.level_confusion(os.path.join(out, name), attribute, args.split, [results[i].label for i in having],
                              [results[i].report["level_confusion"]["counts"][attribute] for i in having])
        figures.setdefault("confusion", {})[attribute] = name
    if args.transition:
        figures["transition_ratio"] = "transition_ratio.png"
        plots.transition_histogram(
            os.path.join(out, figures["transition_ratio"]), args.split, series,
            [r.report["transition_ratio"]["distribution"] for r in results],
            [r.report["transition_ratio"]["mean"] for r in results])
    if args.tsne:
        figures["tsne"] = "tsne.png"
        plots.tsne_grid(os.path.join(out, figures["tsne"]), args.tsne_attribute, [r.label for r in results],
                        [r.tsne_xy for r in results],
                        [r.assignments.reshape(-1)[r.tsne_points] for r in results],
                        [tsne_levels(r, args.tsne_attribute) for r in results])
    if args.probe:
        figures["linear_probe"] = "linear_probe.png"
        plots.probe_bars(os.path.join(out, figures["linear_probe"]), args.split, series,
                         [{a: r.report["linear_probe"][a]["macro_f1"] for a in ATTRIBUTES} for r in results])
    return figures


def write_predictions_csv(path: str, results: Sequence[JobResult]) -> None:
    """One row per job and sentence: truth on all attributes, predictions, sub-set, transition ratio."""
    columns = ["job", "label", "utt_id", "index", "subset", *[f"true_{a}" for a in ATTRIBUTES],
               *[f"pred_{a}" for a in ATTRIBUTES], "transition_ratio"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in results:
            p = r.predictions
            ratios = {} if r.ratios is None else dict(zip(r.chunks.indices.tolist(), r.ratios.tolist()))
            for row in range(len(p.indices)):
                index = int(p.indices[row])
                writer.writerow({
                    "job": r.job.job_dir, "label": r.label, "utt_id": p.utt_ids[row], "index": index,
                    "subset": int(r.subsets[row]),
                    **{f"true_{a}": f"{p.truth(a)[row]:.6g}" for a in ATTRIBUTES},
                    **{f"pred_{a}": f"{p.predicted(a)[row]:.6g}" for a in p.attributes},
                    "transition_ratio": f"{ratios[index]:.6g}" if index in ratios else ""})


def write_tsne_csv(path: str, results: Sequence[JobResult], attribute: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["job", "label", "utt_id", "chunk", "x", "y", "cluster", f"{attribute}_level"])
        for r in results:
            chunks = r.assignments.shape[1]
            levels = tsne_levels(r, attribute)
            for point, (x, y), level in zip(r.tsne_points, r.tsne_xy, levels):
                sentence, chunk = divmod(int(point), chunks)
                writer.writerow([r.job.job_dir, r.label, r.chunks.utt_ids[sentence], chunk, f"{x:.5g}", f"{y:.5g}",
                                 int(r.assignments[sentence, chunk]), analyses.LEVELS[level]])


def number(value: float) -> str:
    """Three decimals, with no '-0.000' for values that round to zero."""
    return f"{round(value, 3) + 0.0:.3f}" if math.isfinite(value) else "n/a"


def summary_table(results: Sequence[JobResult]) -> str:
    """The readable table printed at the end: scores per job and attribute, then the analyses."""
    lines = []
    for r in results:
        report = r.report
        subsets = report["subsets"]
        lines.append(f"\n{r.label}  ({report['job_dir']}, best epoch {report['best_epoch']}, "
                     f"{report['split']} split, {report['sentences']} sentences)")
        lines.append(f"  {'attribute':<10} {'CCC':>7} {'r':>7} {'RMSE':>7}   "
                     f"CCC on {subsets['count']} sub-sets (seed {subsets['seed']}): mean ± std")
        for attribute in [*report["attributes"], "mean"]:
            s = report["scores"][attribute]
            spread = (f"{number(subsets['ccc_mean'][attribute])} ± {number(subsets['ccc_std'][attribute])}"
                      if attribute in subsets["ccc_mean"] else "")
            lines.append(f"  {attribute:<10} {number(s['ccc']):>7} {number(s['pearson']):>7} {number(s['rmse']):>7}"
                         f"   {spread}".rstrip())
        if "transition_ratio" in report:
            t = report["transition_ratio"]
            lines.append(f"  transition ratio: mean {number(t['mean'])}, median {number(t['median'])} "
                         f"(Q={t['clusters']} on {t['features']})")
        if "linear_probe" in report:
            lines.append("  linear probe macro-F1: " + ", ".join(
                f"{a} " + ("-" if report["linear_probe"][a]["macro_f1"] is None
                           else number(report["linear_probe"][a]["macro_f1"])) for a in ATTRIBUTES))
    return "\n".join(lines)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for on/off flags, where "(default: True)" on ``--no-tsne`` misleads."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.evaluate", formatter_class=_HelpFormatter,
        description="Score a trained job on a split (CCC, Pearson r, RMSE, sub-set CCCs) and run the paper's "
                    "analyses: temporal consistency, t-SNE of the chunk embeddings, linear probe.")
    parser.add_argument("--data-dir", required=True, help="pipeline output the job was trained on")
    parser.add_argument("--job-dir", required=True, help="a finished trainer.py job")
    parser.add_argument("--output", required=True, help="local folder for metrics.json, CSVs and PNGs")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--subsets", type=int, default=4, help="random sub-sets of the split (the paper: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sub-sets, K-means, t-SNE and the probe")
    parser.add_argument("--compare", nargs="+", default=[], metavar="JOB",
                        help="further jobs, evaluated the same way and drawn on the same figures")
    parser.add_argument("--transition-features", type=lambda v: v.replace("_", "-"),
                        choices=tuple(analyses.TRANSITION_FEATURES), default=analyses.DEFAULT_TRANSITION_FEATURES,
                        help="what K-means clusters for the transition ratio (and the t-SNE colours): the encoder's "
                             "chunk embeddings h, as the paper, or the cluster head's features after the temporal "
                             "net, as training clusters")
    parser.add_argument("--no-transition", dest="transition", action="store_false",
                        help="skip the temporal-consistency analysis (transition ratio)")
    parser.add_argument("--no-tsne", dest="tsne", action="store_false", help="skip the t-SNE figure")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the linear probe")
    parser.add_argument("--tsne-attribute", choices=ATTRIBUTES, default="arousal",
                        help="attribute whose level (low/middle/high) colours the t-SNE")
    parser.add_argument("--tsne-max-points", type=int, default=2000,
                        help="chunks drawn at random for the t-SNE (t-SNE is quadratic-ish in points)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per inference batch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.training.job_folder import JobError

    if args.subsets < 1 or args.tsne_max_points < 4:
        print("model.evaluate: error: --subsets must be >= 1 and --tsne-max-points >= 4", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    try:
        results = evaluate_jobs(args)
    except (JobError, ValueError, FileNotFoundError) as error:
        print(f"model.evaluate: error: {error}", file=sys.stderr)
        return 2
    figures = draw_figures(results, args)
    write_predictions_csv(os.path.join(args.output, "predictions.csv"), results)
    if args.tsne:
        write_tsne_csv(os.path.join(args.output, "tsne.csv"), results, args.tsne_attribute)
    main_result, *compared = results
    write_json(os.path.join(args.output, "metrics.json"),
               {**main_result.report, "figures": figures, "compared": [r.report for r in compared]})
    print(summary_table(results))
    pngs = [name for figure in figures.values() for name in (figure.values() if isinstance(figure, dict) else [figure])]
    print(f"\nwritten to {args.output}: metrics.json, predictions.csv{', tsne.csv' if args.tsne else ''}, "
          + ", ".join(pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
