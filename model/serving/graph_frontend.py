"""The pipeline's feature front end as TensorFlow ops, for the exported model.

``serve_waveform`` must turn a raw waveform into the features the pipeline writes
without librosa, tensorflow-io or Python callbacks, so that a process importing only
TensorFlow can run it from a SavedModel. Every step mirrors its numpy twin,
``pipeline.numpy_frontend`` (waveform -> peak normalise -> mel -> z-normalise -> chunks):
librosa's filterbank and window are embedded as constants at construction time, and
the STFT runs in float64 as librosa's does (float64 window times float32 frames,
pocketfft in float64, result stored as complex64), which keeps low-energy mel bins
within float32 rounding of the pipeline.

Short input: any waveform of at least one sample gives librosa's frames exactly
(``reflect`` padding wider than the signal repeats the mirror image, as ``np.pad``
does). An empty waveform is treated as one zero sample, i.e. one silent frame.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.numpy_frontend import mel_filterbank, stft_window
from pipeline.params import FeatureParams


class WaveformFrontend(tf.Module):
    """Waveform [samples] -> normalised chunks [C, m, n_mels], traceable for any length.

    The methods are plain TensorFlow code (not ``tf.function``s) so that they trace
    into whatever signature calls them, e.g. ``tf.TensorSpec([None], tf.float32)``.
    """

    def __init__(self, params: FeatureParams, feature_mean: np.ndarray, feature_std: np.ndarray,
                 name: str = "waveform_frontend") -> None:
        super().__init__(name=name)
        shape = (params.n_mels,)
        if np.shape(feature_mean) != shape or np.shape(feature_std) != shape:
            raise ValueError(f"feature_mean and feature_std must have shape {shape}, got "
                             f"{np.shape(feature_mean)} and {np.shape(feature_std)}")
        self.params = params
        self._window = tf.constant(stft_window(params), tf.float64)
        self._filterbank = tf.constant(mel_filterbank(params).T, tf.float32)
        self._mean = tf.constant(feature_mean, tf.float64)
        self._std = tf.constant(feature_std, tf.float64)

    def mel(self, waveform: tf.Tensor) -> tf.Tensor:
        """Peak-normalised mel spectrogram [T, n_mels], T = 1 + samples // hop."""
        p = self.params
        x = tf.convert_to_tensor(waveform, tf.float32)
        x = tf.pad(x, [[0, tf.maximum(1 - tf.size(x), 0)]])
        peak = tf.reduce_max(tf.abs(x))
        x = x / tf.where(peak > 0.0, peak, 1.0)
        frames = tf.signal.frame(self._centre_pad(x), p.n_fft, p.hop_length)
        spectrum = tf.signal.rfft(tf.cast(frames, tf.float64) * self._window, [p.n_fft])
        magnitude = tf.abs(tf.cast(spectrum, tf.complex64))
        power = tf.square(magnitude) if p.power == 2.0 else tf.pow(magnitude, p.power)
        mel = tf.matmul(power, self._filterbank)
        if p.log_mel:
            mel = tf.math.log(mel + tf.constant(p.log_offset, tf.float32))
        return mel

    def normalise(self, mel: tf.Tensor) -> tf.Tensor:
        """Train-statistics z-score in float64 as the pipeline; NaN -> 0, then clip."""
        z = (tf.cast(mel, tf.float64) - self._mean) / self._std
        z = tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)
        clip = self.params.clip_value
        return tf.cast(tf.clip_by_value(z, -clip, clip), tf.float32)

    def chunk(self, frames: tf.Tensor) -> tf.Tensor:
        """Normalised [T, F] -> [C, m, F] by the short rule and chunk shift of the params."""
        p = self.params
        m, c = p.chunk_frames, p.num_chunks
        t = tf.shape(frames)[0]
        if p.short_rule == "repeat":
            frames = tf.gather(frames, tf.range(tf.maximum(t, m)) % t)
        else:
            frames = tf.pad(frames, [[0, tf.maximum(m - t, 0)], [0, 0]])
        span = tf.shape(frames)[0] - m
        i = tf.range(c)
        if c == 1:
            starts = tf.zeros([1], tf.int32)
        elif p.chunk_shift == "floor":
            starts = i * (span // (c - 1))
        else:
            starts = (i * span) // (c - 1)
        return tf.gather(frames, starts[:, None] + tf.range(m)[None, :])

    def __call__(self, waveform: tf.Tensor) -> tf.Tensor:
        """Normalised chunks [C, m, n_mels], as ``mel_to_chunks(waveform_to_mel(w), ...)``."""
        chunks = self.chunk(self.normalise(self.mel(waveform)))
        return tf.ensure_shape(chunks, self.params.feature_shape)

    def _centre_pad(self, x: tf.Tensor) -> tf.Tensor:
        """librosa's ``center=True`` padding by n_fft // 2 on each side."""
        half = self.params.n_fft // 2
        if self.params.pad_mode == "constant":
            return tf.pad(x, [[half, half]])
        n = tf.size(x)
        period = tf.maximum(2 * n - 2, 1)
        k = tf.range(-half, n + half) % period
        return tf.gather(x, tf.where(k >= n, period - k, k))
