"""Manifest readers, unlabelled sampling, record indices and the command-line options."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.corpus import (
    CorpusError,
    Utterance,
    assign_indices,
    labelled_splits,
    list_unlabeled,
    read_corpus,
    read_csv_manifest,
    read_msp_podcast,
    split_sizes,
)
from pipeline.options import OptionsError, PreprocessOptions
from pipeline.params import FeatureParams
from tests.fixtures.edge_audio import msp_rows, speech_like, write_audio, write_manifest, write_msp_layout


def test_msp_podcast_release_is_read_with_split_mapping(synthetic_msp):
    utterances = read_msp_podcast(str(synthetic_msp))
    assert [u.split for u in utterances] == ["train"] * 4 + ["dev"] * 2 + ["test"]
    first = utterances[0]
    assert first.utt_id == "MSP-PODCAST_1000_0000"
    assert first.path == str(synthetic_msp / "Audios" / "MSP-PODCAST_1000_0000.wav")
    assert first.speaker == "10"
    assert first.labels == (1.5, 2.0, 1.0)
    assert all(Path(u.path).is_file() for u in utterances)


def test_older_label_file_spelling_and_explicit_labels_path(tmp_path):
    root = write_msp_layout(tmp_path / "old", msp_rows(["Train", "Test"], [0.5, 0.5]),
                            label_file="labels_concensus.csv")
    assert [u.split for u in read_msp_podcast(str(root))] == ["train", "test"]
    elsewhere = tmp_path / "my_labels.csv"
    elsewhere.write_text("FileName,EmoAct,EmoVal,EmoDom,Split_Set\nMSP-PODCAST_1000_0000.wav,2,3,4,Test2\n")
    corpus = read_corpus("msp-podcast", data_root=str(root), labels=str(elsewhere))
    assert [(u.split, u.labels, u.speaker) for u in corpus.utterances] == [("test2", (2.0, 3.0, 4.0), "unknown")]
    assert corpus.source == {"corpus": "msp-podcast", "data_root": str(root), "labels": str(elsewhere)}


def test_missing_label_file_or_column_names_the_cause(tmp_path):
    with pytest.raises(CorpusError, match="labels_consensus.csv"):
        read_msp_podcast(str(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("FileName,EmoAct,Split_Set\nx.wav,3,Train\n")
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['EmoVal', 'EmoDom'\]"):
        read_msp_podcast(str(tmp_path), str(bad))


def test_csv_manifest_resolves_relative_paths_against_its_folder(tmp_path, monkeypatch):
    audio = write_audio(tmp_path / "data" / "clips" / "one.wav", speech_like(0.5))
    manifest = write_manifest(tmp_path / "data" / "list.csv", [
        {"path": "clips/one.wav", "split": "Train", "arousal": "3", "valence": "4", "dominance": "5",
         "speaker": "s1"},
        {"path": str(audio), "split": "dev", "arousal": "", "valence": "", "dominance": ""},
        {"path": "gs://bucket/x/two.flac", "split": "Test2", "arousal": "2", "valence": "", "dominance": "abc"},
    ])
    monkeypatch.chdir(tmp_path)
    utterances = read_csv_manifest(os.path.join("data", "list.csv"))
    assert [u.path for u in utterances] == [str(audio), str(audio), "gs://bucket/x/two.flac"]
    assert [u.utt_id for u in utterances] == ["one", "one", "two"]
    assert [u.split for u in utterances] == ["train", "dev", "test2"]
    assert [u.speaker for u in utterances] == ["s1", "unknown", "unknown"]
    assert utterances[0].labels == (3.0, 4.0, 5.0) and utterances[1].labels is None
    assert utterances[2].labels[0] == 2.0 and all(math.isnan(v) for v in utterances[2].labels[1:])
    assert labelled_splits(assign_indices(utterances)) == {"dev": False, "test2": True, "train": True}
    assert manifest.is_file()


@pytest.mark.parametrize("split", ["", "my split", "errors"])
def test_unusable_split_names_are_refused(tmp_path, split):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": "a.wav", "split": split, "arousal": "1", "valence": "1", "dominance": "1"}])
    with pytest.raises(CorpusError, match="line 2: split"):
        read_csv_manifest(str(manifest))


def _pool(folder: Path, n: int) -> str:
    for i in range(n):
        (folder / f"u{i:03d}.wav").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"u{i:03d}.wav").write_bytes(b"x")
    return str(folder / "*.wav")


def test_unlabeled_sample_is_seeded_sorted_and_without_replacement(tmp_path):
    pattern = _pool(tmp_path / "pool", 30)
    everything = list_unlabeled(pattern)
    assert [u.utt_id for u in everything] == [f"u{i:03d}" for i in range(30)]
    assert {(u.split, u.speaker, u.labels) for u in everything} == {("unlabeled", "unknown", None)}
    sample = list_unlabeled(pattern, count=10, seed=7)
    ids = [u.utt_id for u in sample]
    assert len(set(ids)) == 10 and ids == sorted(ids)
    expected = sorted(f"u{i:03d}" for i in np.random.default_rng(7).choice(30, size=10, replace=False))
    assert ids == expected
    assert [u.utt_id for u in list_unlabeled(pattern, count=10, seed=7)] == ids
    assert [u.utt_id for u in list_unlabeled(pattern, count=10, seed=8)] != ids
    with pytest.raises(CorpusError, match="matches only 30"):
        list_unlabeled(pattern, count=31)
    with pytest.raises(CorpusError, match="matches no files"):
        list_unlabeled(str(tmp_path / "nothing" / "*.wav"))


def test_indices_are_per_split_positions_by_id_whatever_the_input_order():
    def utt(utt_id, split):
        return Utterance(utt_id, f"/a/{utt_id}.wav", split, "s", None)

    given = [utt("c", "train"), utt("a", "dev"), utt("b", "train"), utt("a", "train"), utt("z", "dev")]
    indexed = {(u.split, u.utt_id): u.index for u in assign_indices(given)}
    assert indexed == {("train", "a"): 0, ("train", "b"): 1, ("train", "c"): 2, ("dev", "a"): 0, ("dev", "z"): 1}
    assert {(u.split, u.utt_id): u.index for u in assign_indices(reversed(given))} == indexed
    assert split_sizes(given) == {"dev": 2, "train": 3}


def test_read_corpus_adds_the_unlabeled_split_and_records_its_source(synthetic_msp, tmp_path):
    pattern = _pool(tmp_path / "pool", 5)
    corpus = read_corpus("msp-podcast", data_root=str(synthetic_msp), unlabeled=pattern,
                         unlabeled_count=3, seed=1)
    assert split_sizes(corpus.utterances) == {"dev": 2, "test": 1, "train": 4, "unlabeled": 3}
    assert corpus.source["unlabeled"] == pattern and corpus.source["unlabeled_count"] == 3
    assert corpus.source["labels"].endswith("labels_consensus.csv") and corpus.source["seed"] == 1


def test_feature_flags_build_the_one_feature_params():
    assert PreprocessOptions([]).feature_params() == FeatureParams()
    options = PreprocessOptions(["--max-seconds", "6", "--chunk-seconds", "0.5", "--log-mel",
                                 "--storage-dtype", "float32", "--chunk-shift", "float",
                                 "--short-rule", "pad", "--pad-mode", "constant"])
    assert options.feature_params() == FeatureParams(
        max_seconds=6.0, chunk_seconds=0.5, log_mel=True, storage_dtype="float32", chunk_shift="float",
        short_rule="pad", pad_mode="constant")


def test_labels_path_flag_coexists_with_beam_job_labels():
    options = PreprocessOptions(["--corpus", "msp-podcast", "--data-root", "/d", "--labels", "/d/l.csv",
                                 "--labels", "team=emotion", "--output", "/o"])
    assert options.labels_file == "/d/l.csv"
    assert options.view_as(GoogleCloudOptions).labels == ["team=emotion"]
    assert PreprocessOptions(["--labels=/x/y.csv"]).labels_file == "/x/y.csv"


def test_options_survive_beams_dictionary_round_trip_to_workers():
    options = PreprocessOptions(["--corpus", "csv", "--manifest", "m.csv", "--output", "o", "--log-mel",
                                 "--unlabeled-count", "5", "--max-seconds", "3"])
    back = PipelineOptions.from_dictionary(options.get_all_options(drop_default=True)).view_as(PreprocessOptions)
    assert (back.manifest, back.output, back.log_mel, back.unlabeled_count) == ("m.csv", "o", True, 5)
    assert back.feature_params() == options.feature_params()


@pytest.mark.parametrize("flags, message", [
    ([], "--corpus is required"),
    (["--corpus", "csv", "--manifest", "m.csv"], "--output is required"),
    (["--corpus", "msp-podcast", "--output", "o"], "needs --data-root"),
    (["--corpus", "csv", "--output", "o"], "needs --manifest"),
    (["--corpus", "csv", "--manifest", "m.csv", "--data-root", "d", "--output", "o"], "belong to --corpus msp"),
    (["--corpus", "csv", "--manifest", "m", "--output", "o", "--unlabeled-count", "3"], "needs --unlabeled"),
    (["--corpus", "csv", "--manifest", "m", "--output", "o", "--chunk-seconds", "12"], "feature flags"),
])
def test_option_errors_name_the_flag(flags, message):
    with pytest.raises(OptionsError, match=message):
        PreprocessOptions(flags).check()
