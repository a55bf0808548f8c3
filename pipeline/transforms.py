"""The composite PTransforms of the preprocessing graph.

The records need the train statistics, so the graph has two passes without ever holding
the corpus's spectrograms in memory: ``DecodeUtterances`` turns the train split into
(utterance, mel) pairs, which ``FeatureStats`` combines and ``spill.SpillMels`` writes to
temporary files; ``EncodeUtterances`` then normalises those pairs, read back, and
decodes and normalises every other split, with the statistics as a side input. Every
audio file is decoded once, and memory stays flat in corpus size on any runner.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput

from model.progress import Tally
from pipeline import records
from pipeline.audio_decoding import DEFAULT_MAX_SECONDS
from pipeline.corpus import TRAIN, Utterance
from pipeline.metadata import LabelStats, Metadata, SplitInfo
from pipeline.numpy_frontend import mel_to_chunks
from pipeline.params import ATTRIBUTES, FeatureParams
from pipeline.paths import literal_pattern
from pipeline.sinks import DEFAULT_GZIP_LEVEL, WriteGzipTFRecords, write_text
from pipeline.stats import MeanStdFn, Moments
from pipeline.utterance_mel import Rejected, utterance_mel

METRICS_NAMESPACE = "pipeline"
ERRORS_PREFIX = "errors"
ERRORS_SUFFIX = ".jsonl"
ERRORS = "errors"
WRITTEN = "written"
REJECTED = "rejected"
PROGRESS_SECONDS = 30.0

_LOG = logging.getLogger(__name__)
DECODED = Tally()
"""Utterances decoded or rejected in this process: what the driver shows when the DirectRunner's
workers run inside it (``pipeline.run``)."""


class ReadUtterances(beam.PTransform):
    """The staged ``inputs.jsonl`` (one ``Utterance`` per line) as a PCollection.

    The list is small (one short JSON line per input) and read as one split, so it is
    reshuffled: otherwise the runner fuses all the decoding that follows into the one
    bundle that read it, and a second worker gets nothing to do (measured: 2 workers
    were slower than 1 on the DirectRunner).
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "ReadLines" >> beam.io.ReadFromText(literal_pattern(self._path))
                | "Distribute" >> beam.Reshuffle()
                | "Parse" >> beam.Map(Utterance.from_json))


def is_train(utterance: Utterance) -> bool:
    return utterance.split == TRAIN


def is_not_train(utterance: Utterance) -> bool:
    return utterance.split != TRAIN


def error_record(utterance: Utterance, reason: str) -> dict:
    """One line of errors-*.jsonl."""
    return {"id": utterance.utt_id, "path": utterance.path, "split": utterance.split,
            "index": utterance.index, "reason": reason}


class _OutcomeCounter:
    """Beam counters ``<split>_written`` / ``<split>_rejected`` and a progress line every 30 s."""

    def __init__(self) -> None:
        self._done = {WRITTEN: 0, REJECTED: 0}
        self._last_report = time.monotonic()

    def count(self, split: str, outcome: str) -> None:
        Metrics.counter(METRICS_NAMESPACE, f"{split}_{outcome}").inc()
        self._done[outcome] += 1
        now = time.monotonic()
        if now - self._last_report >= PROGRESS_SECONDS and not DECODED.watched:
            self._last_report = now
            _LOG.info("this worker so far: %d utterances written, %d rejected",
                      self._done[WRITTEN], self._done[REJECTED])


def mel_or_error(utterance: Utterance, params: FeatureParams, counter: _OutcomeCounter,
                 max_audio_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray | TaggedOutput:
    """The utterance's mel spectrogram, or its error record tagged for the dead letter (counted)."""
    try:
        return utterance_mel(utterance, params, max_audio_seconds)
    except Rejected as rejected:
        counter.count(utterance.split, REJECTED)
        return TaggedOutput(ERRORS, error_record(utterance, rejected.reason))
    finally:
        DECODED.add()


class _UtteranceFn(beam.DoFn):
    """A DoFn over utterances with the run's feature settings, counting each one's outcome."""

    def __init__(self, params: FeatureParams, max_audio_seconds: float = DEFAULT_MAX_SECONDS):
        super().__init__()
        self._params = params
        self._max_audio_seconds = max_audio_seconds

    def setup(self) -> None:
        self._counter = _OutcomeCounter()


class _Decode(_UtteranceFn):
    """Utterance -> (utterance, mel), or an error record on the dead letter."""

    def process(self, utterance: Utterance) -> Iterator:
        mel = mel_or_error(utterance, self._params, self._counter, self._max_audio_seconds)
        yield mel if isinstance(mel, TaggedOutput) else (utterance, mel)


class DecodeUtterances(beam.PTransform):
    """Utterances -> DoOutputsTuple: ``mels`` ((utterance, mel) pairs) and ``errors``."""

    def __init__(self, params: FeatureParams, max_audio_seconds: float = DEFAULT_MAX_SECONDS):
        super().__init__()
        self._params = params
        self._max_audio_seconds = max_audio_seconds

    def expand(self, utterances: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return utterances | "Decode" >> beam.ParDo(_Decode(self._params, self._max_audio_seconds)).with_outputs(
            ERRORS, main="mels")


def _frames(pair: tuple[Utterance, np.ndarray]) -> np.ndarray:
    return pair[1]


class FeatureStats(beam.PTransform):
    """Per-mel-bin ``Moments`` over every frame of (utterance, mel) pairs."""

    def __init__(self, params: FeatureParams):
        super().__init__()
        self._params = params

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        return (pairs
                | "Frames" >> beam.Map(_frames)
                | "MeanStd" >> beam.CombineGlobally(MeanStdFn(self._params.n_mels)))


class _Encode(_UtteranceFn):
    """(utterance, mel) -> (split, serialised Example), normalised with the train stats."""

    def process(self, pair: tuple[Utterance, np.ndarray], stats: Moments) -> Iterator:
        yield from self._encode(*pair, stats)

    def _encode(self, utterance: Utterance, mel: np.ndarray, stats: Moments) -> Iterator:
        if stats.count == 0:
            raise ValueError("no train-split audio could be decoded, so the features cannot be "
                             "normalised; every train input is rejected or the train split is empty")
        payload = records.encode(
            utt_id=utterance.utt_id, speaker=utterance.speaker, split=utterance.split,
            index=utterance.index, features=mel_to_chunks(mel, stats.mean, stats.std, self._params),
            labels=None if utterance.labels is None else np.asarray(utterance.labels, np.float32),
            num_frames=mel.shape[0], params=self._params)
        self._counter.count(utterance.split, WRITTEN)
        if utterance.split == TRAIN and utterance.labels is not None:
            yield TaggedOutput(EncodeUtterances.TRAIN_LABELS, np.asarray(utterance.labels, np.float64))
        yield utterance.split, payload


class _DecodeEncode(_Encode):
    """Utterance -> decoded and encoded in one call, so no spectrogram waits in a
    PCollection for the statistics; or an error record on the dead letter."""

    def process(self, utterance: Utterance, stats: Moments) -> Iterator:
        mel = mel_or_error(utterance, self._params, self._counter, self._max_audio_seconds)
        if isinstance(mel, TaggedOutput):
            yield mel
            return
        yield from self._encode(utterance, mel, stats)


class EncodeUtterances(beam.PTransform):
    """Normalises, chunks and encodes every accepted utterance.

    Input: (utterance, mel) pairs (``decode=False``: the spilled train split) or
    utterances (``decode=True``: decoded here). Returns a DoOutputsTuple: main output
    ``records`` ((split, payload) pairs), ``errors`` (error records; none when the input
    is already decoded) and ``train_labels`` (label vectors of written train utterances).
    """

    ERRORS = ERRORS
    TRAIN_LABELS = "train_labels"

    def __init__(self, params: FeatureParams, feature_stats: beam.PCollection, decode: bool,
                 max_audio_seconds: float = DEFAULT_MAX_SECONDS):
        super().__init__()
        self._fn = (_DecodeEncode if decode else _Encode)(params, max_audio_seconds)
        self._feature_stats = feature_stats

    def expand(self, inputs: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return inputs | "Encode" >> beam.ParDo(self._fn, stats=AsSingleton(self._feature_stats)).with_outputs(
            self.ERRORS, self.TRAIN_LABELS, main="records")


class WriteSplits(beam.PTransform):
    """(split, payload) pairs -> ``<split>-SSSSS-of-NNNNN.tfrecord.gz``, one file set per split.

    ``num_shards`` 0 lets the runner choose and streams; a fixed count makes Beam group
    the records by shard first, which holds them in memory on the DirectRunner.
    Returns the written file names.
    """

    def __init__(self, output: str, splits: Sequence[str], num_shards: int = 0,
                 gzip_level: int = DEFAULT_GZIP_LEVEL):
        super().__init__()
        self._output = output
        self._splits = list(splits)
        self._num_shards = num_shards
        self._gzip_level = gzip_level

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        parts = pairs | "BySplit" >> beam.Partition(_split_partition, len(self._splits), self._splits)
        files = []
        for split, part in zip(self._splits, parts):
            files.append(part
                         | f"Payloads[{split}]" >> beam.Values()
                         | f"Write[{split}]" >> WriteGzipTFRecords(
                             FileSystems.join(self._output, split), records.FILE_SUFFIX,
                             num_shards=self._num_shards, level=self._gzip_level))
        return files | "AllFiles" >> beam.Flatten()


def _split_partition(pair: tuple[str, bytes], num_partitions: int, splits: Sequence[str]) -> int:
    return splits.index(pair[0])


class WriteRecords(beam.PTransform):
    """The records of each encoding path -> the files of the splits that path holds.

    Input: a dict name -> (split, payload) pairs; ``splits_by_input`` gives each name's
    splits. Each path is written by its own sinks: a Flatten of the payloads would make
    the runner buffer them (it cannot fuse one consumer into two producers), which
    holds every record in memory on the DirectRunner. Returns the written file names.
    """

    def __init__(self, output: str, splits_by_input: Mapping[str, Sequence[str]], num_shards: int = 0,
                 gzip_level: int = DEFAULT_GZIP_LEVEL):
        super().__init__()
        self._writers = {name: WriteSplits(output, splits, num_shards, gzip_level)
                         for name, splits in splits_by_input.items() if splits}

    def expand(self, records_by_input: Mapping[str, beam.PCollection]) -> beam.PCollection:
        files = [records_by_input[name] | f"Splits[{name}]" >> writer for name, writer in self._writers.items()]
        return files | "AllFiles" >> beam.Flatten()


class WriteErrors(beam.PTransform):
    """Error records -> ``errors-SSSSS-of-NNNNN.jsonl`` (an empty shard when there are none)."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, errors: beam.PCollection) -> beam.PCollection:
        return (errors
                | "ToJson" >> beam.Map(json.dumps, sort_keys=True)
                | "Write" >> write_text(FileSystems.join(self._output, ERRORS_PREFIX), ERRORS_SUFFIX))


class CountOutcomes(beam.PTransform):
    """((split, written|rejected), count) pairs from record and error PCollections.

    Input: a dict whose ``errors`` entry holds error records and every other entry
    (split, payload) record pairs; each becomes small (split, outcome) pairs before
    they are flattened.
    """

    def expand(self, outputs: Mapping[str, beam.PCollection]) -> beam.PCollection:
        outcomes = [pcoll | f"Outcome[{name}]" >> beam.Map(_rejected if name == ERRORS else _written)
                    for name, pcoll in outputs.items()]
        return (outcomes
                | "Outcomes" >> beam.Flatten()
                | "Count" >> beam.combiners.Count.PerElement())


def _written(record: tuple[str, bytes]) -> tuple[str, str]:
    return record[0], WRITTEN


def _rejected(error: dict) -> tuple[str, str]:
    return error["split"], REJECTED


class _WriteMetadataFn(beam.DoFn):
    def __init__(self, output: str, params: FeatureParams, index_sizes: Mapping[str, int],
                 labelled: Mapping[str, bool], source: Mapping):
        super().__init__()
        self._output = output
        self._params = params
        self._index_sizes = dict(index_sizes)
        self._labelled = dict(labelled)
        self._source = dict(source)

    def process(self, feature_stats: Moments, label_stats: Moments,
                counts: Mapping[tuple[str, str], int], files: list[str], spill_files: int) -> Iterator[str]:
        splits = {
            split: SplitInfo(count=counts.get((split, WRITTEN), 0), index_size=size,
                             rejected=counts.get((split, REJECTED), 0), labelled=self._labelled[split])
            for split, size in self._index_sizes.items()}
        metadata = Metadata(
            params=self._params,
            feature_mean=feature_stats.mean,
            feature_std=feature_stats.std,
            label_stats=LabelStats(dict(zip(ATTRIBUTES, map(float, label_stats.mean))),
                                   dict(zip(ATTRIBUTES, map(float, label_stats.std)))),
            splits=splits,
            error_count=sum(info.rejected for info in splits.values()),
            source={**self._source, "train_frames": int(feature_stats.count),
                    "train_labelled": int(label_stats.count), "spill_files_removed": spill_files,
                    "files": sorted(
                        FileSystems.split(path)[1] for path in files)},
        )
        yield metadata.write(self._output)


class WriteMetadata(beam.PTransform):
    """Builds and writes ``metadata.json`` inside the graph, after every record file.

    Input: a dict with ``feature_stats`` and ``label_stats`` (singleton ``Moments``),
    ``counts`` (``CountOutcomes``), ``files`` (the written record and error files) and
    ``spill_files`` (``spill.RemoveSpill``'s count). Waiting on ``files`` and
    ``spill_files`` as side inputs makes the metadata the last file written, so a
    complete ``metadata.json`` means complete outputs and no temporary files left.
    """

    def __init__(self, output: str, params: FeatureParams, index_sizes: Mapping[str, int],
                 labelled: Mapping[str, bool], source: Mapping):
        super().__init__()
        self._fn = _WriteMetadataFn(output, params, index_sizes, labelled, source)

    def expand(self, inputs: Mapping[str, beam.PCollection]) -> beam.PCollection:
        return inputs["feature_stats"] | "Write" >> beam.ParDo(
            self._fn, label_stats=AsSingleton(inputs["label_stats"]),
            counts=AsDict(inputs["counts"]), files=AsList(inputs["files"]),
            spill_files=AsSingleton(inputs["spill_files"]))
