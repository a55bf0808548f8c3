"""The TFRecord schema: one ``tf.train.Example`` per utterance.

``encode`` (pipeline side) and ``parse`` (trainer side) are the two halves of this one
module, so the writer and the reader cannot drift apart. Bump ``SCHEMA_VERSION``
whenever a key, dtype or shape changes.

| key          | stored as            | parsed as                     |
|--------------|----------------------|-------------------------------|
| utt_id       | bytes                | tf.string []                  |
| speaker      | bytes                | tf.string []                  |
| split        | bytes                | tf.string []                  |
| index        | int64                | tf.int64 [] (unique per split)|
| features     | raw little-endian bytes of [C, m, n_mels] in storage dtype | tf.float32 [C, m, n_mels] |
| labels       | float [3] (arousal, valence, dominance; 1..7, 0 if none) | tf.float32 [3] |
| has_labels   | int64 0/1            | tf.bool []                    |
| num_frames   | int64                | tf.int64 [] (frames before chunking) |
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from pipeline.params import ATTRIBUTES, FeatureParams

SCHEMA_VERSION = 1
FILE_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"


def shard_pattern(split: str) -> str:
    """Glob (relative to the output directory) matching one split's shards."""
    return f"{split}-*-of-*{FILE_SUFFIX}"


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode(
    *,
    utt_id: str,
    speaker: str,
    split: str,
    index: int,
    features: np.ndarray,
    labels: np.ndarray | None,
    num_frames: int,
    params: FeatureParams,
) -> bytes:
    """Serialises one utterance; ``labels=None`` marks an unlabelled one."""
    if tuple(features.shape) != params.feature_shape:
        raise ValueError(f"features shape {features.shape} != {params.feature_shape}")
    stored = np.ascontiguousarray(features, dtype=np.dtype(params.storage_dtype).newbyteorder("<"))
    label_values = np.zeros(len(ATTRIBUTES), np.float32) if labels is None else np.asarray(labels, np.float32)
    if label_values.shape != (len(ATTRIBUTES),):
        raise ValueError(f"labels must have shape [{len(ATTRIBUTES)}], got {label_values.shape}")
    example = tf.train.Example(features=tf.train.Features(feature={
        "utt_id": _bytes(utt_id.encode("utf-8")),
        "speaker": _bytes(speaker.encode("utf-8")),
        "split": _bytes(split.encode("utf-8")),
        "index": _int(index),
        "features": _bytes(stored.tobytes()),
        "labels": tf.train.Feature(float_list=tf.train.FloatList(value=label_values.tolist())),
        "has_labels": _int(0 if labels is None else 1),
        "num_frames": _int(num_frames),
    }))
    return example.SerializeToString()


_SPEC = {
    "utt_id": tf.io.FixedLenFeature([], tf.string),
    "speaker": tf.io.FixedLenFeature([], tf.string),
    "split": tf.io.FixedLenFeature([], tf.string),
    "index": tf.io.FixedLenFeature([], tf.int64),
    "features": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([len(ATTRIBUTES)], tf.float32),
    "has_labels": tf.io.FixedLenFeature([], tf.int64),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
}


def parse(serialized: tf.Tensor, params: FeatureParams | None = None) -> Mapping[str, tf.Tensor]:
    """Parses one serialised Example (graph-safe, for ``tf.data.Dataset.map``).

    ``params`` must be the settings the records were written with (the trainer takes
    them from ``metadata.json``); the default is ``FeatureParams()``.
    """
    params = params or FeatureParams()
    parsed = tf.io.parse_single_example(serialized, _SPEC)
    raw = tf.io.decode_raw(parsed["features"], tf.dtypes.as_dtype(params.storage_dtype), little_endian=True)
    features = tf.reshape(tf.cast(raw, tf.float32), params.feature_shape)
    return {
        "utt_id": parsed["utt_id"],
        "speaker": parsed["speaker"],
        "split": parsed["split"],
        "index": parsed["index"],
        "features": features,
        "labels": parsed["labels"],
        "has_labels": tf.cast(parsed["has_labels"], tf.bool),
        "num_frames": parsed["num_frames"],
    }
