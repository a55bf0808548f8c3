"""Throughput and memory of the preprocessing pipeline on the DirectRunner.

Measures, over the same audio files:
  * a bare loop: soundfile load (+ resample when needed) + librosa melspectrogram with
    the reference arguments, nothing else, on one core (BLAS limited to one thread,
    as the pipeline's workers are);
  * ``python -m pipeline`` with 1 worker in the DirectRunner's default in_memory mode
    (what a plain ``python -m pipeline`` runs) and with ``--direct_num_workers`` 1 and 2
    in multi_processing mode, on a small corpus and one ``--scale`` times larger: wall
    time, audio-seconds per wall-second, peak RSS of the whole process tree, bytes per
    stored utterance. The bare loop is timed again right before each configuration, so
    each ratio compares times taken minutes apart on a shared machine, not tens of minutes;
  * where the time of one utterance goes, stage by stage, in this process, and the
    pipeline's cost per file modelled from it.
The marginal rate, (audio_large - audio_small) / (wall_large - wall_small), removes the
fixed start-up cost (importing TensorFlow in every worker, staging), which dominates
small runs. The corpus is built from ``data/demo`` (files copied under new names,
cycling with their own splits) when it exists, else from synthetic speech-like audio.

  python bench/pipeline_throughput.py [--files 80] [--scale 4] [--workers 1 2]
Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile
import threadpoolctl
from isal import isal_zlib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import records, spill  # noqa: E402
from pipeline.audio_decoding import decode_audio  # noqa: E402
from pipeline.corpus import Utterance, read_csv_manifest  # noqa: E402
from pipeline.numpy_frontend import mel_to_chunks, waveform_to_mel  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402
from pipeline.sinks import DEFAULT_GZIP_LEVEL  # noqa: E402

DEMO = REPO / "data" / "demo"
SPILL_UTTERANCE = Utterance(utt_id="utt_00000", path="/data/audio/utt_00000.ogg", split="train", speaker="spk",
                            labels=(4.0, 4.0, 4.0), index=0)


def demo_sources() -> list[tuple[Path, str]]:
    """(audio file, Split_Set) of the demo corpus, or [] when it is not there."""
    labels = DEMO / "Labels" / "labels_consensus.csv"
    if not labels.exists():
        return []
    with labels.open() as handle:
        rows = [(DEMO / "Audios" / row["FileName"], row["Split_Set"]) for row in csv.DictReader(handle)]
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # mix the splits


def synthetic_sources(folder: Path, count: int) -> list[tuple[Path, str]]:
    from tests.fixtures.edge_audio import speech_like, write_audio

    splits = ["Train"] * 6 + ["Validation"] * 2 + ["Test1"] * 2
    rng = np.random.default_rng(0)
    return [(write_audio(folder / f"synthetic_{i:04d}.wav", speech_like(float(rng.uniform(2.5, 8.0)), seed=i)),
             splits[i % len(splits)]) for i in range(count)]


def build_corpus(folder: Path, count: int, sources: list[tuple[Path, str]]) -> Path:
    """``count`` files copied from ``sources`` (cycling) and their CSV manifest."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    rows = []
    for i in range(count):
        source, split = sources[i % len(sources)]
        target = audio / f"utt_{i:05d}{source.suffix}"
        shutil.copyfile(source, target)
        rows.append({"path": f"audio/{target.name}", "split": split, "arousal": 4, "valence": 4, "dominance": 4})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def audio_seconds(paths: list[str]) -> float:
    return sum(soundfile.info(p).duration for p in paths)


def load_and_mel(path: str, params: FeatureParams) -> np.ndarray:
    """The bare loop's work for one file: load, mix down, resample, melspectrogram."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != params.sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=params.sample_rate, res_type="soxr_hq")
    return librosa.feature.melspectrogram(
        y=mono, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length,
        win_length=params.win_length, window="hann", center=True, pad_mode=params.pad_mode,
        power=params.power, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax)


def bare_loop(paths: list[str], params: FeatureParams) -> float:
    """Wall seconds of ``load_and_mel`` over ``paths`` with one BLAS thread, after a warm-up call."""
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        load_and_mel(paths[0], params)
        start = time.perf_counter()
        for path in paths:
            load_and_mel(path, params)
        return time.perf_counter() - start


STEPS = ("read", "decode", "mel", "spill", "normalise_chunk", "encode", "gzip")


def step_seconds(path: str, params: FeatureParams, mean: np.ndarray, std: np.ndarray) -> list[float]:
    """Seconds of each of ``STEPS`` for one file, as the pipeline does them.

    ``spill`` packs and unpacks the (utterance, mel) record that hands a train mel from
    the statistics pass to the writing pass (in memory: the file I/O is not included);
    ``gzip`` is ISA-L at the pipeline's default level with a gzip header, as the sink does.
    """
    marks = [time.perf_counter()]
    data = Path(path).read_bytes()
    marks.append(time.perf_counter())
    waveform = decode_audio(data, params.sample_rate)
    marks.append(time.perf_counter())
    mel = waveform_to_mel(waveform, params)
    marks.append(time.perf_counter())
    spill.unpack(spill.pack((SPILL_UTTERANCE, mel)))
    marks.append(time.perf_counter())
    chunks = mel_to_chunks(mel, mean, std, params)
    marks.append(time.perf_counter())
    payload = records.encode(utt_id="u", speaker="s", split="train", index=0, features=chunks, labels=None,
                             num_frames=mel.shape[0], params=params)
    marks.append(time.perf_counter())
    compressor = isal_zlib.compressobj(DEFAULT_GZIP_LEVEL, isal_zlib.DEFLATED, isal_zlib.MAX_WBITS | 16)
    compressor.compress(payload)
    compressor.flush()
    marks.append(time.perf_counter())
    return [end - start for start, end in zip(marks, marks[1:])]


def stage_costs(paths: list[str], params: FeatureParams) -> dict[str, float]:
    """Mean milliseconds per file of each step, one BLAS thread, after a warm-up call.

    Normalised with statistics of the first files, so the stored values (whose float16
    conversion and compression cost depend on them) look like the pipeline's.
    """
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        frames = np.concatenate([waveform_to_mel(decode_audio(Path(p).read_bytes(), params.sample_rate), params)
                                 for p in paths[:10]]).astype(np.float64)
        mean, std = frames.mean(axis=0), frames.std(axis=0)
        step_seconds(paths[0], params, mean, std)
        totals = np.sum([step_seconds(path, params, mean, std) for path in paths], axis=0)
    return {name: 1000 * total / len(paths) for name, total in zip(STEPS, totals)}


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            parents[int(stat.split("/")[2])] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Runs ``command``; returns wall seconds, peak tree RSS (bytes) and stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return wall, peak, stdout


def pipeline_command(manifest: Path, output: Path, workers: int, mode: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "--corpus", "csv", "--manifest", str(manifest),
            "--output", str(output), "--direct_num_workers", str(workers), "--direct_running_mode", mode]


def configurations(workers: list[int]) -> list[tuple[int, str]]:
    """(workers, running mode): one worker in both modes, more in multi_processing only
    (in_memory runs its workers as threads, which share one interpreter lock)."""
    return [(n, mode) for n in workers for mode in (("in_memory", "multi_processing") if n == 1
                                                   else ("multi_processing",))]


def record_bytes(output: Path) -> tuple[int, int]:
    """Total bytes of the record files and the number of utterances written."""
    metadata = json.loads((output / "metadata.json").read_text())
    size = sum(p.stat().st_size for p in output.glob("*-of-*.tfrecord.gz"))
    return size, sum(s["count"] for s in metadata["splits"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=320, help="files in the small corpus")
    parser.add_argument("--scale", type=int, default=4, help="the large corpus is this many times larger")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    params = FeatureParams()
    work = Path(tempfile.mkdtemp(prefix="pipeline_bench_"))
    try:
        sources = demo_sources() or synthetic_sources(work / "synthetic", 60)
        corpora = {"small": build_corpus(work / "small", args.files, sources),
                   "large": build_corpus(work / "large", args.files * args.scale, sources)}
        results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
                         "source": "data/demo" if demo_sources() else "synthetic", "runs": []}
        bare = {}
        paths = {}
        for name, manifest in corpora.items():
            utterances = read_csv_manifest(str(manifest))
            paths[name] = [u.path for u in utterances]
            train = [u.path for u in utterances if u.split == "train"]
            bare[name] = {"files": len(paths[name]), "audio_s": audio_seconds(paths[name]),
                          "train_fraction": len(train) / len(paths[name])}
        results["bare"] = bare
        results["steps_ms_per_file"] = stage_costs(paths["small"], params)
        for workers, mode in configurations(args.workers):
            bare_wall = bare_loop(paths["large"], params)
            for name, manifest in corpora.items():
                output = work / f"out_{name}_{workers}_{mode}"
                wall, rss, _ = run_measured(pipeline_command(manifest, output, workers, mode))
                size, written = record_bytes(output)
                results["runs"].append({
                    "corpus": name, "workers": workers, "mode": mode, "files": bare[name]["files"],
                    "wall_s": wall, "rate": bare[name]["audio_s"] / wall, "peak_rss_mb": rss / 2**20,
                    "bytes_per_utt": size / written, "bare_rate": bare["large"]["audio_s"] / bare_wall})
        report(results, bare)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict, bare: dict) -> None:
    print(f"machine: {results['machine']}; audio: {results['source']}")
    for name, b in bare.items():
        print(f"{name}: {b['files']} files, {b['audio_s']:.0f} s audio, train {b['train_fraction']:.0%}")
    steps = results["steps_ms_per_file"]
    print("per file, ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in steps.items()))
    train = bare["large"]["train_fraction"]
    modelled = steps["read"] + steps["decode"] + steps["mel"] + steps["spill"] * train + steps["normalise_chunk"] \
        + steps["encode"] + steps["gzip"]
    results["modelled_ms_per_file"] = modelled
    print(f"modelled pipeline work per file: {modelled:.2f} ms (read + decode + mel + spill x {train:.2f} "
          f"+ chunk + encode + gzip)")
    print(f"{'corpus':<7}{'workers':>8} {'mode':<17}{'wall s':>8}{'audio-s/s':>11}{'bare a-s/s':>12}"
          f"{'peak RSS MB':>13}{'bytes/utt':>11}")
    for r in results["runs"]:
        print(f"{r['corpus']:<7}{r['workers']:>8} {r['mode']:<17}{r['wall_s']:>8.1f}{r['rate']:>11.0f}"
              f"{r['bare_rate']:>12.0f}{r['peak_rss_mb']:>13.0f}{r['bytes_per_utt']:>11.0f}")
    marginal = {}
    for workers, mode in dict.fromkeys((r["workers"], r["mode"]) for r in results["runs"]):
        small, large = (next(r for r in results["runs"] if (r["workers"], r["mode"], r["corpus"]) == (workers, mode, c))
                        for c in ("small", "large"))
        rate = (bare["large"]["audio_s"] - bare["small"]["audio_s"]) / (large["wall_s"] - small["wall_s"])
        key = f"{workers} {mode}"
        marginal[key] = {"rate": rate, "bare_rate": large["bare_rate"], "ratio_vs_bare": rate / large["bare_rate"],
                         "per_worker_ratio": rate / large["bare_rate"] / workers,
                         "rss_growth": large["peak_rss_mb"] / small["peak_rss_mb"]}
        print(f"marginal, {workers} worker(s), {mode}: {rate:.0f} audio-s/s = {marginal[key]['ratio_vs_bare']:.2f}x "
              f"the bare loop's {large['bare_rate']:.0f} ({marginal[key]['per_worker_ratio']:.2f}x per worker); "
              f"peak RSS large/small {marginal[key]['rss_growth']:.2f}")
    results["marginal"] = marginal
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
