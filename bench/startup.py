"""Start-up time of the command-line tools: ``--help`` of each CLI and one-file prediction.

Issue 19's targets: ``--help`` of every CLI under 2 s, and ``python -m model.predict`` on
one file under 5 s in all (Python and TensorFlow start-up, loading the SavedModel,
decoding and predicting one demo clip). Each command runs ``--repeats`` times as a
fresh subprocess (wall time, median and max), so the figures include the interpreter's
start and every import, as a user sees them; the median CPU time (user + system) of the
same runs is given too, as it depends less on other jobs sharing a small machine (on an
idle one the wall time is about the CPU time). ``import model.predict`` alone is timed
too, with the heavy modules it pulled in.

Without ``--model`` a model is first trained in a temporary folder as ``bench/serving.py``
does (pipeline over a demo subset, one epoch); only its loading time matters here.

    python bench/startup.py [--model JOB/model] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLIP = ROOT / "data" / "demo" / "Audios" / "MSP-PODCAST_0001_0001.ogg"
HELP_LIMIT_S, PREDICT_LIMIT_S = 2.0, 5.0
CLIS = {
    "python -m pipeline": ["-m", "pipeline"],
    "python trainer.py": ["trainer.py"],
    "python -m model.predict": ["-m", "model.predict"],
    "python -m model.evaluate": ["-m", "model.evaluate"],
    "python -m model.experiments": ["-m", "model.experiments"],
    "python -m model.convert_reference": ["-m", "model.convert_reference"],
}
HEAVY = ("tensorflow", "apache_beam", "sklearn", "librosa", "matplotlib", "scipy", "soxr", "soundfile")
IMPORT_PROBE = ("import json, sys, time; t = time.perf_counter(); import model.predict; "
                "print(json.dumps([time.perf_counter() - t, "
                f"[m for m in {HEAVY!r} if m in sys.modules]]))")


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_times(arguments: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds of each of ``repeats`` fresh runs of ``python ARGUMENTS``; exits on a failure."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), children_cpu_seconds()
        result = subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment(),
                                capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu_seconds() - cpu)
        if result.returncode != 0:
            sys.exit(f"python {' '.join(arguments)} exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return walls, cpus


def trained_model(workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from serving import train_model  # imports TensorFlow into this process only, not the timed ones

    return train_model(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="exported SavedModel (default: train one in a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (median reported)")
    args = parser.parse_args()

    rows: list[tuple[str, tuple[list[float], list[float]], float]] = []
    for name, arguments in CLIS.items():
        if (ROOT / "model" / "convert_reference.py").exists() or "convert_reference" not in name:
            rows.append((f"{name} --help", run_times([*arguments, "--help"], args.repeats), HELP_LIMIT_S))
    probes = []
    for _ in range(args.repeats):
        result = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=environment(),
                                capture_output=True, text=True, check=True)
        probes.append(json.loads(result.stdout.splitlines()[-1]))
    workdir = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        model = Path(args.model) if args.model else trained_model(workdir)
        rows.append(("python -m model.predict, one file", run_times(
            ["-m", "model.predict", "--model", str(model), str(DEMO_CLIP)], args.repeats), PREDICT_LIMIT_S))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}; {args.repeats} fresh runs each (wall and CPU time, s)")
    print(f"{'command':<48}{'median':>8}{'max':>8}{'cpu':>8}{'target':>8}  ok")
    for name, (walls, cpus), limit in rows:
        median = statistics.median(walls)
        print(f"{name:<48}{median:>8.2f}{max(walls):>8.2f}{statistics.median(cpus):>8.2f}{limit:>8.1f}  "
              f"{'yes' if median < limit else 'NO'}")
    import_s = statistics.median(p[0] for p in probes)
    print(f"{'import model.predict (in-process)':<48}{import_s:>8.2f}{max(p[0] for p in probes):>8.2f}"
          f"{'':>16}  loads: {', '.join(probes[0][1]) or 'none of ' + ', '.join(HEAVY)}")
    print(json.dumps({"bench": "startup", "repeats": args.repeats, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()[0],
                      "commands": {name: {"median_s": statistics.median(walls), "max_s": max(walls),
                                          "cpu_median_s": statistics.median(cpus)}
                                   for name, (walls, cpus), _ in rows},
                      "import_model_predict_s": import_s, "import_loads": probes[0][1]}))


if __name__ == "__main__":
    main()
