"""One utterance to its mel spectrogram, or the reason it cannot be used.

Both passes of the pipeline (train statistics, then writing) call ``utterance_mel``,
so an input is accepted or rejected by exactly the same rules in both. Only the
expected failures of bad inputs become a ``Rejected``; anything else is a bug in
this code and fails the job loudly.
"""

from __future__ import annotations

import math

import numpy as np
import threadpoolctl
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.audio_decoding import DEFAULT_MAX_SECONDS, AudioError, decode_audio
from pipeline.corpus import Utterance
from pipeline.numpy_frontend import waveform_to_mel
from pipeline.params import ATTRIBUTES, LABEL_RANGE, FeatureParams

MISSING_FILE = "missing file"
UNREADABLE_FILE = "unreadable file"
NON_FINITE_LABEL = "non-finite label"
LABEL_OUT_OF_RANGE = "label out of range"
TOO_SHORT = "too short"
MISSING_LABELS = "missing labels"

_BLAS = threadpoolctl.ThreadpoolController()
"""Runners parallelise over elements, one per core; OpenBLAS threads on top of that
fight for the same cores (the mel matmul ran 5x slower on a busy 2-core machine)."""


class Rejected(Exception):
    """An input that goes to the dead letter; ``reason`` is written to errors-*.jsonl."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_labels(utterance: Utterance) -> None:
    """Rejects NaN/inf labels and labels outside the 1..7 attribute scale."""
    if utterance.labels is None:
        return
    if all(math.isnan(value) for value in utterance.labels):
        raise Rejected(f"{MISSING_LABELS}: no {', '.join(ATTRIBUTES)} in a split whose other rows are labelled")
    low, high = LABEL_RANGE
    for name, value in zip(ATTRIBUTES, utterance.labels):
        if not math.isfinite(value):
            raise Rejected(f"{NON_FINITE_LABEL}: {name}={value}")
        if not low <= value <= high:
            raise Rejected(f"{LABEL_OUT_OF_RANGE}: {name}={value:g} not in [{low:g}, {high:g}]")


def read_audio_bytes(path: str) -> bytes:
    """The file's bytes through Beam FileSystems (local, gs://, ...)."""
    if not FileSystems.exists(path):
        raise Rejected(f"{MISSING_FILE}: {path}")
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except OSError as error:
        raise Rejected(f"{UNREADABLE_FILE}: {error}") from error


def utterance_mel(utterance: Utterance, params: FeatureParams,
                  max_audio_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Peak-normalised mel spectrogram [T, n_mels] of an accepted utterance.

    Checks the labels first (cheap), then decodes to mono audio at the feature rate,
    which must be at least ``params.min_seconds`` and at most ``max_audio_seconds`` long
    (``--max-audio-seconds``: the bound on one file's decoding memory).
    """
    check_labels(utterance)
    try:
        waveform = decode_audio(read_audio_bytes(utterance.path), params.sample_rate, max_audio_seconds)
    except AudioError as error:
        raise Rejected(str(error)) from error
    if waveform.size < params.min_samples:
        raise Rejected(f"{TOO_SHORT}: {waveform.size / params.sample_rate:.3f} s < "
                       f"{params.min_seconds:g} s minimum")
    with _BLAS.limit(limits=1, user_api="blas"):
        return waveform_to_mel(waveform, params)
