"""``make demo``: the whole path on the embedded demo corpus, through the public commands.

Every step runs the same command line a user would type (in a subprocess), so the demo
proves the documented interfaces, not private shortcuts. It ends with where the results
are and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_step(title: str, command: list[str]) -> None:
    """Runs one public command, streaming its output; stops the demo if it fails."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(f"demo step '{title}' failed with exit status {result.returncode}")
    print(f"=== {title}: done in {time.perf_counter() - start:.0f} s", flush=True)


def pipeline_step(data_root: Path, features: Path) -> None:
    run_step("Preprocess the demo corpus (Apache Beam, DirectRunner)", [
        sys.executable, "-m", "pipeline", "--corpus", "msp-podcast", "--data-root", str(data_root),
        "--unlabeled", str(data_root / "Unlabeled" / "*"), "--output", str(features),
    ])


def print_pipeline_summary(features: Path) -> None:
    metadata = json.loads((features / "metadata.json").read_text())
    print("\nPreprocessed splits (records written / rejected):")
    for split, info in metadata["splits"].items():
        print(f"  {split:<10} {info['count']:>5} / {info['rejected']}")
    print(f"  features per utterance: {metadata['num_chunks']} chunks x {metadata['chunk_frames']} "
          f"frames x {metadata['n_mels']} mel bins")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="runs/demo", help="folder for every demo output")
    parser.add_argument("--data-root", default="data/demo", help="MSP-Podcast-layout corpus")
    args = parser.parse_args()
    output = (ROOT / args.output).resolve()
    data_root = (ROOT / args.data_root).resolve()
    features = output / "features"
    output.mkdir(parents=True, exist_ok=True)

    pipeline_step(data_root, features)
    print_pipeline_summary(features)
    print(f"\nResults are in {output}:\n  features/  TFRecords, metadata.json, errors-*.jsonl")


if __name__ == "__main__":
    main()
