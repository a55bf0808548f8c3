"""Serving speed on CPU: ``serve_waveform`` latency and ``model.predict`` throughput.

Measures, on an exported SavedModel loaded with ``tf.saved_model.load``:

- latency (median and p95 ms after warm-up) of one ``serve_waveform`` call on a 5 s
  utterance (a demo clip cut or tiled to length), and of its two halves: the in-graph
  front end alone (``waveform_features``) and ``serving_default`` on one utterance;
- files/s of ``model.predict`` over a folder of demo clips: in-process (model loaded,
  per ``--batch-size``) and end to end as a command (``python -m model.predict``, with
  TensorFlow start-up and model loading).

Without ``--model`` it first builds one in a temporary folder: the pipeline over a demo
subset at the default geometry (C 11, m 62) and one epoch of ``trainer.main``; only the
speed matters, not the model's quality. Prints a table, then one JSON line.

    python bench/serving.py [--model JOB/model] [--seconds 5] [--repeats 50] [--files 48]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU figures, even on a machine with a GPU
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.serving.predict import DEFAULT_BATCH_SIZE, ServedModel, Source, decode_file, predict_files  # noqa: E402
from model.serving.predictor import Predictor  # noqa: E402

DEMO = ROOT / "data" / "demo"
WARMUP = 5
SPLIT_COUNTS = {"Train": 24, "Development": 8, "Test1": 8}
"""Demo subset the model is trained on when no --model is given."""


def latency_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and p95 wall time of each call after ``WARMUP`` untimed ones.

    The calls take turns, so a change in the machine's load (other jobs on a shared VM)
    affects them all alike.
    """
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95))}
            for name, t in times.items()}


def run(command: list[str], what: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{what} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def train_model(workdir: Path) -> Path:
    """Pipeline over a demo subset (default geometry), one epoch of temp-gru FSL; returns JOB/model."""
    with (DEMO / "Labels" / "labels_consensus.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    manifest = workdir / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "arousal", "valence", "dominance", "speaker"])
        for split, count in SPLIT_COUNTS.items():
            for row in [r for r in rows if r["Split_Set"] == split][:count]:
                writer.writerow([DEMO / "Audios" / row["FileName"], split, row["EmoAct"], row["EmoVal"],
                                 row["EmoDom"], row["SpkrID"]])
    print("training a model for the benchmark (pipeline + 1 epoch) ...", file=sys.stderr, flush=True)
    run([sys.executable, "-m", "pipeline", "--corpus", "csv", "--manifest", str(manifest),
         "--output", str(workdir / "features")], "the pipeline")
    run([sys.executable, "trainer.py", "--data-dir", str(workdir / "features"), "--job-dir", str(workdir / "job"),
         "--model", "temp-gru", "--attributes", "all", "--epochs", "1", "--batch-size", "8", "--quiet"],
        "trainer.py")
    return workdir / "job" / "model"


def utterance(seconds: float, sample_rate: int) -> np.ndarray:
    """A demo clip tiled and cut to ``seconds``."""
    waveform, _ = decode_file(str(sorted((DEMO / "Audios").iterdir())[0]), sample_rate)
    return np.resize(waveform, int(seconds * sample_rate))


def files_per_second(model: ServedModel, files: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for _ in predict_files(Predictor(model, batch_size=batch_size), [Source(f) for f in files]):
        pass
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="exported SavedModel (default: train one in a temporary folder)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--files", type=int, default=48, help="demo clips in the predicted folder")
    parser.add_argument("--batch-sizes", default="1,8", help="model.predict batch sizes, comma-separated")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    try:
        model_dir = Path(args.model) if args.model else train_model(workdir)
        model = ServedModel(str(model_dir))
        loaded = tf.saved_model.load(str(model_dir))
        serve_waveform = loaded.signatures["serve_waveform"]
        serving_default = loaded.signatures["serving_default"]
        waveform = tf.constant(utterance(args.seconds, model.sample_rate))
        features = loaded.waveform_features(waveform)
        latency = latency_ms({
            "serve_waveform": lambda: serve_waveform(waveform=waveform),
            "front end (waveform_features)": lambda: loaded.waveform_features(waveform),
            "serving_default, 1 utterance": lambda: serving_default(features=features[tf.newaxis]),
        }, args.repeats)

        folder = workdir / "clips"
        folder.mkdir()
        for clip in sorted((DEMO / "Audios").iterdir())[:args.files]:
            shutil.copy(clip, folder / clip.name)
        files = sorted(str(p) for p in folder.iterdir())
        audio_seconds = sum(decode_file(f, model.sample_rate)[0].size for f in files) / model.sample_rate
        throughput = {f"in-process, batch {b}": files_per_second(model, files, b)
                      for b in map(int, args.batch_sizes.split(","))}
        start = time.perf_counter()
        run([sys.executable, "-m", "model.predict", "--model", str(model_dir), str(folder),
             "--output", str(workdir / "predictions.csv")], "model.predict")
        throughput[f"command, batch {DEFAULT_BATCH_SIZE} (with start-up)"] = len(files) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    shape = tuple(features.shape)
    print(f"model {model_dir if args.model else '(trained for the benchmark)'}: features {shape}, "
          f"attributes {', '.join(model.attributes)}; {os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f}, TensorFlow {tf.__version__}")
    print(f"\n{args.seconds:g} s utterance, {args.repeats} calls each (taking turns) after {WARMUP} warm-up")
    print(f"{'call':<32}{'median ms':>12}{'p95 ms':>10}")
    for name, row in latency.items():
        print(f"{name:<32}{row['median_ms']:>12.1f}{row['p95_ms']:>10.1f}")
    print(f"\nmodel.predict over {len(files)} demo clips ({audio_seconds:.0f} s of audio)")
    print(f"{'run':<36}{'files/s':>10}{'audio-s/s':>11}")
    for name, rate in throughput.items():
        print(f"{name:<36}{rate:>10.2f}{rate * audio_seconds / len(files):>11.1f}")
    print(json.dumps({"bench": "serving", "seconds": args.seconds, "repeats": args.repeats,
                      "feature_shape": list(shape), "files": len(files), "audio_seconds": audio_seconds,
                      "cpus": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
                      "latency": latency, "files_per_second": throughput}))


if __name__ == "__main__":
    main()
