"""From a decoded waveform to the chunked, normalised features stored per utterance."""

from __future__ import annotations

import numpy as np

from pipeline.audio import mel_spectrogram, peak_normalise
from pipeline.chunking import chunk_frames
from pipeline.params import FeatureParams


def normalise(mel: np.ndarray, mean: np.ndarray, std: np.ndarray, clip_value: float) -> np.ndarray:
    """Train-split z-normalisation as the reference: NaN becomes 0, then clip."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (mel.astype(np.float64) - mean) / std
    z[np.isnan(z)] = 0.0
    return np.clip(z, -clip_value, clip_value).astype(np.float32)


def waveform_to_mel(waveform: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Peak-normalised mel spectrogram [T, n_mels]: what the train statistics are taken over."""
    return mel_spectrogram(peak_normalise(waveform), params)


def mel_to_chunks(mel: np.ndarray, mean: np.ndarray, std: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Normalises a [T, n_mels] mel spectrogram and cuts it into [C, m, n_mels] chunks."""
    return chunk_frames(normalise(mel, mean, std, params.clip_value), params)
