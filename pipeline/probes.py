"""The Beam transform that picks the utterances of ``probes.npz`` (``pipeline.probe_file``).

The probes are the dev split's lowest record indices (train's when there is no dev
split), so every run of the same corpus picks the same ones. ``WriteProbes`` filters
the inputs by index before decoding anything, and ``Top`` keeps at most ``count``
probes, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from pipeline.audio_decoding import DEFAULT_MAX_SECONDS, AudioError, decode_audio
from pipeline.corpus import TRAIN, Utterance
from pipeline.numpy_frontend import mel_to_chunks
from pipeline.params import FeatureParams
from pipeline.probe_file import Probe, probe_index, write_probes
from pipeline.stats import Moments
from pipeline.utterance_mel import Rejected, read_audio_bytes, utterance_mel

DEV = "dev"
PROBE_COUNT = 3
CANDIDATES_PER_PROBE = 4
"""Inputs looked at per probe wanted, so a few rejected inputs still leave ``count`` probes."""


def probe_split(splits: Sequence[str]) -> str:
    """The split probes come from: dev when the corpus has one, else train."""
    return DEV if DEV in splits else TRAIN


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
                | "Lowest" >> beam.combiners.Top.Smallest(self._count, key=probe_index)
                | "Write" >> beam.Map(lambda probes: write_probes(output, probes, params)))
