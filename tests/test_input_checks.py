"""Careless input is refused or read right, never silently wrong (issue 17): label files
in other encodings or with ``=`` in their path, leaks and duplicates, paths leaving the
corpus, a deleted shard, evaluation on other data, and the demo's output folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from model.training.datasets import split_files
from pipeline.corpus import CorpusError, read_corpus, read_csv_manifest, read_msp_podcast
from pipeline.options import PreprocessOptions
from tests.fixtures.edge_audio import msp_rows, write_manifest, write_msp_layout

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("arousal", "valence", "dominance")


def test_a_labels_path_with_an_equals_sign_is_the_label_file_and_job_labels_stay_beams() -> None:
    flags = ["--corpus", "msp-podcast", "--data-root", "/data/msp", "--output", "out"]
    options = PreprocessOptions([*flags, "--labels", "/data/run=2/labels.csv"])
    assert options.labels_file == "/data/run=2/labels.csv"
    options = PreprocessOptions([*flags, "--labels=/data/run=2/labels.csv"])
    assert options.labels_file == "/data/run=2/labels.csv"
    assert PreprocessOptions([*flags, "--labels", "team=audio"]).labels_file is None


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_label_files_in_utf16_or_latin1_are_read(tmp_path: Path, encoding: str) -> None:
    rows = [{**row, "Gender": "Fémale"} for row in msp_rows(["Train", "Validation"], [0.3, 0.3])]
    root = write_msp_layout(tmp_path / "msp", rows)
    labels = root / "Labels" / "labels_consensus.csv"
    text = labels.read_text(encoding="utf-8").replace("Female", "Fémale")
    labels.write_bytes(text.encode(encoding))
    utterances = read_msp_podcast(str(root))
    assert [u.split for u in utterances] == ["train", "dev"]
    assert utterances[0].labels == tuple(float(rows[0][c]) for c in ("EmoAct", "EmoVal", "EmoDom"))


def _manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> str:
    return str(write_manifest(tmp_path / "manifest.csv", [
        {"path": path, "split": split, **dict.fromkeys(LABELS, "4")} for path, split in rows]))


def test_the_same_audio_in_two_splits_or_twice_in_one_is_refused(tmp_path: Path) -> None:
    leak = _manifest(tmp_path, [("a.wav", "train"), ("b.wav", "train"), ("./a.wav", "test")])
    with pytest.raises(CorpusError, match="in splits 'train' and 'test' \\(a leak"):
        read_corpus("csv", manifest=leak)
    twice = _manifest(tmp_path, [("a.wav", "train"), ("b.wav", "train"), ("a.wav", "train")])
    with pytest.raises(CorpusError, match="twice in split 'train'"):
        read_corpus("csv", manifest=twice)
    same_id = _manifest(tmp_path, [("x/a.wav", "train"), ("y/a.flac", "dev")])
    with pytest.raises(CorpusError, match="utterance id 'a'"):
        read_corpus("csv", manifest=same_id)


def test_manifest_paths_leading_outside_the_corpus_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="leads outside the manifest's folder"):
        read_csv_manifest(_manifest(tmp_path, [("audio/../../secret.wav", "train")]))
    assert read_csv_manifest(_manifest(tmp_path, [("/abs/ok.wav", "train")]))[0].path == "/abs/ok.wav"
    root = write_msp_layout(tmp_path / "msp", msp_rows(["Train"], [0.3]))
    labels = root / "Labels" / "labels_consensus.csv"
    labels.write_text(labels.read_text().replace("MSP-PODCAST_1000_0000.wav", "../../secret.wav"))
    with pytest.raises(CorpusError, match="is not a file name"):
        read_msp_podcast(str(root))


def test_a_split_missing_one_of_its_shards_is_an_error(tmp_path: Path) -> None:
    for name in ("dev-00000-of-00003.tfrecord.gz", "dev-00002-of-00003.tfrecord.gz",
                 "test-00000-of-00001.tfrecord.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="split 'dev' .* is incomplete"):
        split_files(str(tmp_path), "dev")
    assert len(split_files(str(tmp_path), "test")) == 1


def test_evaluating_on_data_the_job_was_not_trained_on_is_refused(tmp_path: Path, trained_job: Path,
                                                                  tiny_features: Path, capsys) -> None:
    from model.evaluation.evaluate import main

    other = tmp_path / "other"
    shutil.copytree(tiny_features, other)
    metadata = json.loads((other / "metadata.json").read_text())
    metadata["feature_params"]["log_mel"] = True  # as log-mel records would say
    (other / "metadata.json").write_text(json.dumps(metadata))
    assert main(["--data-dir", str(other), "--job-dir", str(trained_job), "--output", str(tmp_path / "eval")]) == 2
    assert "is not the data" in capsys.readouterr().err


def _run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "tools" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_only_ever_deletes_a_folder_it_made(tmp_path: Path) -> None:
    run_demo = _run_demo()
    precious = tmp_path / "repository"
    precious.mkdir()
    (precious / "README.md").write_text("keep me")
    with pytest.raises(SystemExit, match="was not made by the demo"):
        run_demo.prepare_output(precious)
    assert (precious / "README.md").read_text() == "keep me"
    made = tmp_path / "runs" / "demo"
    run_demo.prepare_output(made)
    (made / "old-result.txt").write_text("stale")
    run_demo.prepare_output(made)
    assert sorted(p.name for p in made.iterdir()) == [run_demo.OUTPUT_MARKER]
