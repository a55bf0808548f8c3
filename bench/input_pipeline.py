"""Input throughput of the training samplers, to set against the training step's.

Writes synthetic records of the reference geometry (C 11, m 62, 128 mels, float16) to a
temporary directory, plants an imbalanced clustering, and times whole epochs of each
sampler after one warm-up epoch. Prints a table, then one JSON line. The reference
training step consumes about 15 sentences/s on 2 cores; the input has to be far faster.

    python bench/input_pipeline.py [--records 300] [--batch-size 64] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.training.datasets import SplitSource  # noqa: E402
from model.training.samplers import ChunkSampler, PlainSampler, SentenceSampler  # noqa: E402
from pipeline import records  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402


def write_records(directory: str, params: FeatureParams, count: int, shards: int, seed: int) -> None:
    """Records of clipped normal noise: as incompressible as real normalised features."""
    rng = np.random.default_rng(seed)
    options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
    for k in range(shards):
        path = os.path.join(directory, f"train-{k:05d}-of-{shards:05d}{records.FILE_SUFFIX}")
        with tf.io.TFRecordWriter(path, options) as writer:
            for index in range(k, count, shards):
                features = np.clip(rng.standard_normal(params.feature_shape), -3, 3)
                writer.write(records.encode(
                    utt_id=f"utt{index}", speaker="spk", split="train", index=index, features=features,
                    labels=rng.uniform(1, 7, 3), num_frames=700, params=params))


def planted_clustering(count: int, num_chunks: int, clusters: int, seed: int) -> np.ndarray:
    """Zipf-sized clusters over mostly homogeneous sentences, as k-means early in training."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, clusters + 1)
    dominant = rng.choice(clusters, size=count, p=sizes / sizes.sum())
    noise = rng.integers(0, clusters, (count, num_chunks))
    return np.where(rng.random((count, num_chunks)) < 0.8, dominant[:, None], noise)


def time_epochs(dataset: tf.data.Dataset, epochs: int) -> tuple[float, int]:
    """Seconds and elements (first axis) of ``epochs`` passes, after one warm-up pass."""
    for _ in dataset:
        pass
    start, elements = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in dataset:
            elements += int(batch["index"].shape[0])
    return time.perf_counter() - start, elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    params = FeatureParams()
    num_chunks = params.num_chunks
    with tempfile.TemporaryDirectory() as directory:
        write_records(directory, params, args.records, args.shards, args.seed)
        source = SplitSource(directory, "train", params, count=args.records, index_size=args.records)
        clustering = (np.arange(args.records), planted_clustering(args.records, num_chunks, args.clusters, args.seed))
        sentence = SentenceSampler(source)
        sentence.refresh(*clustering, args.clusters)
        chunk = ChunkSampler(source)
        chunk.refresh(*clustering, args.clusters)
        rows = []
        for name, sampler, chunks_per_element in (
                ("plain", PlainSampler(source), num_chunks),
                ("sentence", sentence, num_chunks),
                ("chunk", chunk, 1)):
            seconds, elements = time_epochs(sampler.dataset(args.batch_size, args.seed), args.epochs)
            rows.append({
                "sampler": name,
                "epochs": args.epochs,
                "seconds": round(seconds, 3),
                "sentences_per_s": round(elements * chunks_per_element / num_chunks / seconds, 1),
                "chunks_per_s": round(elements * chunks_per_element / seconds, 1),
            })
        acceptance = sentence.acceptance_stats()

    print(f"{'sampler':<10}{'epochs':>8}{'seconds':>10}{'sentences/s':>14}{'chunks/s':>12}")
    for row in rows:
        print(f"{row['sampler']:<10}{row['epochs']:>8}{row['seconds']:>10.2f}"
              f"{row['sentences_per_s']:>14.1f}{row['chunks_per_s']:>12.1f}")
    print(f"sentence sampler acceptance rate {acceptance['rate']:.3f} (expected {acceptance['expected_rate']:.3f}); "
          f"chunk sampler decodes {chunk.acceptance_rate():.3f} of the records it reads")
    print(json.dumps({
        "benchmark": "input_pipeline",
        "records": args.records,
        "batch_size": args.batch_size,
        "feature_shape": list(params.feature_shape),
        "storage_dtype": params.storage_dtype,
        "acceptance_rate": round(acceptance["rate"], 4),
        "chunk_decode_rate": round(chunk.acceptance_rate(), 4),
        "cpu_count": os.cpu_count(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "samplers": {row["sampler"]: row for row in rows},
    }))


if __name__ == "__main__":
    main()
