"""TFRecord datasets of one split, for embedding, evaluation and the training samplers.

The record schema lives in ``pipeline.records``; this module only decides how a split's
shards are read: in a fixed order for embedding and evaluation (so runs repeat exactly),
or shuffled and repeated for the samplers in ``model.training.samplers``, which look at a
record's ``index`` before paying for decoding its features.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Callable, Mapping, Sequence

import tensorflow as tf

from pipeline import records
from pipeline.metadata import Metadata, MetadataError
from pipeline.paths import literal_pattern
from pipeline.params import FeatureParams

AUTOTUNE = tf.data.AUTOTUNE

READ_PARALLELISM = 16
"""Shards read at once; fixed (not AUTOTUNE) because it decides the record order."""

DEFAULT_SHUFFLE_BUFFER = 512
"""Serialized records held for shuffling (about 170 KB each at the reference geometry)."""

TRAINING_KEYS: tuple[str, ...] = ("features", "labels", "has_labels", "index")
"""The fields a training step needs; the string fields cannot enter a Keras step."""

_INDEX_SPEC = {"index": tf.io.FixedLenFeature([], tf.int64)}


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's records live and what they hold: all a sampler needs to read it.

    ``count`` is the number of records; their ``index`` values lie in [0, index_size)
    with gaps where the pipeline rejected an input.
    """

    data_dir: str
    split: str
    params: FeatureParams
    count: int
    index_size: int

    @classmethod
    def from_metadata(cls, data_dir: str, split: str, metadata: Metadata) -> "SplitSource":
        if split not in metadata.splits:
            raise MetadataError(f"split {split!r} is missing from the data (present: {sorted(metadata.splits)})")
        info = metadata.splits[split]
        return cls(data_dir, split, metadata.params, info.count, info.index_size)

    def files(self) -> list[str]:
        return split_files(self.data_dir, self.split)


def split_files(data_dir: str, split: str) -> list[str]:
    """The split's shards, sorted; works for local paths and gs:// alike."""
    pattern = posixpath.join(data_dir, records.shard_pattern(split))
    # The folder's name is matched literally: a data folder named out[1] would match out1.
    files = sorted(tf.io.gfile.glob(posixpath.join(literal_pattern(data_dir), records.shard_pattern(split))))
    if not files:
        raise FileNotFoundError(f"no records of split {split!r} in {data_dir} (looked for {pattern})")
    # A shard's name says how many the split has: a deleted or unsynced one would
    # silently shrink every score over the split.
    totals = {int(name[:-len(records.FILE_SUFFIX)].rsplit("-of-", 1)[1]) for name in map(posixpath.basename, files)}
    if len(totals) > 1 or len(files) != totals.pop():
        names = ", ".join(posixpath.basename(f) for f in files)
        raise FileNotFoundError(f"split {split!r} in {data_dir} is incomplete or mixes runs: found {names}")
    return files


def serialized_records(
    files: Sequence[str],
    *,
    shuffle: bool = False,
    seed: int | tf.Tensor = 0,
    repeat: bool = False,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """Serialized Examples of the given shards, read in parallel.

    Unshuffled, the order is a fixed round robin over the sorted shards (each shard's
    records in the order written). Shuffled, the shard order and a buffer of records are
    reshuffled on every pass, deterministically for a seed. Repeated, the passes follow
    each other without end, each one holding every record exactly once. ``seed`` may be
    a tensor, so a sampler can derive it per epoch inside its pipeline.
    """
    shards = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        shards = shards.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = shards.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION),
        cycle_length=min(len(files), READ_PARALLELISM),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        # A seed distinct from the shard shuffle's, so the two draws are independent.
        dataset = dataset.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    # Repeating last keeps every pass a complete permutation of the split.
    return dataset.repeat() if repeat else dataset


def parse_index(serialized: tf.Tensor) -> tf.Tensor:
    """Only the ``index`` of a serialized record: cheap, the features stay undecoded."""
    return tf.io.parse_single_example(serialized, _INDEX_SPEC)["index"]


def parser(params: FeatureParams, keys: Sequence[str] | None = None) -> Callable[[tf.Tensor], dict]:
    """``records.parse`` with the data's params, keeping only ``keys`` (all when None)."""

    def parse(serialized: tf.Tensor) -> dict:
        parsed = records.parse(serialized, params)
        return dict(parsed) if keys is None else select(parsed, keys)

    return parse


def select(element: Mapping[str, tf.Tensor], keys: Sequence[str]) -> dict:
    return {key: element[key] for key in keys}


def split_dataset(
    data_dir: str,
    split: str,
    params: FeatureParams,
    *,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    keys: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """Parsed records of one split (dicts as ``records.parse``; ``keys`` narrows them,
    e.g. ``TRAINING_KEYS`` to drop the string fields). Shuffled, it suits one-off passes;
    training reads through ``model.training.samplers``, whose epochs stay distinct across Keras
    ``fit`` calls."""
    dataset = serialized_records(split_files(data_dir, split), shuffle=shuffle, seed=seed, repeat=repeat)
    return dataset.map(parser(params, keys), num_parallel_calls=AUTOTUNE, deterministic=True)


def inference_batches(
    data_dir: str,
    split: str,
    params: FeatureParams,
    batch_size: int,
    *,
    keys: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """Every record once, in the fixed unshuffled order, batched (last batch may be short):
    ``features`` [B, C, m, F], ``labels`` [B, 3], ``index`` [B], ... for embedding and
    evaluation."""
    dataset = split_dataset(data_dir, split, params, keys=keys)
    return dataset.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)
