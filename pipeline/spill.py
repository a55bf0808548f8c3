"""Hands the train split's mel spectrograms from the statistics pass to the writing pass.

The records need the train statistics, which exist only once every train utterance has
been seen. Holding the spectrograms in memory until then would grow with the corpus;
decoding the train audio a second time cost 40 % of the pipeline's time. Instead the
statistics pass also writes each (utterance, mel) pair to uncompressed TFRecord files in
``OUT/tmp-train-mels/``; the writing pass reads them back once the statistics are known,
and ``RemoveSpill`` deletes them before ``metadata.json`` is written. Memory stays flat;
the price is temporary disk (float32 [T, n_mels] per train utterance, about 175 KB for
5.5 s of speech) and one sequential write and read of it.

A spill record is ``<u32 header length><u32 frames><u32 bins><utterance JSON><float32 mel>``,
little-endian; it lives only for the duration of one run, so it has no version.
"""

from __future__ import annotations

import struct
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsList

from pipeline.corpus import Utterance
from pipeline.paths import literal_pattern, remove_folder
from pipeline.sinks import read_tfrecords, write_tfrecords

FOLDER = "tmp-train-mels"
_HEADER = struct.Struct("<III")
_MEL_DTYPE = np.dtype("<f4")


def pack(pair: tuple[Utterance, np.ndarray]) -> bytes:
    """One spill record of an (utterance, float32 [T, n_mels] mel) pair."""
    utterance, mel = pair
    header = utterance.to_json().encode("utf-8")
    frames, bins = mel.shape
    return _HEADER.pack(len(header), frames, bins) + header + np.ascontiguousarray(mel, _MEL_DTYPE).tobytes()


def unpack(record: bytes) -> tuple[Utterance, np.ndarray]:
    """The pair ``pack`` wrote; the mel is float32 and bit-identical."""
    length, frames, bins = _HEADER.unpack_from(record)
    start = _HEADER.size + length
    utterance = Utterance.from_json(record[_HEADER.size:start].decode("utf-8"))
    mel = np.frombuffer(record, _MEL_DTYPE, count=frames * bins, offset=start).reshape(frames, bins)
    return utterance, mel.astype(np.float32)


def folder(output: str) -> str:
    return FileSystems.join(output, FOLDER)


class SpillMels(beam.PTransform):
    """(utterance, mel) pairs -> the same pairs read back from files under ``folder(output)``.

    Returns ``(pairs, files)``: the pairs as the next pass reads them, and the names of
    the files they went through (for ``RemoveSpill``).
    """

    def __init__(self, output: str):
        super().__init__()
        self._folder = folder(output)

    def expand(self, pairs: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        files = (pairs
                 | "Pack" >> beam.Map(pack)
                 | "Write" >> write_tfrecords(FileSystems.join(self._folder, "mels")))
        read_back = (files
                     | "Read" >> read_tfrecords()
                     | "Unpack" >> beam.Map(unpack))
        return read_back, files


class _RemoveFn(beam.DoFn):
    def __init__(self, spill_folder: str):
        super().__init__()
        self._folder = spill_folder

    def process(self, files: Sequence[str], after: Sequence) -> Iterator[int]:
        if files:
            FileSystems.delete([literal_pattern(path) for path in files])
        remove_folder(self._folder)
        yield len(files)


class RemoveSpill(beam.PTransform):
    """Deletes the spill files once ``after`` (the written record files) is complete.

    Every read of a spill file feeds a record, so a complete record file list means no
    reader is left. Returns a singleton: the number of spill files removed.
    """

    def __init__(self, output: str, after: beam.PCollection):
        super().__init__()
        self._folder = folder(output)
        self._after = after

    def expand(self, files: beam.PCollection) -> beam.PCollection:
        return (files
                | "AllFiles" >> beam.combiners.ToList()
                | "Remove" >> beam.ParDo(_RemoveFn(self._folder), after=AsList(self._after)))
