"""A row without labels in a labelled split never reaches a loss or a score."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipeline.corpus import MISSING_LABELS, Utterance, mark_missing_labels
from pipeline.metadata import Metadata
from pipeline.summary import read_errors
from pipeline.utterance_mel import MISSING_LABELS as MISSING_LABELS_REASON, Rejected, check_labels
from tests.fixtures.corpora import LABELS_FILE, make_msp_subset
from tests.fixtures.jobs import SMALL_GEOMETRY


def _utterance(split: str, labels) -> Utterance:
    return Utterance(utt_id=f"{split}-{labels}", path=f"/{split}.wav", split=split, speaker="s", labels=labels)


def test_only_rows_of_labelled_splits_are_marked_and_rejected() -> None:
    marked = mark_missing_labels([_utterance("train", (4.0, 4.0, 4.0)), _utterance("train", None),
                                  _utterance("unlabeled", None), _utterance("test3", None)])
    assert [u.labels for u in marked][1:] == [MISSING_LABELS, None, None]
    with pytest.raises(Rejected, match=MISSING_LABELS_REASON):
        check_labels(marked[1])
    check_labels(marked[2])


def test_the_pipeline_sends_an_unlabelled_train_row_to_the_dead_letters(tmp_path: Path, demo_root: Path) -> None:
    from pipeline.__main__ import main

    corpus = make_msp_subset(tmp_path / "corpus", 4, 2, 2, 0, seed=3, source=demo_root)
    with open(corpus / LABELS_FILE, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    blanked = next(r for r in rows if r["Split_Set"] == "Train")
    blanked.update(EmoAct="", EmoVal="", EmoDom="")
    with open(corpus / LABELS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "out"
    assert main(["--corpus", "msp-podcast", "--data-root", str(corpus), "--output", str(output),
                 *SMALL_GEOMETRY]) == 0
    errors = read_errors(str(output))
    assert [(Path(e["path"]).name, e["split"]) for e in errors] == [(blanked["FileName"], "train")]
    assert errors[0]["reason"].startswith(MISSING_LABELS_REASON)
    metadata = Metadata.load(str(output))
    assert metadata.splits["train"].count == 3 and metadata.splits["train"].labelled


def test_the_trainer_refuses_a_train_split_holding_unlabelled_records(tiny_features: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import trainer

    data = tmp_path / "data"
    shutil.copytree(tiny_features, data)
    values = json.loads((data / "metadata.json").read_text())
    values["splits"]["train"]["labelled"] = False
    (data / "metadata.json").write_text(json.dumps(values))
    status = trainer.main(["--data-dir", str(data), "--job-dir", str(tmp_path / "job"), "--model", "vanilla",
                           "--quiet"])
    assert status == 2
    assert "'train' holds records without labels" in capsys.readouterr().err
    assert not (tmp_path / "job" / "checkpoints").exists()
