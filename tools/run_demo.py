"""``make demo``: the whole path on the embedded demo corpus, through the public commands.

Every step runs the command line a user would type (in a subprocess), so the demo proves
the documented interfaces, not private shortcuts: preprocessing (Beam), training two
models (Algorithm 1, with export), evaluation with the paper's analyses, and prediction
with the exported SavedModel. It ends with where the results are and a results table.

The demo corpus has 200 training sentences, about 250 times fewer than MSP-Podcast, so
the demo trains with ten times the paper's learning rates for a dozen epochs (flags, not
defaults): enough to learn the corpus' prosody cues in minutes on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model.training.allocator import fast_allocator_env  # noqa: E402
from model.training.job_folder import METRICS_FILE  # noqa: E402
DEMO_TRAINING = ["--attributes", "all", "--batch-size", "32", "--encoder-lr", "0.01", "--output-lr", "0.005"]
MODELS = (("temp-triplet", "ssl"), ("vanilla", "ssl"))
"""The paper's controlled comparison: Temp-Triplet and vanilla have the same network at inference,
so a difference in temporal consistency is the triplet loss's doing (a GRU smooths by construction)."""


def run_step(title: str, command: list[str]) -> None:
    """Runs one public command, streaming its output; stops the demo if it fails."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    env = fast_allocator_env(dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    status = subprocess.run(command, cwd=ROOT, env=env).returncode
    if status != 0:
        sys.exit(f"demo step '{title}' failed with exit status {status}")
    print(f"=== {title}: done in {time.perf_counter() - start:.0f} s", flush=True)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def results_table(output: Path) -> str:
    """Dev and test CCC per trained attribute of every model (1..7 scale), from its metrics.json."""
    jobs = [(model, setting, json.loads((output / "jobs" / f"{model}-{setting}" / METRICS_FILE).read_text()))
            for model, setting in MODELS]
    attributes = jobs[0][2]["attributes"]
    lines = ["| model | setting | best epoch | split | " + " | ".join(attributes) + " | mean |",
             "|---|---|---|---|" + "---|" * (len(attributes) + 1)]
    for model, setting, metrics in jobs:
        for split in ("dev", "test"):
            ccc = metrics[split]["ccc"]
            lines.append(f"| {model} | {setting} | {metrics['best_epoch']} | {split} | "
                         + " | ".join(f"{ccc[a]:.3f}" for a in attributes)
                         + f" | {metrics[split]['ccc_mean']:.3f} |")
    return "\n".join(lines)


def transition_summary(evaluation: Path) -> str:
    metrics = json.loads((evaluation / "metrics.json").read_text())
    return ", ".join(f"{report['label']} {report['transition_ratio']['mean']:.2f}"
                     for report in [metrics, *metrics["compared"]] if "transition_ratio" in report)


def score_with_release(data_root: Path, output: Path,
                       release: str = "pretrained/msp-podcast-v1.8-temp-cnn") -> None:
    """Scores every labelled demo clip with a shipped release of the authors' networks (no
    training) and prints its CCC against the demo labels, which are functions of speaking
    rate, pitch and effort: a real model's arousal should track them."""
    import numpy as np

    from model.evaluation.metrics import concordance

    predictions = output / "pretrained_predictions.csv"
    run_step(f"Extra: score the demo clips with the authors' released {Path(release).name}", python(
        "-m", "model.predict", "--model", str(ROOT / release), str(data_root / "Audios"), "--output", str(predictions)))
    with (data_root / "Labels" / "labels_consensus.csv").open() as handle:
        labels = {row["FileName"]: row for row in csv.DictReader(handle)}
    with predictions.open() as handle:
        rows = [row for row in csv.DictReader(handle) if not row["error"] and Path(row["path"]).name in labels]
    cells = []
    for attribute, column in (("arousal", "EmoAct"), ("valence", "EmoVal"), ("dominance", "EmoDom")):
        p = np.array([float(row[attribute]) for row in rows])
        t = np.array([float(labels[Path(row["path"]).name][column]) for row in rows])
        cells.append(f"{attribute} {concordance(t, p):.3f}")
    print(f"\n{Path(release).name} (trained on MSP-Podcast, not on the demo) on the {len(rows)} labelled demo "
          f"clips, CCC: {', '.join(cells)}")


OUTPUT_MARKER = ".made-by-run-demo"
"""Written into the output folder the demo creates: the only kind of folder it ever deletes."""


def prepare_output(output: Path) -> None:
    """Empties a previous demo output, or refuses: ``--output .`` must not delete the repository.

    A folder is replaced only when it holds ``OUTPUT_MARKER`` (the demo made it) or is empty.
    """
    if output.exists():
        if (output / OUTPUT_MARKER).is_file():
            shutil.rmtree(output)
        elif not output.is_dir() or any(output.iterdir()):
            sys.exit(f"run_demo: error: --output {output} exists and was not made by the demo (no {OUTPUT_MARKER}); "
                     "choose a new folder or delete it yourself")
    output.mkdir(parents=True, exist_ok=True)
    (output / OUTPUT_MARKER).write_text("made by tools/run_demo.py, which replaces this folder on every run\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="folder for every demo output (replaced when the demo made it)")
    parser.add_argument("--data-root", default="data/demo", help="MSP-Podcast-layout corpus")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model")
    args = parser.parse_args()
    output = (ROOT / args.output).resolve()
    data_root = (ROOT / args.data_root).resolve()
    prepare_output(output)
    features, jobs, evaluation = output / "features", output / "jobs", output / "evaluation"
    start = time.perf_counter()

    run_step("1/4 Preprocess the demo corpus (Apache Beam, DirectRunner)", python(
        "-m", "pipeline", "--corpus", "msp-podcast", "--data-root", str(data_root),
        "--unlabeled", str(data_root / "Unlabeled" / "*"), "--output", str(features)))
    for model, setting in MODELS:
        run_step(f"2/4 Train {model} ({setting.upper()}), export its SavedModel", python(
            "trainer.py", "--data-dir", str(features), "--job-dir", str(jobs / f"{model}-{setting}"),
            "--model", model, "--setting", setting, "--epochs", str(args.epochs), *DEMO_TRAINING))
    first, *others = [str(jobs / f"{m}-{s}") for m, s in MODELS]
    run_step("3/4 Evaluate on Test1: CCC, sub-sets, temporal consistency, t-SNE, linear probe", python(
        "-m", "model.evaluate", "--data-dir", str(features), "--job-dir", first, "--compare", *others,
        "--output", str(evaluation)))
    predictions = output / "predictions.csv"
    run_step("4/4 Predict every labelled clip from its audio with the exported SavedModel", python(
        "-m", "model.predict", "--model", str(Path(first) / "model"), str(data_root / "Audios"),
        "--output", str(predictions)))

    rows = list(csv.DictReader(predictions.open()))
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s. Results are in {output}:")
    print("  features/     TFRecords, metadata.json, errors-*.jsonl, probes.npz")
    print("  jobs/         one folder per model: config.json, history.csv, metrics.json, checkpoints/, "
          "logs/ (TensorBoard), model/ (SavedModel)")
    print("  evaluation/   metrics.json and PNG figures (scatter, transition ratio, t-SNE)")
    print(f"  predictions.csv  {len(rows)} clips predicted from audio by {Path(first).name}/model\n")
    print(results_table(output))
    summary = transition_summary(evaluation)
    if summary:
        print(f"\nMean chunk-to-chunk cluster transition ratio on Test1 (lower = more temporally consistent): "
              f"{summary}")
    score_with_release(data_root, output)


if __name__ == "__main__":
    main()
