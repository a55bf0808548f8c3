"""Throughput of the real training step (``DeepEmoCluster.train_step``) and of re-clustering.

Builds a variant's model exactly as the trainer does (``model.training.algorithm.build_net``,
``DeepEmoCluster``, ``compile``) and runs Keras's own ``train_function`` (forward, every
loss term, backward, every optimizer) on one random batch shaped like real data (C 11,
m 62, 128 mels; vanilla gets the 64 x 11 one-chunk pseudo-sentences its chunk sampler
yields), repeated in memory so that only the step is timed. Reports the median over
``--steps`` steps after ``--warmup`` steps, the process CPU time and page faults per step,
the inference throughput of the same network, and the peak RSS. For clustering variants
it also times what ``Reclusterer.run`` does before every stage (``embed_batches`` over
``--embed-sentences`` sentences, then ``model.training.kmeans`` on all their chunks) and gives its
share of an epoch (re-clustering + one training pass over the same sentences).
The last line printed is one JSON object.

    python bench/train_step.py --model temp-gru [--jit-compile] [--precision mixed_bfloat16] [--steps 10]
    python bench/train_step.py --all    # the six paper variants x (float32, XLA, bfloat16), each
                                        # in a fresh process, then bench/input_pipeline.py

"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.training.allocator import loaded_allocator, use_fast_allocator  # noqa: E402

if __name__ == "__main__":
    use_fast_allocator()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.training.train_step import DeepEmoCluster  # noqa: E402
from model.training.kmeans import kmeans  # noqa: E402
from model.evaluation.split_predictions import inference_function, output_of  # noqa: E402
from model.training.reassignment import embed_batches  # noqa: E402
from model.training.config import PRECISIONS, TrainConfig  # noqa: E402
from model.nets.builder import build_net  # noqa: E402
from model.nets.variants import VARIANTS  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402

PAPER_MODELS = ("regressor", "vanilla", "temp-gru", "temp-cnn", "temp-trans", "temp-triplet")
ALL_SETTINGS = ((False, "float32"), (True, "float32"), (False, "mixed_bfloat16"))
"""(jit_compile, precision) pairs that ``--all`` measures for every model."""


def random_batch(config: TrainConfig, params: FeatureParams, seed: int) -> dict[str, tf.Tensor]:
    """One batch as the variant's sampler yields it, of clipped normal noise (like z-scored mels)."""
    rng = np.random.default_rng(seed)
    chunks, frames, n_mels = params.feature_shape
    sentences, per_sentence = config.batch_size, chunks
    if config.variant.sampler == "chunk":
        sentences, per_sentence = config.batch_size * chunks, 1
    features = np.clip(rng.standard_normal((sentences, per_sentence, frames, n_mels)), -3, 3)
    batch = {
        "features": tf.constant(features, tf.float32),
        "targets": tf.constant(rng.standard_normal((sentences, len(config.attributes))), tf.float32),
    }
    if config.variant.clustering:
        batch["cluster_labels"] = tf.constant(rng.integers(0, config.clusters, (sentences, per_sentence)), tf.int32)
    return batch


def build_model(config: TrainConfig, params: FeatureParams) -> DeepEmoCluster:
    """The trainer's model, compiled as ``model.training.algorithm.Trainer`` does."""
    model = DeepEmoCluster(config, build_net(config, params))
    model.compile(jit_compile=config.jit_compile)
    return model


def time_calls(call: Callable[[], object], warmup: int, steps: int) -> tuple[list[float], float, float]:
    """Wall seconds of each of ``steps`` calls after ``warmup`` untimed ones (``call`` must block),
    and the process's CPU seconds and minor page faults per timed call."""
    for _ in range(warmup):
        call()
    seconds = []
    cpu_start, usage_start = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    cpu_end, usage_end = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / steps
    faults = (usage_end.ru_minflt - usage_start.ru_minflt) / steps
    return seconds, cpu, faults


def reclustering(model: DeepEmoCluster, config: TrainConfig, features: tf.Tensor, sentences: int,
                 train_sentences_per_s: float) -> dict[str, float]:
    """Times ``Reclusterer.run``'s two parts on ``sentences`` sentences: embedding and K-means."""
    batch_size = config.batch_size
    embed = output_of(inference_function(model.net, config.jit_compile), "cluster_features")
    sentence_batch = features[:batch_size] if features.shape[1] > 1 else tf.reshape(
        features, (batch_size, -1, *features.shape[2:]))
    batches = -(-sentences // batch_size)
    dataset = tf.data.Dataset.from_tensors(
        {"features": sentence_batch, "index": tf.range(batch_size, dtype=tf.int64)}).repeat(batches)
    embed_batches(embed, dataset.take(1))
    start = time.perf_counter()
    _, embedded = embed_batches(embed, dataset)
    embed_seconds = time.perf_counter() - start
    points = embedded.reshape(-1, embedded.shape[-1])
    kmeans(points[:config.clusters * 10], config.clusters, iterations=config.kmeans_iterations)
    start = time.perf_counter()
    kmeans(points, config.clusters, iterations=config.kmeans_iterations, seed=1)
    kmeans_seconds = time.perf_counter() - start
    train_seconds = batches * batch_size / train_sentences_per_s
    return {
        "sentences": batches * batch_size,
        "points": int(points.shape[0]),
        "embed_seconds": round(embed_seconds, 2),
        "embed_sentences_per_s": round(batches * batch_size / embed_seconds, 2),
        "kmeans_seconds": round(kmeans_seconds, 2),
        "train_pass_seconds": round(train_seconds, 2),
        "epoch_share": round((embed_seconds + kmeans_seconds) / (embed_seconds + kmeans_seconds + train_seconds), 3),
    }


def cpu_facts() -> tuple[str, bool]:
    """The CPU's model name and whether it has bfloat16 instructions (AVX-512 BF16 or AMX):
    without them oneDNN emulates ``mixed_bfloat16`` in float32 arithmetic plus conversions."""
    model_name, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not flags:
                    model_name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model_name, bool(flags & {"avx512_bf16", "amx_bf16"})


def machine() -> dict[str, object]:
    """Facts that decide CPU speed, recorded with every figure."""
    model_name, bf16_native = cpu_facts()
    return {
        "cpu": model_name,
        "bf16_native": bf16_native,
        "allocator": loaded_allocator() or "system (glibc malloc)",
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def benchmark(args: argparse.Namespace) -> dict[str, object]:
    if args.intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.precision == "mixed_bfloat16" and not cpu_facts()[1]:
        print("note: this CPU has no AVX-512 BF16/AMX: mixed_bfloat16 is emulated here, its figures "
              "say nothing about bfloat16 hardware", file=sys.stderr)
    params = FeatureParams()
    config = TrainConfig(model=args.model, batch_size=args.batch_size, jit_compile=args.jit_compile,
                         precision=args.precision, keep_activations=args.keep_activations, seed=args.seed)
    load_start = os.getloadavg()[0]
    model = build_model(config, params)
    batch = random_batch(config, params, args.seed)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    model.make_train_function()
    train_function = model.train_function
    first_start = time.perf_counter()
    float(train_function(iterator)["loss"])
    first_seconds = time.perf_counter() - first_start
    step_seconds, step_cpu, step_faults = time_calls(
        lambda: float(train_function(iterator)["loss"]), args.warmup, args.steps)
    step = statistics.median(step_seconds)

    infer = output_of(inference_function(model.net, args.jit_compile), "predictions")
    infer_seconds, _, _ = time_calls(lambda: infer(batch["features"]).numpy(), 1, args.inference_steps)
    result = {
        "benchmark": "train_step",
        "model": args.model,
        "jit_compile": args.jit_compile,
        "precision": args.precision,
        "keep_activations": args.keep_activations,
        "batch_size": args.batch_size,
        "input_shape": list(batch["features"].shape),
        "steps": args.steps,
        "ms_per_step": round(step * 1000, 1),
        "ms_per_step_min_max": [round(min(step_seconds) * 1000, 1), round(max(step_seconds) * 1000, 1)],
        "cpu_s_per_step": round(step_cpu, 2),
        "page_faults_per_step": round(step_faults),
        "sentences_per_s": round(args.batch_size / step, 2),
        "inference_sentences_per_s": round(args.batch_size / statistics.median(infer_seconds), 2),
        "first_step_s": round(first_seconds, 2),
    }
    if config.variant.clustering and args.embed_sentences:
        result["reclustering"] = reclustering(model, config, batch["features"], args.embed_sentences,
                                              result["sentences_per_s"])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result.update(machine())
    result["load_average_start"] = round(load_start, 2)
    return result


def child_command(args: argparse.Namespace, model: str, jit: bool, precision: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--model", model, "--precision", precision,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--inference-steps", str(args.inference_steps), "--embed-sentences", str(args.embed_sentences)
            ] + (["--jit-compile"] if jit else [])


def run_all(args: argparse.Namespace) -> dict[str, object]:
    """Every model x ``ALL_SETTINGS`` in a fresh process each (peak RSS is per process),
    then the input pipeline's throughput to set against the steps'."""
    results = []
    for model in args.models.split(","):
        for jit, precision in ALL_SETTINGS:
            output = subprocess.run(child_command(args, model, jit, precision), check=True,
                                    capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            share = result.get("reclustering", {}).get("epoch_share")
            print(f"{model:<14}{'xla' if jit else 'graph':>6} {precision:<15}{result['ms_per_step']:>9.0f} ms"
                  f"{result['sentences_per_s']:>8.2f} sent/s{result['inference_sentences_per_s']:>8.1f} infer/s"
                  f"{result['peak_rss_mb']:>8.0f} MB  cpu {result['cpu_s_per_step']:.2f} s"
                  f"  recluster share {share if share is not None else '-'}  load {result['load_average'][0]}",
                  flush=True)
            results.append(result)
    pipeline = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input_pipeline.py")
    output = subprocess.run([sys.executable, pipeline, "--batch-size", str(args.batch_size)], check=True,
                            capture_output=True, text=True).stdout
    print(output.strip())
    return {"benchmark": "train_step_all", "results": results,
            "input_pipeline": json.loads(output.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(VARIANTS), default="temp-gru")
    parser.add_argument("--all", action="store_true", help="--models x (float32, XLA, bfloat16), then the input pipeline")
    parser.add_argument("--models", default=",".join(PAPER_MODELS), help="comma-separated models for --all")
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile the step (and the inference)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--keep-activations", action="store_true",
                        help="trainer.py's --keep-activations: autodiff's backward pass (the before figures)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (tracing) one")
    parser.add_argument("--inference-steps", type=int, default=5)
    parser.add_argument("--embed-sentences", type=int, default=1024,
                        help="sentences embedded and clustered for the re-clustering share (0: skip)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--intra-op-threads", type=int, help="TensorFlow's intra-op pool (default: its own choice)")
    parser.add_argument("--inter-op-threads", type=int, help="TensorFlow's inter-op pool (default: its own choice)")
    args = parser.parse_args()
    print(json.dumps(run_all(args) if args.all else benchmark(args)))


if __name__ == "__main__":
    main()
