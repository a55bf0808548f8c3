"""``probes.npz``: a few utterances kept both as audio and as the features the pipeline made.

The exported model computes its features in-graph from a waveform; the export step must
prove on real speech that this matches the pipeline. The trainer only reads TFRecords
(perhaps on gs://, far from the audio, and rounded to float16), so the pipeline keeps a
handful of utterances for it: the decoded 16 kHz mono waveform (before peak
normalisation, i.e. what ``serve_waveform`` takes) and the float32 normalised chunks it
computed from it.

This module is the file format alone, without Beam, so that exporting a model does not
need the pipeline's dependencies; ``pipeline.probes.WriteProbes`` picks the utterances.
The file is written and read with ``tf.io.gfile`` (local or gs://), as ``metadata.json`` is.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline.params import FeatureParams

FILENAME = "probes.npz"


@dataclasses.dataclass(frozen=True)
class Probe:
    """One utterance as the pipeline saw it.

    ``waveform``: float32 [samples], mono at the feature sample rate, as decoded.
    ``features``: float32 [C, m, n_mels], the normalised chunks before storage rounding.
    """

    utt_id: str
    split: str
    index: int
    waveform: np.ndarray
    features: np.ndarray


def probe_index(probe: Probe) -> int:
    """The order probes are picked and stored in: their record index."""
    return probe.index


def probes_to_bytes(probes: Sequence[Probe], feature_shape: tuple[int, int, int]) -> bytes:
    """An ``.npz`` readable without pickle; waveforms are concatenated with their lengths."""
    features = np.zeros((len(probes), *feature_shape), np.float32)
    for row, probe in zip(features, probes):
        row[...] = probe.features
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        utt_id=np.array([p.utt_id for p in probes], dtype=str),
        split=np.array([p.split for p in probes], dtype=str),
        index=np.array([p.index for p in probes], np.int64),
        waveform_length=np.array([p.waveform.size for p in probes], np.int64),
        waveform=np.concatenate([np.zeros(0, np.float32), *(p.waveform for p in probes)]).astype(np.float32),
        features=features)
    return buffer.getvalue()


def probes_from_bytes(data: bytes) -> list[Probe]:
    """The probes of ``probes_to_bytes``, in index order."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        waveforms = np.split(arrays["waveform"], np.cumsum(arrays["waveform_length"])[:-1])
        return [Probe(str(u), str(s), int(i), w, f) for u, s, i, w, f in zip(
            arrays["utt_id"], arrays["split"], arrays["index"], waveforms, arrays["features"])]


def write_probes(directory: str, probes: Sequence[Probe], params: FeatureParams) -> str:
    path = posixpath.join(directory, FILENAME)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(probes_to_bytes(sorted(probes, key=probe_index), params.feature_shape))
    return path


def load_probes(directory: str) -> list[Probe] | None:
    """The probes of a pipeline output, or None when it has none (written by an older version)."""
    path = posixpath.join(directory, FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as handle:
        return probes_from_bytes(handle.read())
