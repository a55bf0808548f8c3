"""Every feature and chunk setting, defined once.

The pipeline writes these settings into ``metadata.json``; the trainer reads them back
from there (never from its own defaults) and the exported model embeds them, so the
three can never disagree (the YAMNet ``Params`` idiom). Defaults reproduce the
reference implementation (see README, "Faithful by default").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

ATTRIBUTES: tuple[str, ...] = ("arousal", "valence", "dominance")
"""Emotional attributes, in the order of every label vector in this project."""

LABEL_RANGE: tuple[float, float] = (1.0, 7.0)
"""MSP-Podcast attribute scale; labels outside it are rejected by the pipeline."""

CHUNK_SHIFTS = ("floor", "float")
SHORT_RULES = ("repeat", "pad")
PAD_MODES = ("reflect", "constant")
STORAGE_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Mel front end, z-normalisation and dynamic chunking settings.

    Attributes:
      sample_rate: audio is resampled to this rate (Hz).
      n_fft, win_length, hop_length: STFT geometry in samples (32 ms / 16 ms).
      n_mels, fmin, fmax: Slaney mel filterbank with Slaney area normalisation.
      power: exponent of the magnitude spectrum (2 = power mel, as the reference).
      pad_mode: padding of ``center=True`` framing. The reference ran librosa < 0.10,
        whose default was ``reflect``; librosa >= 0.10 defaults to ``constant``.
      log_mel: take ``log(mel + log_offset)``; the reference uses linear power mel.
      max_seconds, chunk_seconds: T_max and w_c of paper Eq. 2.
      chunk_shift: ``floor`` places chunk i at ``i * floor((T - m) / (C - 1))`` as the
        reference does; ``float`` at ``floor(i * (T - m) / (C - 1))`` (Eq. 1 exactly,
        so the last chunk always ends on the last frame).
      short_rule: utterances with fewer than m frames are tiled in time (``repeat``)
        or padded with zeros after normalisation, i.e. the train mean (``pad``).
      clip_value: normalised features are clipped to [-clip_value, clip_value].
      min_seconds: shorter audio is rejected by the pipeline.
      storage_dtype: dtype of the features stored in the TFRecords.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 256
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    power: float = 2.0
    pad_mode: str = "reflect"
    log_mel: bool = False
    log_offset: float = 1e-6
    max_seconds: float = 11.0
    chunk_seconds: float = 1.0
    chunk_shift: str = "floor"
    short_rule: str = "repeat"
    clip_value: float = 3.0
    min_seconds: float = 0.25
    storage_dtype: str = "float16"

    def __post_init__(self) -> None:
        _check_choice("chunk_shift", self.chunk_shift, CHUNK_SHIFTS)
        _check_choice("short_rule", self.short_rule, SHORT_RULES)
        _check_choice("pad_mode", self.pad_mode, PAD_MODES)
        _check_choice("storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.chunk_seconds <= 0 or self.max_seconds < self.chunk_seconds:
            raise ValueError("need 0 < chunk_seconds <= max_seconds")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_seconds {self.chunk_seconds} is shorter than one hop")
        if self.clip_value <= 0:
            raise ValueError("clip_value must be positive")

    @property
    def chunk_frames(self) -> int:
        """m: frames per chunk (62 for 1 s at a 16 ms hop, as the reference)."""
        return int(self.chunk_seconds * self.sample_rate / self.hop_length)

    @property
    def num_chunks(self) -> int:
        """C = ceil(T_max / w_c) of paper Eq. 2."""
        return math.ceil(round(self.max_seconds / self.chunk_seconds, 9))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape [C, m, n_mels] of one utterance's chunked features."""
        return (self.num_chunks, self.chunk_frames, self.n_mels)

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * self.sample_rate))

    def num_frames(self, num_samples: int) -> int:
        """Frame count of a ``center=True`` STFT over ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FeatureParams":
        """Rebuilds params from ``to_dict`` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown feature settings {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
