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
DEMO_TRAINING = ["--attributes", "all", "--batch-size", "32", "--encoder-lr", "0.01", "--output-lr", "0.005"]
MODELS = (("temp-gru", "ssl"), ("vanilla", "ssl"))


def run_step(title: str, command: list[str]) -> None:
    """Runs one public command, streaming its output; stops the demo if it fails."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    status = subprocess.run(command, cwd=ROOT, env=env).returncode
    if status != 0:
        sys.exit(f"demo step '{title}' failed with exit status {status}")
    print(f"=== {title}: done in {time.perf_counter() - start:.0f} s", flush=True)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def results_table(output: Path) -> str:
    """Dev and test CCC per trained attribute of every model (1..7 scale), from its metrics.json."""
    jobs = [(model, setting, json.loads((output / "jobs" / f"{model}-{setting}" / "metrics.json").read_text()))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="folder for every demo output (replaced)")
    parser.add_argument("--data-root", default="data/demo", help="MSP-Podcast-layout corpus")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model")
    args = parser.parse_args()
    output = (ROOT / args.output).resolve()
    data_root = (ROOT / args.data_root).resolve()
    if output.exists():
        shutil.rmtree(output)
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


if __name__ == "__main__":
    main()
