"""Per-dimension mean and standard deviation as a Beam ``CombineFn``.

Used twice: over the mel bins of every frame of the train split (feature
z-normalisation) and over the three label attributes of the written train utterances.
Accumulators hold (count, mean, M2) in float64 and merge with the pairwise update of
Chan, Golub and LeVeque, so the result does not depend on how the runner splits and
merges the work, and stays accurate over millions of frames where naive sums of
squares lose precision.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np


class Moments(NamedTuple):
    """Mean and std (ddof 0) per dimension over ``count`` rows; NaN when count is 0."""

    count: int
    mean: np.ndarray
    std: np.ndarray


class _Accumulator(NamedTuple):
    count: int
    mean: np.ndarray
    m2: np.ndarray


def merge_moments(a: _Accumulator, b: _Accumulator) -> _Accumulator:
    """Chan et al.'s pairwise merge of two (count, mean, M2) summaries."""
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    count = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / count)
    m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / count)
    return _Accumulator(count, mean, m2)


class MeanStdFn(beam.CombineFn):
    """Combines rows of ``dim`` values; each input is one row [dim] or a block [n, dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self._dim = dim

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator(0, np.zeros(self._dim), np.zeros(self._dim))

    def add_input(self, accumulator: _Accumulator, rows: np.ndarray) -> _Accumulator:
        block = np.asarray(rows, np.float64).reshape(-1, self._dim)
        if block.shape[0] == 0:
            return accumulator
        mean = block.mean(axis=0)
        m2 = np.square(block - mean).sum(axis=0)
        return merge_moments(accumulator, _Accumulator(block.shape[0], mean, m2))

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged = merge_moments(merged, accumulator)
        return merged

    def extract_output(self, accumulator: _Accumulator) -> Moments:
        if accumulator.count == 0:
            nan = np.full(self._dim, np.nan)
            return Moments(0, nan, nan.copy())
        return Moments(accumulator.count, accumulator.mean, np.sqrt(accumulator.m2 / accumulator.count))
