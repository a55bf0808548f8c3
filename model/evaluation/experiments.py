"""The paper's experiment protocol: every model x trial seed, scored on 4 random test sub-sets.

    python -m model.experiments --data-dir OUT --models vanilla,temp-gru,temp-cnn,temp-trans,temp-triplet,regressor \
        --setting fsl|ssl --trials 5 --output EXP [--epochs N] [--sweep clusters=10,30,50] \
        [--test independent|paired|trials]

Each run is one ``trainer.py`` job under ``EXP/runs/<model>-<setting>[-<sweep><value>]-seed<k>``
(one sub-folder per attribute when one model is trained per attribute, the default).
Finished runs (``metrics.json`` with the same settings) are skipped, so an interrupted
experiment is resumed by running the same command again; a failed run is logged, marked
in the results and does not stop the others. Writes ``EXP/results.md`` (the paper's
Tables 2-3, or 4-6 with ``--sweep``), ``EXP/results.csv`` (every CCC), ``EXP/results.png``
and ``EXP/status.json``. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from typing import Any, Sequence

from model.evaluation import metrics
from model.evaluation import plots
from model.evaluation import tables
from model.evaluation.evaluate import json_ready, score_job, write_json
from model.training import cli as trainer_cli
from model.training.job_folder import (CONFIG_FILE, EVALUATION_FILE, LOG_FILE, METRICS_FILE, is_finished,
                                       read_json, run_record, same_run)
from pipeline.params import ATTRIBUTES

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""What the trainer subprocess needs on its PYTHONPATH to import ``model``."""
CONTROLLED_FLAGS = ("--data-dir", "--job-dir", "--model", "--setting", "--attributes", "--seed", "--quiet")
"""Trainer flags the experiment sets itself; ``--trainer-args`` may not override them."""
CSV_COLUMNS = ("model", "setting", "sweep", "sweep_value", "seed", "subset", "attribute", "ccc")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer job of the experiment."""

    model: str
    seed: int
    attributes: str
    sweep_value: str
    name: str
    job_dir: str
    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.name + ("" if self.attributes == "all" else f" ({self.attributes})")


@dataclasses.dataclass
class Outcome:
    """What happened to a run in this invocation (``status.json`` holds one per run)."""

    run: Run
    status: str = "pending"
    error: str = ""
    seconds_train: float = 0.0
    evaluation: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        r = self.run
        return {"name": r.name, "model": r.model, "seed": r.seed, "attributes": r.attributes,
                "sweep_value": r.sweep_value, "job_dir": r.job_dir, "status": self.status, "error": self.error,
                "log": log_path if os.path.exists(log_path := os.path.join(r.job_dir, LOG_FILE)) else "",
                "seconds_train": round(self.seconds_train, 1),
                "command": "python trainer.py " + shlex.join(r.argv)}


def log(message: str) -> None:
    print(message, flush=True)


def parse_sweep(value: str | None) -> tuple[str, list[str]]:
    """'clusters=10,30,50' -> ('clusters', ['10', '30', '50']); the name is a trainer flag."""
    if not value:
        return "", [""]
    name, _, values = value.partition("=")
    name = name.strip().removeprefix("--")
    swept = [v.strip() for v in values.split(",") if v.strip()]
    if not name or not swept:
        raise ValueError(f"--sweep needs NAME=V1,V2,... (e.g. clusters=10,30,50), got {value!r}")
    if f"--{name}" in CONTROLLED_FLAGS:
        raise ValueError(f"--sweep {name}: the experiment sets --{name} itself")
    return name, swept


def attribute_runs(value: str) -> list[str]:
    """'each' -> one model per attribute (the reference); 'all' -> one multitask model; or a list."""
    if value in ("each", "all"):
        return list(ATTRIBUTES) if value == "each" else ["all"]
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown or not names:
        raise ValueError(f"--attributes must be each, all or a list of {ATTRIBUTES}, got {value!r}")
    return names


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run of the experiment, in the order they train: sweep value, model, seed, attribute."""
    sweep, values = parse_sweep(args.sweep)
    extra = shlex.split(args.trainer_args)
    clashing = [flag for flag in extra if flag.split("=")[0] in CONTROLLED_FLAGS + ((f"--{sweep}",) if sweep else ())]
    if clashing:
        raise ValueError(f"--trainer-args may not set {', '.join(clashing)}: the experiment sets them")
    common = [*(["--epochs", str(args.epochs)] if args.epochs else []),
              *(["--batch-size", str(args.batch_size)] if args.batch_size else []), *extra]
    runs = []
    for value in values:
        for model in args.models:
            for seed in range(args.trials):
                name = f"{model}-{args.setting}" + (f"-{sweep}{value}" if sweep else "") + f"-seed{seed}"
                for attributes in attribute_runs(args.attributes):
                    job_dir = os.path.join(args.output, "runs", name, *([] if attributes == "all" else [attributes]))
                    argv = ("--data-dir", args.data_dir, "--job-dir", job_dir, "--model", model, "--setting",
                            args.setting, "--attributes", attributes, "--seed", str(seed), "--quiet",
                            *([f"--{sweep}", value] if sweep else []), *common)
                    runs.append(Run(model, seed, attributes, value, name, job_dir, argv))
    return runs


def check_run(run: Run, metadata_json: str) -> tuple[str, str]:
    """('train' | 'skip' | 'fail', why) before anything runs: flags valid, job dir compatible.

    A job dir counts as this run's when its config.json records the settings and data
    that trainer.py would record now (the trainer's own check); it is finished when
    metrics.json is there too.
    """
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = trainer_cli.build_parser().parse_args(list(run.argv))
            config = trainer_cli.config_from_args(parsed)
    except SystemExit:
        return "fail", "invalid trainer arguments: " + errors.getvalue().strip().splitlines()[-1]
    except ValueError as error:
        return "fail", f"invalid trainer settings: {error}"
    config_path = os.path.join(run.job_dir, CONFIG_FILE)
    recorded = read_json(config_path)
    if recorded is None:
        return "train", ""
    if not same_run(recorded, json_ready(run_record(config, parsed.data_dir, metadata_json))):
        return "fail", f"{run.job_dir} holds a run with other settings or data (see {config_path}); use a new --output"
    return ("skip", "finished earlier") if is_finished(run.job_dir) else ("train", "resuming")


def train(run: Run, inline: bool) -> str:
    """Runs trainer.py for one run; returns '' on success, else the error. Output goes to the run's log."""
    os.makedirs(run.job_dir, exist_ok=True)
    log_path = os.path.join(run.job_dir, LOG_FILE)
    with open(log_path, "a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} python trainer.py {shlex.join(run.argv)}\n")
        handle.flush()
        if inline:
            import keras

            try:
                with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                    status = trainer_cli.main(list(run.argv))
            except SystemExit as error:
                status = error.code if isinstance(error.code, int) else 1
            except Exception as error:  # a crashed run must not stop the experiment
                traceback.print_exc(file=handle)
                return f"{type(error).__name__}: {error}"
            finally:
                keras.backend.clear_session()
        else:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([PROJECT_ROOT, os.environ.get("PYTHONPATH", "")]))
            status = subprocess.run([sys.executable, "-m", "model.training", *run.argv], stdout=handle,
                                    stderr=subprocess.STDOUT, env=env).returncode
    return "" if status == 0 else f"trainer.py exited with status {status}: {last_error_line(log_path)}"


def last_error_line(log_path: str) -> str:
    with open(log_path) as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def evaluate(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Sub-set CCCs of a finished run, cached in its job dir next to metrics.json."""
    import keras

    from model.training.job_folder import load_job

    path = os.path.join(run.job_dir, EVALUATION_FILE)
    settings = {"split": args.split, "subsets": args.subsets, "seed": args.subset_seed}
    if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(os.path.join(run.job_dir, METRICS_FILE)):
        with open(path) as handle:
            cached = json.load(handle)
        if all(cached.get(k) == v for k, v in settings.items()):
            return cached
    _, _, report = score_job(load_job(run.job_dir, args.data_dir), args.split, args.subsets, args.subset_seed)
    keras.backend.clear_session()
    evaluation = {**settings, **report}
    write_json(path, evaluation)
    return evaluation


def execute(runs: Sequence[Run], args: argparse.Namespace, decisions: Sequence[tuple[str, str]]) -> list[Outcome]:
    outcomes = [Outcome(run) for run in runs]
    to_train = sum(d == "train" for d, _ in decisions)
    log(f"{len(runs)} runs: {to_train} to train, {sum(d == 'skip' for d, _ in decisions)} finished earlier, "
        f"{sum(d == 'fail' for d, _ in decisions)} cannot start")
    for outcome, (decision, why) in zip(outcomes, decisions):
        if decision == "fail":
            outcome.status, outcome.error = "failed", why
            log(f"  FAILED {outcome.run.label}: {why}")
    trained_seconds: list[float] = []
    for i, (outcome, (decision, why)) in enumerate(zip(outcomes, decisions)):
        run = outcome.run
        prefix = f"[{i + 1}/{len(runs)}] {run.label}"
        if decision == "fail":
            continue
        if decision == "train":
            log(f"{prefix}: training{' (' + why + ')' if why else ''}, log {os.path.join(run.job_dir, LOG_FILE)}")
            start = time.perf_counter()
            error = train(run, args.inline)
            outcome.seconds_train = time.perf_counter() - start
            trained_seconds.append(outcome.seconds_train)
            if error:
                outcome.status, outcome.error = "failed", error
                log(f"{prefix}: FAILED after {outcome.seconds_train:.0f} s: {error}")
                continue
            left = to_train - len(trained_seconds)
            minutes = left * sum(trained_seconds) / len(trained_seconds) / 60
            eta = f", about {minutes:.0f} min of training left" if left else ""
            log(f"{prefix}: trained in {outcome.seconds_train:.0f} s{eta}")
        try:
            outcome.evaluation = evaluate(run, args)
        except Exception as error:  # a broken job must not stop the others
            outcome.status, outcome.error = "failed", f"evaluation failed: {type(error).__name__}: {error}"
            log(f"{prefix}: {outcome.error}")
            continue
        outcome.status = "trained" if decision == "train" else "skipped"
        scores = outcome.evaluation["subsets"]["ccc_mean"]
        log(f"{prefix}: {'finished earlier, ' if decision == 'skip' else ''}{args.split} CCC on "
            f"{args.subsets} sub-sets: " + ", ".join(f"{a} {v:.3f}" for a, v in scores.items()))
    return outcomes


def result_rows(outcomes: Sequence[Outcome], setting: str, sweep: str) -> list[dict[str, Any]]:
    rows = []
    for outcome in outcomes:
        if outcome.evaluation is None:
            continue
        run = outcome.run
        for attribute, values in outcome.evaluation["subsets"]["ccc"].items():
            for subset, value in enumerate(values):
                rows.append({"model": run.model, "setting": setting, "sweep": sweep, "sweep_value": run.sweep_value,
                             "seed": run.seed, "subset": subset, "attribute": attribute, "ccc": value})
    return rows


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "ccc": f"{row['ccc']:.6f}"} for row in rows)


def samples_by(rows: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, str], dict[metrics.Key, float]]:
    """{(row[key], attribute): {(trial seed, sub-set): CCC}}: the identity the paired tests match on."""
    samples: dict[tuple[str, str], dict[metrics.Key, float]] = {}
    for row in rows:
        values = samples.setdefault((str(row[key]), row["attribute"]), {})
        identity = (int(row["seed"]), int(row["subset"]))
        if identity in values:
            raise ValueError(f"two values for {row[key]}, {row['attribute']}, trial {identity[0]}, "
                             f"sub-set {identity[1]}")
        values[identity] = float(row["ccc"])
    return samples


def report(outcomes: Sequence[Outcome], args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> str:
    """results.md: the table(s), how they were made, the spread behind them and any failed run."""
    sweep, values = parse_sweep(args.sweep)
    setting = args.setting.upper()
    attributes = [a for a in ATTRIBUTES if any(row["attribute"] == a for row in rows)] or list(ATTRIBUTES)
    protocol = (f"Mean CCC over {args.subsets} random sub-sets (seed {args.subset_seed}) of the {args.split} split "
                f"x {args.trials} trials (seeds 0-{args.trials - 1}); "
                + ("one model per attribute" if args.attributes != "all" else "one multitask model per run")
                + ". Best per column in bold.")
    lines = [f"# Results: {setting}" + (f", sweep of {sweep}" if sweep else ""), ""]
    if sweep:
        for model in tables.paper_order(args.models):
            samples = samples_by([r for r in rows if r["model"] == model], "sweep_value")
            lines += [*tables.sweep_table(model, sweep, values, attributes, samples), ""]
        lines += [protocol, ""]
    else:
        samples = samples_by(rows, "model")
        try:
            table, unmatched = tables.model_table(setting, args.models, attributes, samples, args.test), ""
        except metrics.SampleMismatch as error:
            table, unmatched = tables.model_table(setting, args.models, attributes, samples, None), str(error)
            log(f"no significance markers: {unmatched}")
        lines += [*table, "", protocol,
                  f"Significance test: `{args.test}`, {metrics.TESTS[args.test]}; p < 0.05. "
                  "<sup>*</sup> significantly better than every reconstruction baseline present (CNN-AE, CNN-VAE, "
                  "CNN-LadderNet); <sup>†</sup> significantly better than every baseline present (those, "
                  "CNN-regressor and vanilla DeepEmoCluster). Markers only on the proposed Temp-* models.",
                  *([f"No markers: {unmatched}."] if unmatched else []), ""]
        ordered = tables.paper_order(args.models)
        lines += ["## Spread", "", *tables.spread_table("Approach", ordered, [tables.paper_name(m) for m in ordered],
                                                         attributes, samples), ""]
    failed = [o for o in outcomes if o.status == "failed"]
    lines += ["## Runs", "", f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished"
              + (f"; {len(failed)} failed (their values are missing above):" if failed else "."), ""]
    if failed:
        lines += ["| run | error | log |", "|---|---|---|"]
        for o in failed:
            log_path = os.path.join(o.run.job_dir, LOG_FILE)
            shown = log_path if os.path.exists(log_path) else "—"
            error = " ".join(o.error.replace("|", "/").split())
            lines.append(f"| {o.run.label} | {error} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def row_name(model: str, sweep: str, value: str) -> str:
    return tables.paper_name(model) + (f" {tables.SWEEP_SYMBOLS.get(sweep, sweep)}={value}" if sweep else "")


def write_outputs(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    sweep, values = parse_sweep(args.sweep)
    rows = result_rows(outcomes, args.setting, sweep)
    write_csv(os.path.join(args.output, "results.csv"), rows)
    write_json(os.path.join(args.output, "status.json"), [o.record() for o in outcomes])
    markdown = report(outcomes, args, rows)
    with open(os.path.join(args.output, "results.md"), "w") as handle:
        handle.write(markdown)
    if rows:
        names = [row_name(m, sweep, v) for m in tables.paper_order(args.models) for v in values]
        samples: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            name = row_name(row["model"], sweep, row["sweep_value"])
            samples.setdefault((name, row["attribute"]), []).append(float(row["ccc"]))
        plots.ccc_boxplot(os.path.join(args.output, "results.png"),
                          f"{args.split} CCC per sub-set and trial ({args.setting.upper()})",
                          [n for n in names if any(k[0] == n for k in samples)], tables.present_attributes(samples),
                          samples)
    return markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.experiments", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train every model for every trial seed, score each on random test sub-sets and write the "
                    "paper's results tables with t-test markers (resumable).")
    parser.add_argument("--data-dir", required=True, help="pipeline output")
    parser.add_argument("--models", required=True, type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                        help="comma-separated trainer.py --model names")
    parser.add_argument("--setting", choices=("fsl", "ssl"), required=True)
    parser.add_argument("--trials", type=int, default=5, help="runs per model, seeds 0..trials-1")
    parser.add_argument("--output", required=True, help="local experiment folder (runs/, results.*)")
    parser.add_argument("--epochs", type=int, help="trainer.py --epochs (its default when not given)")
    parser.add_argument("--batch-size", type=int, help="trainer.py --batch-size (its default when not given)")
    parser.add_argument("--sweep", help="NAME=V1,V2,...: one run per value of the trainer flag --NAME, e.g. "
                                        "clusters=10,30,50, triplet-weight=0.5,1,2,4, unlabeled-count=15000,50000")
    parser.add_argument("--attributes", default="each",
                        help="each: one model per attribute (the reference, 3x the runs); all: one multitask "
                             "model per run; or a comma list of attributes, one model each")
    parser.add_argument("--trainer-args", default="", help="further trainer.py flags for every run, as one string")
    parser.add_argument("--split", default="test", help="split scored (the paper's Tables 4-6 name dev)")
    parser.add_argument("--subsets", type=int, default=4, help="random sub-sets of the split per run")
    parser.add_argument("--subset-seed", type=int, default=0, help="seeds the sub-sets (the same for every run)")
    parser.add_argument("--test", choices=tuple(metrics.TESTS), default=metrics.DEFAULT_TEST,
                        help="significance test behind the table markers: independent (the paper's t-test over the "
                             "sub-set x trial values), paired (matched by trial and sub-set) or trials (over the "
                             "per-trial means)")
    parser.add_argument("--inline", action="store_true",
                        help="run trainer.py in this process (faster start) instead of one subprocess per run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.metadata import Metadata, MetadataError  # TensorFlow, after --help has answered

    try:
        if args.trials < 1 or args.subsets < 1:
            raise ValueError("--trials and --subsets must be >= 1")
        runs = plan(args)
    except ValueError as error:
        print(f"model.experiments: error: {error}", file=sys.stderr)
        return 2
    try:
        metadata_json = Metadata.load(args.data_dir).to_json()
    except MetadataError as error:
        print(f"model.experiments: data error: {error}", file=sys.stderr)
        return 2
    decisions = [check_run(run, metadata_json) for run in runs]
    if all(decision == "fail" for decision, _ in decisions):
        print(f"model.experiments: error: no run can start; the first: {decisions[0][1]}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    outcomes = execute(runs, args, decisions)
    markdown = write_outputs(outcomes, args)
    print("\n" + markdown)
    failed = sum(o.status == "failed" for o in outcomes)
    print(f"{len(runs) - failed}/{len(runs)} runs finished in {(time.perf_counter() - start) / 60:.1f} min; "
          f"results in {os.path.join(args.output, 'results.md')}, results.csv, results.png, status.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
