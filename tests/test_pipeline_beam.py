"""Real Beam runs (TestPipeline, DirectRunner) over real audio files and real TFRecords."""

import csv
import glob
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from pipeline import records
from pipeline.corpus import list_unlabeled, read_corpus
from pipeline.extract import Rejected, utterance_mel
from pipeline.features import mel_to_chunks
from pipeline.metadata import Metadata
from pipeline.options import PreprocessOptions
from pipeline.params import FeatureParams
from pipeline.run import build_pipeline
from pipeline.summary import read_errors, reason_kind
from pipeline.transforms import FeatureStats
from tests.fixtures.edge_audio import build_edge_corpus

SMALL_FLAGS = ["--max-seconds", "2", "--chunk-seconds", "0.5"]
SMALL = FeatureParams(max_seconds=2.0, chunk_seconds=0.5)


def run_pipeline(flags: list[str]) -> PreprocessOptions:
    options = PreprocessOptions(flags)
    with BeamTestPipeline(options=options) as pipeline:
        build_pipeline(pipeline, options)
    return options


def read_records(output: str, split: str, params: FeatureParams) -> list[dict]:
    files = sorted(glob.glob(os.path.join(output, records.shard_pattern(split))))
    dataset = tf.data.TFRecordDataset(files, compression_type=records.COMPRESSION)
    return [{k: v.numpy() for k, v in records.parse(s, params).items()} for s in dataset]


def accepted_mels(utterances, params: FeatureParams) -> dict[str, np.ndarray]:
    mels = {}
    for utterance in utterances:
        try:
            mels[utterance.utt_id] = utterance_mel(utterance, params)
        except Rejected:
            pass
    return mels


def test_feature_stats_equal_numpy_over_the_train_frames_only(edge_corpus):
    utterances = read_corpus("csv", manifest=str(edge_corpus.manifest)).utterances
    train = np.concatenate(list(accepted_mels([u for u in utterances if u.split == "train"], SMALL).values()))
    everything = np.concatenate(list(accepted_mels(utterances, SMALL).values()))
    expected_mean, expected_std = train.astype(np.float64).mean(0), train.astype(np.float64).std(0)
    assert not np.allclose(everything.mean(0), expected_mean, rtol=1e-3)  # dev/test would show

    def matches_numpy(outputs):
        (moments,) = outputs
        assert moments.count == train.shape[0]
        np.testing.assert_allclose(moments.mean, expected_mean, rtol=1e-10)
        np.testing.assert_allclose(moments.std, expected_std, rtol=1e-9)

    with BeamTestPipeline() as pipeline:
        stats = pipeline | beam.Create(utterances) | FeatureStats(SMALL)
        assert_that(stats, matches_numpy)


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    """One pipeline run over every kind of good and bad input (small chunk geometry)."""
    folder = tmp_path_factory.mktemp("edge")
    corpus = build_edge_corpus(folder)
    output = str(folder / "out")
    run_pipeline(["--corpus", "csv", "--manifest", str(corpus.manifest), "--output", output] + SMALL_FLAGS)
    return corpus, output, read_corpus("csv", manifest=str(corpus.manifest)).utterances


def test_every_input_is_written_or_rejected_with_its_reason(edge_run):
    corpus, output, utterances = edge_run
    expected = {e.name: e.reason for e in corpus.inputs}
    errors = read_errors(output)
    assert {e["id"]: reason_kind(e["reason"]) for e in errors} == {k: v for k, v in expected.items() if v}
    assert all(set(e) >= {"id", "path", "split", "reason", "index"} for e in errors)
    written = {split: [r["utt_id"].decode() for r in read_records(output, split, SMALL)]
               for split in ("train", "dev", "test")}
    assert sorted(sum(written.values(), [])) == sorted(k for k, v in expected.items() if v is None)
    metadata = Metadata.load(output)
    for split, info in metadata.splits.items():
        inputs = [u for u in utterances if u.split == split]
        rejected = [e for e in errors if e["split"] == split]
        assert info.index_size == len(inputs) == len(written[split]) + len(rejected)
        assert (info.count, info.rejected) == (len(written[split]), len(rejected))
    assert metadata.error_count == len(errors) == 7
    assert {u.utt_id: u.index for u in utterances if u.utt_id in expected} == {
        **{e["id"]: e["index"] for e in errors},
        **{r["utt_id"].decode(): r["index"] for s in written for r in read_records(output, s, SMALL)}}


def test_records_round_trip_through_parse(edge_run):
    corpus, output, utterances = edge_run
    metadata = Metadata.load(output)
    by_id = {u.utt_id: u for u in utterances}
    mels = accepted_mels(utterances, SMALL)
    seen = 0
    for split in metadata.splits:
        for record in read_records(output, split, metadata.params):
            utterance = by_id[record["utt_id"].decode()]
            expected = mel_to_chunks(mels[utterance.utt_id], metadata.feature_mean, metadata.feature_std, SMALL)
            assert record["features"].shape == (4, 31, 128) and np.all(np.isfinite(record["features"]))
            np.testing.assert_allclose(record["features"], expected, atol=2e-3, rtol=1e-3)  # float16 storage
            np.testing.assert_allclose(record["labels"], utterance.labels, rtol=1e-6)
            assert record["has_labels"] and record["split"].decode() == split == utterance.split
            assert record["speaker"].decode() == utterance.speaker and record["index"] == utterance.index
            assert record["num_frames"] == mels[utterance.utt_id].shape[0]
            seen += 1
    assert seen == 9
    assert np.all(read_records(output, "train", SMALL)[0]["features"] <= 3.0)


def test_metadata_validates_and_holds_the_train_label_statistics(edge_run):
    corpus, output, utterances = edge_run
    metadata = Metadata.load(output)
    metadata.validate(required_splits=("train", "dev", "test"), expected_shape=(4, 31, 128))
    assert metadata.params == SMALL
    written_train = ["speech_a", "speech_b", "silence", "stereo_44k"]
    labels = np.array([u.labels for u in utterances if u.utt_id in written_train], np.float64)
    assert labels.shape == (4, 3)
    for i, attribute in enumerate(("arousal", "valence", "dominance")):
        assert metadata.label_stats.mean[attribute] == pytest.approx(labels[:, i].mean(), rel=1e-12)
        assert metadata.label_stats.std[attribute] == pytest.approx(labels[:, i].std(), rel=1e-12)
    assert metadata.source["corpus"] == "csv" and metadata.source["manifest"] == str(corpus.manifest)
    assert metadata.source["created"] and metadata.source["inputs"] == "inputs.jsonl"
    listed = sorted(os.path.basename(p) for p in glob.glob(os.path.join(output, "*-of-*")))
    assert metadata.source["files"] == listed


def test_default_settings_on_the_tiny_msp_corpus_with_an_unlabelled_sample(tiny_msp_corpus, tmp_path):
    output = str(tmp_path / "out")
    pool = str(tiny_msp_corpus / "Unlabeled" / "*")
    run_pipeline(["--corpus", "msp-podcast", "--data-root", str(tiny_msp_corpus), "--output", output,
                  "--unlabeled", pool, "--unlabeled-count", "4", "--seed", "3"])
    metadata = Metadata.load(output)
    metadata.validate(required_splits=("train", "dev", "test", "unlabeled"), expected_shape=(11, 62, 128))
    assert metadata.params == FeatureParams()
    assert {s: (i.count, i.index_size, i.rejected, i.labelled) for s, i in metadata.splits.items()} == {
        "train": (12, 12, 0, True), "dev": (6, 6, 0, True), "test": (6, 6, 0, True), "unlabeled": (4, 4, 0, False)}
    assert read_errors(output) == []
    with (tiny_msp_corpus / "Labels" / "labels_consensus.csv").open() as handle:
        rows = {Path(r["FileName"]).stem: r for r in csv.DictReader(handle)}
    for split in ("train", "dev", "test"):
        written = read_records(output, split, metadata.params)
        assert sorted(r["index"] for r in written) == list(range(len(written)))
        for record in written:
            row = rows[record["utt_id"].decode()]
            assert record["features"].shape == (11, 62, 128) and np.all(np.isfinite(record["features"]))
            assert record["has_labels"] and record["speaker"].decode() == row["SpkrID"]
            np.testing.assert_allclose(record["labels"], [float(row[k]) for k in ("EmoAct", "EmoVal", "EmoDom")],
                                       rtol=1e-6)
    sampled = read_records(output, "unlabeled", metadata.params)
    assert sorted(r["utt_id"].decode() for r in sampled) == [u.utt_id for u in list_unlabeled(pool, 4, seed=3)]
    assert sorted(r["index"] for r in sampled) == [0, 1, 2, 3]
    for record in sampled:
        assert not record["has_labels"] and record["speaker"] == b"unknown"
        assert record["labels"].tolist() == [0.0, 0.0, 0.0] and np.all(np.isfinite(record["features"]))
    train_labels = np.array([[float(r[k]) for k in ("EmoAct", "EmoVal", "EmoDom")]
                             for r in rows.values() if r["Split_Set"] == "Train"])
    assert metadata.label_stats.mean["valence"] == pytest.approx(train_labels[:, 1].mean(), rel=1e-9)
    assert metadata.label_stats.std["dominance"] == pytest.approx(train_labels[:, 2].std(), rel=1e-9)
    assert Path(output, "inputs.jsonl").read_text().count("\n") == 28
