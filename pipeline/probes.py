"""``probes.npz``: a few utterances kept both as audio and as the features the pipeline made.

The exported model computes its features in-graph from a waveform; the export step must
prove on real speech that this matches the pipeline. The trainer only reads TFRecords
(perhaps on gs://, far from the audio, and rounded to float16), so the pipeline keeps a
handful of utterances for it: the decoded 16 kHz mono waveform (before peak
normalisation, i.e. what ``serve_waveform`` takes) and the float32 normalised chunks it
computed from it. They are the dev split's lowest record indices (train's when there is
no dev split), so every run of the same corpus picks the same ones.

``WriteProbes`` filters the inputs by index before decoding anything, and ``Top`` keeps
at most ``count`` probes, so memory stays bounded whatever the corpus size. The file is
written and read with ``tf.io.gfile`` (local or gs://), as ``metadata.json`` is.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.pvalue import AsSingleton

from pipeline.audio import DEFAULT_MAX_SECONDS, AudioError, decode_audio
from pipeline.corpus import TRAIN, Utterance
from pipeline.extract import Rejected, read_audio_bytes, utterance_mel
from pipeline.features import mel_to_chunks
from pipeline.params import FeatureParams
from pipeline.stats import Moments

FILENAME = "probes.npz"
DEV = "dev"
PROBE_COUNT = 3
CANDIDATES_PER_PROBE = 4
"""Inputs looked at per probe wanted, so a few rejected inputs still leave ``count`` probes."""


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


def probe_split(splits: Sequence[str]) -> str:
    """The split probes come from: dev when the corpus has one, else train."""
    return DEV if DEV in splits else TRAIN


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
        handle.write(probes_to_bytes(sorted(probes, key=_index), params.feature_shape))
    return path


def load_probes(directory: str) -> list[Probe] | None:
    """The probes of a pipeline output, or None when it has none (written by an older version)."""
    path = posixpath.join(directory, FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as handle:
        return probes_from_bytes(handle.read())


def _index(probe: Probe) -> int:
    return probe.index


class _Probe(beam.DoFn):
    """Utterance -> Probe with the features exactly as ``EncodeUtterances`` computes them.

    ``utterance_mel`` keeps the accept/reject rules in one place but does not return the
    waveform, so a probe's audio is decoded a second time: a few files per run.
    """

    def __init__(self, params: FeatureParams, max_audio_seconds: float):
        super().__init__()
        self._params = params
        self._max_audio_seconds = max_audio_seconds

    def process(self, utterance: Utterance, stats: Moments) -> Iterator[Probe]:
        try:
            mel = utterance_mel(utterance, self._params, self._max_audio_seconds)
            waveform = decode_audio(read_audio_bytes(utterance.path), self._params.sample_rate,
                                    self._max_audio_seconds)
        except (Rejected, AudioError):
            return
        features = mel_to_chunks(mel, stats.mean, stats.std, self._params)
        yield Probe(utterance.utt_id, utterance.split, utterance.index, waveform, features)


class WriteProbes(beam.PTransform):
    """Utterances -> ``probes.npz`` of the ``count`` accepted lowest-index ones of the probe split.

    ``feature_stats`` is the singleton ``Moments`` of ``FeatureStats``. Returns the path
    written (the file is written, possibly with no probes, on every run).
    """

    def __init__(self, output: str, params: FeatureParams, splits: Sequence[str],
                 feature_stats: beam.PCollection, count: int = PROBE_COUNT,
                 max_audio_seconds: float = DEFAULT_MAX_SECONDS):
        super().__init__()
        self._max_audio_seconds = max_audio_seconds
        self._output = output
        self._params = params
        self._split = probe_split(splits)
        self._feature_stats = feature_stats
        self._count = count

    def expand(self, utterances: beam.PCollection) -> beam.PCollection:
        # Locals, not self: the lambdas are pickled, and self holds a PCollection.
        output, params = self._output, self._params
        split, candidates = self._split, self._count * CANDIDATES_PER_PROBE
        return (utterances
                | "Candidates" >> beam.Filter(lambda u: u.split == split and u.index < candidates)
                | "Probe" >> beam.ParDo(_Probe(self._params, self._max_audio_seconds), stats=AsSingleton(self._feature_stats))
                | "Lowest" >> beam.combiners.Top.Smallest(self._count, key=_index)
                | "Write" >> beam.Map(lambda probes: write_probes(output, probes, params)))
