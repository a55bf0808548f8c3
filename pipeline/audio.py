"""Audio decoding and the mel front end used by the pipeline (librosa, numpy).

The exported model re-implements ``mel_spectrogram`` in-graph (``model.frontend``)
with the filterbank of ``mel_filterbank`` embedded as a constant.
"""

from __future__ import annotations

import functools
import io
import re

import librosa
import numpy as np
import scipy.fft
import soundfile

from pipeline.params import FeatureParams


class AudioError(ValueError):
    """Audio that cannot become features; ``str(error)`` is the dead-letter reason."""


_DATA_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_LENGTH = (0, 0xFFFFFFFF)
"""Data sizes that streaming writers put in a header when the length is not known yet."""


def _missing_data(parser_log: str) -> str | None:
    """Names a WAV/AIFF data chunk whose header size exceeds the bytes in the file.

    libsndfile silently reads such a file up to where it ends and reports the shorter
    length as the frame count; only its header-parser log shows the truncation.
    """
    for chunk, declared, present in _DATA_CHUNK.findall(parser_log):
        if int(declared) not in _UNKNOWN_LENGTH and int(present) < int(declared):
            return f"{chunk} chunk declares {declared} bytes, file holds {present}"
    return None


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Decodes any format soundfile reads into mono float32 at ``sample_rate``.

    Raises AudioError for empty, corrupt, truncated or non-finite audio.
    """
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            declared = sound.frames
            source_rate = sound.samplerate
            missing = _missing_data(sound.extra_info)
            samples = sound.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        detail = getattr(error, "error_string", None) or str(error)  # libsndfile's words, no object repr
        raise AudioError(f"unreadable audio: {detail}") from error
    if samples.shape[0] == 0:
        raise AudioError("audio has no samples")
    if missing:
        raise AudioError(f"truncated audio: {missing}")
    if 0 < declared and samples.shape[0] < declared:
        raise AudioError(f"truncated audio: header declares {declared} frames, read {samples.shape[0]}")
    mono = samples.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise AudioError("audio contains non-finite samples")
    if source_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=source_rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def peak_normalise(waveform: np.ndarray) -> np.ndarray:
    """Scales to a peak of 1 (reference ``x / max|x|``); silence stays zeros."""
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak == 0.0:
        return waveform.astype(np.float32, copy=True)
    return (waveform / peak).astype(np.float32)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Slaney mel filterbank [n_mels, n_fft // 2 + 1], librosa's exactly (a read-only array)."""
    return _filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)


@functools.lru_cache(maxsize=8)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Built once per setting: ``librosa.feature.melspectrogram`` rebuilds it on every call."""
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                htk=False, norm="slaney").astype(np.float32)
    basis.setflags(write=False)
    return basis


def stft_window(params: FeatureParams) -> np.ndarray:
    """librosa's analysis window: periodic Hann of ``win_length``, zero-padded to ``n_fft`` (float64)."""
    return _window(params.n_fft, params.win_length)


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    window = librosa.util.pad_center(librosa.filters.get_window("hann", win_length, fftbins=True), size=n_fft)
    window.setflags(write=False)
    return window


def mel_spectrogram(waveform: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Mel spectrogram [T, n_mels] of a (peak-normalised) 16 kHz waveform.

    ``librosa.feature.melspectrogram``'s arithmetic step for step (float32 frames times
    the float64 window, a float64 real FFT rounded to complex64, ``abs``, ``** power``,
    the same ``einsum`` on the same memory layout), so the output is bit-identical to
    librosa's (tested); the frames are a strided view and the window and filterbank are
    built once, which makes it 2.5x faster.
    """
    padded = np.pad(np.asarray(waveform, dtype=np.float32), params.n_fft // 2, mode=params.pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft)[::params.hop_length]
    spectrum = scipy.fft.rfft(frames * stft_window(params), axis=-1).astype(np.complex64)
    power = np.abs(spectrum) ** params.power
    mel = np.einsum("...ft,mf->...mt", power.T, mel_filterbank(params), optimize=True).T.astype(np.float32)
    if params.log_mel:
        mel = np.log(mel + np.float32(params.log_offset))
    return mel
