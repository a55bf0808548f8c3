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
from apache_beam.testing.util import assert_that, equal_to

from pipeline import records, spill
from pipeline.corpus import Utterance, read_corpus
from pipeline.metadata import Metadata
from pipeline.numpy_frontend import mel_to_chunks
from pipeline.options import PreprocessOptions
from pipeline.params import FeatureParams
from pipeline.run import build_pipeline
from pipeline.sinks import GZIP_LEVELS, WriteGzipTFRecords
from pipeline.summary import read_errors, reason_kind
from pipeline.transforms import DecodeUtterances, FeatureStats, is_train
from pipeline.utterance_mel import Rejected, utterance_mel
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
        decoded = pipeline | beam.Create(utterances) | beam.Filter(is_train) | DecodeUtterances(SMALL)
        stats = decoded.mels | FeatureStats(SMALL)
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
            # Bit-identical to computing the features here, whichever pass decoded the audio
            # (train mels go through the spill files): only the float16 storage rounds.
            np.testing.assert_array_equal(record["features"], expected.astype(np.float16).astype(np.float32))
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
    assert metadata.source["gzip_level"] == 2


def test_train_mels_are_spilled_once_and_the_spill_files_removed(edge_run):
    corpus, output, utterances = edge_run
    metadata = Metadata.load(output)
    assert metadata.source["spill_files_removed"] >= 1
    assert not os.path.exists(os.path.join(output, spill.FOLDER))
    assert sorted(os.listdir(output)) == sorted(
        metadata.source["files"] + ["inputs.jsonl", "metadata.json", "probes.npz"])


def test_spill_record_round_trip_is_bit_identical():
    utterance = Utterance(utt_id="u_1", path="/a/u_1.wav", split="train", speaker="spk", labels=(1.5, 2.0, float("nan")),
                          index=7)
    mel = np.random.default_rng(0).gamma(0.5, 1e-3, (37, 128)).astype(np.float32)
    back, mel_back = spill.unpack(spill.pack((utterance, mel)))
    assert back.utt_id == "u_1" and back.index == 7 and back.labels[:2] == (1.5, 2.0) and np.isnan(back.labels[2])
    assert mel_back.dtype == np.float32 and mel_back.flags.writeable
    np.testing.assert_array_equal(mel_back, mel)


def test_gzip_sink_writes_plain_gzip_tfrecords_at_every_level(tmp_path):
    rng = np.random.default_rng(0)
    block = np.clip(rng.standard_normal((40, 128)), -3, 3).astype(np.float16)
    payloads = [block[(np.arange(8)[:, None] * 3 + np.arange(12) + i) % 40].tobytes() for i in range(20)]
    sizes = {}
    for level in GZIP_LEVELS:
        with BeamTestPipeline() as pipeline:
            files = (pipeline | beam.Create(payloads)
                     | WriteGzipTFRecords(str(tmp_path / f"l{level}"), ".tfrecord.gz", num_shards=2, level=level))
            assert_that(files | beam.Map(os.path.basename), equal_to(
                [f"l{level}-00000-of-00002.tfrecord.gz", f"l{level}-00001-of-00002.tfrecord.gz"]))
        written = sorted(glob.glob(str(tmp_path / f"l{level}-*")))
        read = [r.numpy() for r in tf.data.TFRecordDataset(written, compression_type="GZIP")]
        assert sorted(read) == sorted(payloads)
        for path in written:
            header = Path(path).read_bytes()[:8]
            assert header[:3] == b"\x1f\x8b\x08" and header[4:8] == b"\0\0\0\0"  # gzip, deflate, mtime 0
        sizes[level] = sum(os.path.getsize(path) for path in written)
    assert sizes[3] < sizes[0]
    with pytest.raises(ValueError, match="0..3"):
        WriteGzipTFRecords(str(tmp_path / "x"), ".gz", level=9)
