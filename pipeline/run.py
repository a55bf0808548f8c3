"""Builds the preprocessing graph from ``PreprocessOptions`` and runs it.

``build_pipeline`` is separate from ``run`` so that tests and the Dataflow graph check
can construct the graph without executing it.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from model.progress import Reporter
from pipeline import records
from pipeline.corpus import TRAIN, Corpus, CorpusError, Utterance, labelled_splits, read_corpus, split_sizes
from pipeline.metadata import FILENAME as METADATA_FILE
from pipeline.options import PreprocessOptions
from pipeline.params import ATTRIBUTES
from pipeline.paths import literal_pattern
from pipeline.probe_file import FILENAME as PROBES_FILE
from pipeline.probes import WriteProbes
from pipeline.stats import MeanStdFn
from pipeline.spill import FOLDER as SPILL_FOLDER, RemoveSpill, SpillMels
from pipeline.transforms import (
    DECODED,
    ERRORS,
    ERRORS_PREFIX,
    ERRORS_SUFFIX,
    CountOutcomes,
    DecodeUtterances,
    EncodeUtterances,
    FeatureStats,
    ReadUtterances,
    WriteErrors,
    WriteMetadata,
    WriteRecords,
    is_not_train,
    is_train,
)

OTHER_SPLITS = "other_splits"
"""The encoding path of every split but train (decoded in the writing pass)."""
INPUTS_FILE = "inputs.jsonl"
"""Every input with its split and record index, staged by the driver for the workers."""

_OUTPUT_PATTERNS = (METADATA_FILE, INPUTS_FILE, PROBES_FILE, SPILL_FOLDER, f"{ERRORS_PREFIX}-*-of-*{ERRORS_SUFFIX}",
                    f"*-*-of-*{records.FILE_SUFFIX}")
_LOG = logging.getLogger(__name__)


class OutputExistsError(ValueError):
    """The output folder holds a previous run, whose shards would mix with this run's."""


def check_fresh_output(output: str) -> None:
    """Refuses an output folder that already holds pipeline outputs."""
    listed = FileSystems.match([FileSystems.join(literal_pattern(output), "*")])[0].metadata_list
    existing = [FileSystems.split(m.path)[1] for m in listed]
    taken = sorted(name for name in existing if any(fnmatch.fnmatch(name, p) for p in _OUTPUT_PATTERNS))
    if taken:
        raise OutputExistsError(f"{output} already holds pipeline outputs ({', '.join(taken[:3])}, ...); "
                                "choose a new --output or delete the old one")


def stage_inputs(utterances: list[Utterance], output: str) -> str:
    """Writes ``inputs.jsonl`` into the output folder and returns its path.

    The workers read the input list from this file rather than from a ``Create``
    embedded in the job graph, which a 600K-utterance pool would make too large to
    submit to Dataflow.
    """
    path = FileSystems.join(output, INPUTS_FILE)
    with FileSystems.create(path) as handle:
        handle.write("".join(u.to_json() + "\n" for u in utterances).encode("utf-8"))
    return path


def load_corpus(options: PreprocessOptions) -> Corpus:
    return read_corpus(options.corpus, data_root=options.data_root, labels=options.labels_file,
                       manifest=options.manifest, unlabeled=options.unlabeled,
                       unlabeled_count=options.unlabeled_count, seed=options.seed)


def build_pipeline(pipeline: beam.Pipeline, options: PreprocessOptions) -> int:
    """Reads the corpus (driver side), stages its input list and adds the whole graph; returns the input count."""
    options.check()
    check_fresh_output(options.output)
    params = options.feature_params()
    corpus = load_corpus(options)
    sizes = split_sizes(corpus.utterances)
    if TRAIN not in sizes:
        raise CorpusError(f"no '{TRAIN}' split among the inputs ({', '.join(sizes)}): the feature "
                          "normalisation statistics are taken over the train split")
    _LOG.info("%d inputs: %s", len(corpus.utterances), ", ".join(f"{s} {n}" for s, n in sizes.items()))
    source = {**corpus.source, "inputs": INPUTS_FILE,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    inputs = stage_inputs(corpus.utterances, options.output)
    # Each pass reads the input list itself, so it streams from the file instead of
    # waiting on a buffered PCollection shared with the other pass.
    train = (pipeline | "ReadTrainInputs" >> ReadUtterances(inputs)
             | "TrainOnly" >> beam.Filter(is_train)
             | "DecodeTrain" >> DecodeUtterances(params, options.max_audio_seconds))
    feature_stats = train.mels | "FeatureStats" >> FeatureStats(params)
    spilled_mels, spill_files = train.mels | "SpillTrainMels" >> SpillMels(options.output)
    others = (pipeline | "ReadInputs" >> ReadUtterances(inputs)
              | "OtherSplits" >> beam.Filter(is_not_train))
    encoded = {TRAIN: spilled_mels | "EncodeTrain" >> EncodeUtterances(params, feature_stats, decode=False),
               OTHER_SPLITS: others | "EncodeOtherSplits" >> EncodeUtterances(
                   params, feature_stats, decode=True, max_audio_seconds=options.max_audio_seconds)}
    errors = (train[ERRORS], encoded[OTHER_SPLITS][ERRORS]) | "AllErrors" >> beam.Flatten()
    (pipeline | "ReadProbeInputs" >> ReadUtterances(inputs)
     | "Probes" >> WriteProbes(options.output, params, list(sizes), feature_stats,
                               max_audio_seconds=options.max_audio_seconds))
    record_files = ({name: outputs.records for name, outputs in encoded.items()}
                    | "WriteRecords" >> WriteRecords(
                        options.output, {TRAIN: [TRAIN], OTHER_SPLITS: [s for s in sizes if s != TRAIN]},
                        options.num_shards, options.gzip_level))
    error_files = errors | "WriteErrors" >> WriteErrors(options.output)
    label_stats = (encoded[TRAIN][EncodeUtterances.TRAIN_LABELS]
                   | "LabelStats" >> beam.CombineGlobally(MeanStdFn(len(ATTRIBUTES))))
    counts = ({ERRORS: errors, **{name: outputs.records for name, outputs in encoded.items()}}
              | "CountOutcomes" >> CountOutcomes())
    files = (record_files, error_files) | "OutputFiles" >> beam.Flatten()
    spill_removed = spill_files | "RemoveSpill" >> RemoveSpill(options.output, after=record_files)
    ({"feature_stats": feature_stats, "label_stats": label_stats, "counts": counts, "files": files,
      "spill_files": spill_removed}
     | "WriteMetadata" >> WriteMetadata(options.output, params, sizes, labelled_splits(corpus.utterances),
                                        {**source, "gzip_level": options.gzip_level,
                                         "max_audio_seconds": options.max_audio_seconds}))
    return len(corpus.utterances)


def run(options: PreprocessOptions) -> PipelineResult:
    """Builds the graph, runs it on the chosen runner and waits until it is done.

    When the workers run in this process (the DirectRunner, unless multi_processing), the
    driver shows how many inputs they decoded, with a rate and the time left; elsewhere each
    worker logs its own counts (``transforms``) and Dataflow shows its counters.
    """
    pipeline = beam.Pipeline(options=options)
    inputs = build_pipeline(pipeline, options)
    reporter = Reporter(log=_LOG.info)
    shown = (reporter.watch(DECODED, "pipeline", inputs, "inputs decoded") if workers_in_process(options)
             else contextlib.nullcontext())
    with shown:
        result = pipeline.run()
        result.wait_until_finish()
    return result


def workers_in_process(options: PreprocessOptions) -> bool:
    """Whether the DoFns run in this process, counting into its ``DECODED`` tally."""
    runner = options.view_as(StandardOptions).runner
    return (runner is None or str(runner).lower() in ("directrunner", "direct")) and \
        options.view_as(DirectOptions).direct_running_mode != "multi_processing"
