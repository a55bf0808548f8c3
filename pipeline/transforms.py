"""The composite PTransforms of the preprocessing graph.

The graph makes two passes over the inputs instead of keeping every mel spectrogram
until the train statistics are known: ``FeatureStats`` decodes the train split and
combines its frames; ``EncodeUtterances`` decodes every split again and normalises
with those statistics as a side input. Each element is decoded, chunked and encoded
inside one DoFn call, so memory stays flat in corpus size on any runner, at the cost
of decoding the train audio twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput

from pipeline import records
from pipeline.corpus import TRAIN, Utterance
from pipeline.extract import Rejected, utterance_mel
from pipeline.features import mel_to_chunks
from pipeline.metadata import LabelStats, Metadata, SplitInfo
from pipeline.params import ATTRIBUTES, FeatureParams
from pipeline.stats import MeanStdFn, Moments

METRICS_NAMESPACE = "pipeline"
ERRORS_PREFIX = "errors"
ERRORS_SUFFIX = ".jsonl"
WRITTEN = "written"
REJECTED = "rejected"
PROGRESS_SECONDS = 30.0

_LOG = logging.getLogger(__name__)


class ReadUtterances(beam.PTransform):
    """The staged ``inputs.jsonl`` (one ``Utterance`` per line) as a PCollection."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "ReadLines" >> beam.io.ReadFromText(self._path)
                | "Parse" >> beam.Map(Utterance.from_json))


class _TrainMels(beam.DoFn):
    """Mel spectrograms of the accepted train utterances (rejections are counted later)."""

    def __init__(self, params: FeatureParams):
        super().__init__()
        self._params = params

    def process(self, utterance: Utterance) -> Iterator[np.ndarray]:
        try:
            mel = utterance_mel(utterance, self._params)
        except Rejected:
            return
        yield mel


def is_train(utterance: Utterance) -> bool:
    return utterance.split == TRAIN


class FeatureStats(beam.PTransform):
    """Per-mel-bin ``Moments`` over every frame of every accepted train utterance."""

    def __init__(self, params: FeatureParams):
        super().__init__()
        self._params = params

    def expand(self, utterances: beam.PCollection) -> beam.PCollection:
        return (utterances
                | "TrainOnly" >> beam.Filter(is_train)
                | "Mel" >> beam.ParDo(_TrainMels(self._params))
                | "MeanStd" >> beam.CombineGlobally(MeanStdFn(self._params.n_mels)))


def error_record(utterance: Utterance, reason: str) -> dict:
    """One line of errors-*.jsonl."""
    return {"id": utterance.utt_id, "path": utterance.path, "split": utterance.split,
            "index": utterance.index, "reason": reason}


class _Encode(beam.DoFn):
    """Utterance -> (split, serialised Example), or an error record on the dead letter."""

    def __init__(self, params: FeatureParams):
        super().__init__()
        self._params = params

    def setup(self) -> None:
        self._done = {WRITTEN: 0, REJECTED: 0}
        self._last_report = time.monotonic()

    def process(self, utterance: Utterance, stats: Moments) -> Iterator:
        if stats.count == 0:
            raise ValueError("no train-split audio could be decoded, so the features cannot be "
                             "normalised; every train input is rejected or the train split is empty")
        try:
            mel = utterance_mel(utterance, self._params)
        except Rejected as rejected:
            self._count(utterance.split, REJECTED)
            yield TaggedOutput(EncodeUtterances.ERRORS, error_record(utterance, rejected.reason))
            return
        payload = records.encode(
            utt_id=utterance.utt_id, speaker=utterance.speaker, split=utterance.split,
            index=utterance.index, features=mel_to_chunks(mel, stats.mean, stats.std, self._params),
            labels=None if utterance.labels is None else np.asarray(utterance.labels, np.float32),
            num_frames=mel.shape[0], params=self._params)
        self._count(utterance.split, WRITTEN)
        if utterance.split == TRAIN and utterance.labels is not None:
            yield TaggedOutput(EncodeUtterances.TRAIN_LABELS, np.asarray(utterance.labels, np.float64))
        yield utterance.split, payload

    def _count(self, split: str, outcome: str) -> None:
        Metrics.counter(METRICS_NAMESPACE, f"{split}_{outcome}").inc()
        self._done[outcome] += 1
        now = time.monotonic()
        if now - self._last_report >= PROGRESS_SECONDS:
            self._last_report = now
            _LOG.info("this worker so far: %d utterances written, %d rejected",
                      self._done[WRITTEN], self._done[REJECTED])


class EncodeUtterances(beam.PTransform):
    """Every split: decode, mel, normalise with the train stats, chunk, encode.

    Returns a DoFnOutputsTuple: main output (split, payload) pairs, ``errors``
    (error records) and ``train_labels`` (label vectors of written train utterances).
    """

    ERRORS = "errors"
    TRAIN_LABELS = "train_labels"

    def __init__(self, params: FeatureParams, feature_stats: beam.PCollection):
        super().__init__()
        self._params = params
        self._feature_stats = feature_stats

    def expand(self, utterances: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return utterances | "Encode" >> beam.ParDo(
            _Encode(self._params), stats=AsSingleton(self._feature_stats)
        ).with_outputs(self.ERRORS, self.TRAIN_LABELS, main="records")


class WriteSplits(beam.PTransform):
    """(split, payload) pairs -> ``<split>-SSSSS-of-NNNNN.tfrecord.gz``, one file set per split.

    ``num_shards`` 0 lets the runner choose and streams; a fixed count makes Beam group
    the records by shard first, which holds them in memory on the DirectRunner.
    Returns the written file names.
    """

    def __init__(self, output: str, splits: Sequence[str], num_shards: int = 0):
        super().__init__()
        self._output = output
        self._splits = list(splits)
        self._num_shards = num_shards

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        parts = pairs | "BySplit" >> beam.Partition(_split_partition, len(self._splits), self._splits)
        files = []
        for split, part in zip(self._splits, parts):
            files.append(part
                         | f"Payloads[{split}]" >> beam.Values()
                         | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                             FileSystems.join(self._output, split),
                             file_name_suffix=records.FILE_SUFFIX,
                             compression_type=getattr(CompressionTypes, records.COMPRESSION),
                             num_shards=self._num_shards))
        return files | "AllFiles" >> beam.Flatten()


def _split_partition(pair: tuple[str, bytes], num_partitions: int, splits: Sequence[str]) -> int:
    return splits.index(pair[0])


class WriteErrors(beam.PTransform):
    """Error records -> ``errors-SSSSS-of-NNNNN.jsonl`` (an empty shard when there are none)."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, errors: beam.PCollection) -> beam.PCollection:
        return (errors
                | "ToJson" >> beam.Map(json.dumps, sort_keys=True)
                | "Write" >> beam.io.WriteToText(FileSystems.join(self._output, ERRORS_PREFIX),
                                                 file_name_suffix=ERRORS_SUFFIX))


class CountOutcomes(beam.PTransform):
    """((split, written|rejected), count) pairs from the records and the error records."""

    def expand(self, outputs: Mapping[str, beam.PCollection]) -> beam.PCollection:
        written = outputs["records"] | "Written" >> beam.Map(_written)
        rejected = outputs["errors"] | "Rejected" >> beam.Map(_rejected)
        return ((written, rejected)
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
                counts: Mapping[tuple[str, str], int], files: list[str]) -> Iterator[str]:
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
                    "train_labelled": int(label_stats.count), "files": sorted(
                        FileSystems.split(path)[1] for path in files)},
        )
        yield metadata.write(self._output)


class WriteMetadata(beam.PTransform):
    """Builds and writes ``metadata.json`` inside the graph, after every record file.

    Input: a dict with ``feature_stats`` and ``label_stats`` (singleton ``Moments``),
    ``counts`` (``CountOutcomes``) and ``files`` (the written record and error files).
    Waiting on ``files`` as a side input makes the metadata the last file written, so a
    complete ``metadata.json`` means complete outputs.
    """

    def __init__(self, output: str, params: FeatureParams, index_sizes: Mapping[str, int],
                 labelled: Mapping[str, bool], source: Mapping):
        super().__init__()
        self._fn = _WriteMetadataFn(output, params, index_sizes, labelled, source)

    def expand(self, inputs: Mapping[str, beam.PCollection]) -> beam.PCollection:
        return inputs["feature_stats"] | "Write" >> beam.ParDo(
            self._fn, label_stats=AsSingleton(inputs["label_stats"]),
            counts=AsDict(inputs["counts"]), files=AsList(inputs["files"]))
