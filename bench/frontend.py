"""Latency of the in-graph front end vs the librosa pipeline on one waveform (CPU).

Usage: python -m bench.frontend [--seconds 5] [--repeats 50]

Prints a table of median and p95 milliseconds per call after warm-up, then one JSON
line. The two ``rfft`` rows isolate the cost of running the STFT in float64 (what
``WaveformFrontend`` does, for parity with librosa) instead of float32.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.serving.graph_frontend import WaveformFrontend  # noqa: E402
from pipeline.numpy_frontend import mel_to_chunks, waveform_to_mel  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402

WARMUP = 5


def latency_ms(call: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median and p95 wall time of ``call`` after ``WARMUP`` untimed calls."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def rfft_call(frames: np.ndarray, dtype: tf.DType, n_fft: int) -> Callable[[], object]:
    spec = tf.TensorSpec([None, n_fft], dtype)
    rfft = tf.function(lambda x: tf.abs(tf.signal.rfft(x, [n_fft])), input_signature=[spec])
    tensor = tf.constant(frames, dtype)
    return lambda: rfft(tensor).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    params = FeatureParams()
    samples = int(args.seconds * params.sample_rate)
    waveform = np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32)
    mel = waveform_to_mel(waveform, params).astype(np.float64)
    mean, std = mel.mean(axis=0), mel.std(axis=0)
    frontend = WaveformFrontend(params, mean, std)
    traced = tf.function(frontend, input_signature=[tf.TensorSpec([None], tf.float32)])
    frames = np.lib.stride_tricks.sliding_window_view(waveform, params.n_fft)[::params.hop_length]

    rows = {
        "tf frontend (traced)": latency_ms(lambda: traced(waveform).numpy(), args.repeats),
        "librosa pipeline": latency_ms(
            lambda: mel_to_chunks(waveform_to_mel(waveform, params), mean, std, params), args.repeats),
        "rfft float64 (used)": latency_ms(rfft_call(frames, tf.float64, params.n_fft), args.repeats),
        "rfft float32": latency_ms(rfft_call(frames, tf.float32, params.n_fft), args.repeats),
    }
    print(f"{args.seconds:g} s waveform, {args.repeats} calls after {WARMUP} warm-up, "
          f"{os.cpu_count()} CPUs visible")
    print(f"{'path':<24}{'median ms':>12}{'p95 ms':>10}")
    for name, row in rows.items():
        print(f"{name:<24}{row['median_ms']:>12.2f}{row['p95_ms']:>10.2f}")
    print(json.dumps({"bench": "frontend", "seconds": args.seconds, "repeats": args.repeats,
                      "cpus": os.cpu_count(), "results": rows}))


if __name__ == "__main__":
    main()
