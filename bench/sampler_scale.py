"""The training samplers at paper size: speed, reads, draw exactness, batch copies, memory.

Writes (once, cached in a temporary folder) a synthetic split of 45,000 sentences of the
reference geometry (C 11, m 62, 128 mels, float16) as real GZIP TFRecords with the
project's schema and writer (``pipeline.records``, ``pipeline.sinks``), plants a clustering with Q = 10 clusters that
include a 50-chunk cluster and a one-chunk cluster, and runs one epoch of each sampler.
Prints one JSON line per sampler:

- ``sentences_per_s``: sentences (chunk sampler: chunks / C) delivered per second;
- ``records_read_per_n``: records read from storage per epoch / N (a chunk read counts
  1 / C; a bounded epoch is scaled up by the share of it delivered);
- ``max_quartile_error``: largest |achieved / target - 1| of the draw rate over the four
  quartiles of file position (a record's place inside its shard);
- ``max_copies_per_batch``: most copies of one sentence (chunk sampler: one chunk) in a
  batch; ``global_shuffle_copies_per_batch``: the same for a global shuffle of the same
  draws;
- ``peak_rss_mb``: the process's peak resident memory while that sampler ran.

    python bench/sampler_scale.py [--sentences 45000] [--samplers sentence,chunk,plain]

``--max-seconds`` bounds an epoch: a sampler that cannot finish one is measured on the
part it delivered (its line says ``epoch_fraction``), and one that delivers no batch in
time reports only its ``records_read``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from isal import igzip

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.training.datasets import SplitSource  # noqa: E402
from model.training.samplers import ChunkSampler, PlainSampler, SentenceSampler  # noqa: E402
from pipeline import records, sinks  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402

CLUSTERS = 10
BIG_CLUSTER, SINGLE_CLUSTER = 8, 9
"""The planted 50-chunk and one-chunk clusters."""


def planted_features(pool: np.ndarray, index: int) -> np.ndarray:
    """Noise from a pool (as incompressible as real features) with mel bin 0 = chunk
    position and bins 1, 2 = index // 256, index % 256 (exact in float16)."""
    features = pool[index % len(pool)].copy()
    features[:, :, 0] = np.arange(features.shape[0])[:, None]
    features[:, :, 1] = index // 256
    features[:, :, 2] = index % 256
    return features


def write_shard(args: tuple[str, int, int, int]) -> None:
    """One shard as the pipeline writes it (``pipeline.sinks``): TFRecord framing, then
    GZIP by ISA-L at the pipeline's default level."""
    directory, shard, shards, count = args
    params = FeatureParams()
    rng = np.random.default_rng(shard)
    pool = np.clip(rng.standard_normal((64, *params.feature_shape)), -3, 3).astype(np.float16)
    path = os.path.join(directory, f"train-{shard:05d}-of-{shards:05d}{records.FILE_SUFFIX}")
    with tf.io.TFRecordWriter(path + ".raw") as writer:
        for index in range(shard, count, shards):  # round robin: index i at place i // shards
            writer.write(records.encode(
                utt_id=f"utt{index}", speaker=f"spk{index % 97}", split="train", index=index,
                features=planted_features(pool, index), labels=rng.uniform(1, 7, 3), num_frames=700,
                params=params))
    with open(path + ".raw", "rb") as source, open(path + ".tmp", "wb") as target, igzip.IGzipFile(
            filename="", mode="wb", compresslevel=sinks.DEFAULT_GZIP_LEVEL, mtime=0, fileobj=target) as packed:
        shutil.copyfileobj(source, packed, 1 << 22)
    os.remove(path + ".raw")
    os.replace(path + ".tmp", path)


def synthetic_split(count: int, shards: int) -> str:
    """The split's folder, written on first use and kept for later runs."""
    directory = os.path.join(tempfile.gettempdir(), f"sampler_scale-{count}-{shards}-v1")
    done = os.path.join(directory, "DONE")
    if not os.path.exists(done):
        os.makedirs(directory, exist_ok=True)
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(min(2, os.cpu_count() or 1)) as pool:
            pool.map(write_shard, [(directory, k, shards, count) for k in range(shards)])
        open(done, "w").close()
        print(f"wrote {count} records to {directory} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return directory


def planted_clustering(count: int, num_chunks: int, seed: int) -> np.ndarray:
    """Zipf-sized clusters 0..7 over mostly homogeneous sentences, 50 chunks of cluster 8
    spread over the split (two per sentence) and one chunk of cluster 9."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, BIG_CLUSTER + 1)
    dominant = rng.choice(BIG_CLUSTER, size=count, p=sizes / sizes.sum())
    noise = rng.integers(0, BIG_CLUSTER, (count, num_chunks))
    labels = np.where(rng.random((count, num_chunks)) < 0.8, dominant[:, None], noise)
    labels[np.linspace(0, count - 1, 25).astype(int)[:, None], [3, 7]] = BIG_CLUSTER
    labels[count // 3, 5] = SINGLE_CLUSTER
    return labels.astype(np.int32)


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def max_copies(keys: list[np.ndarray]) -> int:
    return max(int(np.unique(batch, return_counts=True)[1].max()) for batch in keys if len(batch))


def quartile_error(drawn: np.ndarray, target: np.ndarray, place: np.ndarray, places: int) -> float:
    """Largest |achieved / target - 1| of the draw shares of the four file-position quartiles;
    ``drawn`` and ``target`` are per key (sentence or chunk), ``place`` its sentence's place."""
    quartile = np.minimum(4 * place // places, 3)
    achieved = np.bincount(quartile, drawn, minlength=4) / drawn.sum()
    expected = np.bincount(quartile, target, minlength=4) / target.sum()
    return float(np.max(np.abs(achieved / expected - 1)))


def run(name: str, sampler, labels: np.ndarray, batch_size: int, shards: int, max_seconds: float,
        seed: int) -> dict:
    count, num_chunks = labels.shape
    per_chunk = name == "chunk"
    reset_peak_rss()
    reads_before = sampler.records_read
    keys, stop = [], threading.Event()

    def consume() -> None:
        for batch in sampler.dataset(batch_size, seed):
            index = batch["index"].numpy()
            if per_chunk:
                keys.append(index * num_chunks + batch["features"][:, 0, 0, 0].numpy().astype(np.int64))
            else:
                keys.append(index)
            if stop.is_set():
                break

    # A thread, so that --max-seconds holds even when not one batch arrives in time.
    consumer = threading.Thread(target=consume, daemon=True)
    start = time.perf_counter()
    consumer.start()
    consumer.join(max_seconds)
    stop.set()
    seconds = time.perf_counter() - start
    keys = list(keys)
    reads = sampler.records_read - reads_before
    delivered = sum(len(k) for k in keys)
    row = {"sampler": name, "sentences_per_s": round(delivered / (num_chunks if per_chunk else 1) / seconds, 1)}
    fraction = delivered / sampler.epoch_size
    if not delivered:  # not one batch within --max-seconds
        return {**row, "records_read_per_n": None, "records_read": reads, "seconds": round(seconds, 1),
                "epoch_fraction": 0.0, "peak_rss_mb": round(peak_rss_mb(), 1)}
    drawn = np.bincount(np.concatenate(keys), minlength=count * (num_chunks if per_chunk else 1))
    sizes = np.bincount(labels.ravel(), minlength=CLUSTERS)
    if name == "sentence":
        target = (1.0 / sizes[labels]).sum(axis=1)
    elif name == "chunk":
        target = (1.0 / sizes[labels]).ravel()
    else:
        target = np.ones(count)
    sentence_of_key = np.arange(len(drawn)) // (num_chunks if per_chunk else 1)
    shuffled = np.random.default_rng(seed).permutation(np.concatenate(keys))
    return {
        **row,
        "records_read_per_n": round(reads / fraction / count, 3),  # per whole epoch
        "max_quartile_error": round(quartile_error(drawn, target, sentence_of_key // shards, -(-count // shards)), 4),
        "max_copies_per_batch": max_copies(keys),
        "global_shuffle_copies_per_batch": max_copies(np.array_split(shuffled, -(-len(shuffled) // len(keys[0])))),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "epoch_fraction": round(fraction, 4),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=45000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (chunk sampler: x C chunks)")
    parser.add_argument("--samplers", default="sentence,chunk,plain")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on one sampler's epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    params = FeatureParams()
    directory = synthetic_split(args.sentences, args.shards)
    source = SplitSource(directory, "train", params, count=args.sentences, index_size=args.sentences)
    labels = planted_clustering(args.sentences, params.num_chunks, args.seed)
    kinds = {"sentence": SentenceSampler, "chunk": ChunkSampler, "plain": PlainSampler}
    for name in args.samplers.split(","):
        start = time.perf_counter()
        sampler = kinds[name](source)
        if name != "plain":
            sampler.refresh(np.arange(args.sentences), labels, CLUSTERS)
        opened = time.perf_counter() - start
        batch_size = args.batch_size * (params.num_chunks if name == "chunk" else 1)
        row = run(name, sampler, labels, batch_size, args.shards, args.max_seconds, args.seed)
        row["open_s"] = round(opened, 1)
        print(json.dumps(row), flush=True)
    # A sampler cut short by --max-seconds may still be reading in its thread.
    os._exit(0)


if __name__ == "__main__":
    main()
