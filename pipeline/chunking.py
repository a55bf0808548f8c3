"""Dynamic chunking of paper Eq. 1-2: any utterance becomes C chunks of m frames.

Pure numpy; the exported model's in-graph front end re-implements the same rule with
TensorFlow ops and is tested against these functions.
"""

from __future__ import annotations

import numpy as np

from pipeline.params import FeatureParams


def chunk_starts(num_frames: int, params: FeatureParams) -> np.ndarray:
    """First frame of each of the C chunks of an utterance of ``num_frames`` frames.

    Utterances shorter than one chunk are first brought to exactly m frames by
    ``params.short_rule``, so every chunk then starts at frame 0.
    """
    m, c = params.chunk_frames, params.num_chunks
    span = max(num_frames, m) - m
    if c == 1:
        return np.zeros(1, dtype=np.int64)
    i = np.arange(c, dtype=np.int64)
    if params.chunk_shift == "floor":
        return i * (span // (c - 1))
    return (i * span) // (c - 1)


def fit_short(frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Brings a [T, F] array with T < m frames to m frames; longer input is unchanged."""
    m = params.chunk_frames
    t = frames.shape[0]
    if t >= m:
        return frames
    if t == 0:
        raise ValueError("cannot chunk an utterance with no frames")
    if params.short_rule == "repeat":
        reps = -(-m // t)
        return np.concatenate([frames] * reps, axis=0)[:m]
    pad = np.zeros((m - t,) + frames.shape[1:], dtype=frames.dtype)
    return np.concatenate([frames, pad], axis=0)


def chunk_frames(frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Cuts normalised [T, F] features into [C, m, F] chunks in temporal order."""
    frames = fit_short(frames, params)
    starts = chunk_starts(frames.shape[0], params)
    offsets = starts[:, None] + np.arange(params.chunk_frames)[None, :]
    return frames[offsets]
