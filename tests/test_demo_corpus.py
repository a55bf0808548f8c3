"""The committed demo corpus meets its spec, follows its documented label formulas, and
its labels are learnable from the pipeline's peak-normalised mel spectrogram."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.audio_decoding import decode_audio
from pipeline.numpy_frontend import waveform_to_mel
from pipeline.params import LABEL_RANGE, FeatureParams
from tests.fixtures.corpora import LABELS_FILE, make_msp_subset
from tools import make_demo_corpus as tool

SPLITS = ("Train", "Development", "Test1")
ATTRIBUTE_COLUMNS = ("EmoAct", "EmoVal", "EmoDom")
MSP_CLASSES = set("NHASUFDCOX")
BUILT_WITH_ESPEAK = "1.51"
"""espeak-ng version the committed audio was synthesised with (see data/demo/README.md)."""


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def labels(demo_root: Path) -> list[dict[str, str]]:
    return read_csv(demo_root / LABELS_FILE)[1]


def mel_statistics(waveform: np.ndarray, params: FeatureParams, bands: int = 16) -> np.ndarray:
    """Summary of the log of the pipeline's mel spectrogram over active frames.

    Per band of mel bins: mean (pitch, tilt), std and mean |delta| (rate), late-minus-
    early mean (contour, crescendo); plus the slope of log energy over time.
    """
    mel = waveform_to_mel(waveform, params)
    log_mel, energy = np.log(mel + 1e-10), np.log(mel.sum(axis=1) + 1e-10)
    active = energy > energy.max() - np.log(1e5)
    pooled = log_mel[active].reshape(int(active.sum()), bands, -1).mean(axis=2)
    half = len(pooled) // 2
    slope = np.polyfit(np.linspace(-1.0, 1.0, len(pooled)), energy[active], 1)[0]
    return np.concatenate([pooled.mean(0), pooled.std(0), np.abs(np.diff(pooled, axis=0)).mean(0),
                           pooled[half:].mean(0) - pooled[:half].mean(0), [slope]])


@pytest.fixture(scope="module")
def clips(demo_root: Path) -> dict[str, tuple[float, np.ndarray]]:
    """Seconds and ``mel_statistics`` of every clip decoded by the pipeline, by relative path."""
    params = FeatureParams()
    paths = sorted((demo_root / "Audios").iterdir()) + sorted((demo_root / "Unlabeled").iterdir())
    result = {}
    for path in paths:
        waveform = decode_audio(path.read_bytes(), params.sample_rate)
        seconds = waveform.size / params.sample_rate
        result[f"{path.parent.name}/{path.name}"] = (seconds, mel_statistics(waveform, params))
    return result


def test_labels_file_has_msp_columns_splits_and_counts(demo_root: Path, labels: list[dict[str, str]]) -> None:
    columns, _ = read_csv(demo_root / LABELS_FILE)
    assert columns == list(tool.LABEL_COLUMNS)
    counts = {s: sum(r["Split_Set"] == s for r in labels) for s in SPLITS}
    assert set(r["Split_Set"] for r in labels) == set(SPLITS)
    assert sum(counts.values()) >= 300
    assert counts["Train"] >= 0.5 * len(labels) and min(counts.values()) >= 40
    assert all(re.fullmatch(r"MSP-PODCAST_\d{4}_\d{4}\.ogg", r["FileName"]) for r in labels)
    assert len({r["FileName"] for r in labels}) == len(labels)


def test_splits_are_speaker_disjoint_with_enough_voices(labels: list[dict[str, str]]) -> None:
    speakers = {s: {r["SpkrID"] for r in labels if r["Split_Set"] == s} for s in SPLITS}
    assert not speakers["Train"] & speakers["Development"]
    assert not speakers["Train"] & speakers["Test1"]
    assert not speakers["Development"] & speakers["Test1"]
    assert len(set().union(*speakers.values())) >= 12
    assert all(len(v) >= 3 for v in speakers.values())
    genders = {r["SpkrID"]: r["Gender"] for r in labels}
    assert set(genders.values()) == {"Female", "Male"}
    assert all(len({r["Gender"] for r in labels if r["SpkrID"] == spk}) == 1 for spk in genders)


def test_labels_are_msp_like(labels: list[dict[str, str]]) -> None:
    low, high = LABEL_RANGE
    for column in ATTRIBUTE_COLUMNS:
        values = np.array([float(r[column]) for r in labels])
        assert values.min() >= low and values.max() <= high
        np.testing.assert_allclose(values * 5, np.round(values * 5), atol=1e-9)
        assert 3.6 < values.mean() < 4.4 and 0.7 < values.std() < 1.3, column
    assert {r["EmoClass"] for r in labels} <= MSP_CLASSES
    assert len({r["EmoClass"] for r in labels}) >= 4


def test_labels_follow_documented_formulas(demo_root: Path, labels: list[dict[str, str]]) -> None:
    """Redraws every utterance's cues from the default seed; no espeak-ng needed."""
    plan = tool.utterances()
    seeds = dict(zip((u.file_name for u in plan), tool.utterance_seeds(tool.DEFAULT_SEED, len(plan))))
    sidecar = {r["FileName"]: r for r in read_csv(demo_root / "prosody_cues.csv")[1]}
    voices = {v.speaker_id: v for v in tool.voices()}
    assert len(sidecar) == len(plan)
    for row in labels:
        cues, noise = tool.draw_cues(seeds[row["FileName"]][0])
        expected = tool.attribute_labels(cues, noise)
        assert {c: float(row[c]) for c in ATTRIBUTE_COLUMNS} == expected, row["FileName"]
        assert row["EmoClass"] == tool.emotion_class(*(expected[c] for c in ATTRIBUTE_COLUMNS))
        assert all(abs(float(sidecar[row["FileName"]][f"cue_{c}"]) - cues[c]) < 1e-4 for c in tool.CUES)
        voice = voices[int(row["SpkrID"])]
        assert (row["Gender"], row["Split_Set"]) == (voice.gender, voice.split)
        assert sidecar[row["FileName"]]["Voice"] == voice.espeak_name


def test_files_match_labels_and_fit_the_size_budget(demo_root: Path, labels: list[dict[str, str]]) -> None:
    audios = {p.name for p in (demo_root / "Audios").iterdir()}
    unlabeled = {p.name for p in (demo_root / "Unlabeled").iterdir()}
    assert audios == {r["FileName"] for r in labels}
    assert len(unlabeled) >= 100 and not unlabeled & audios
    assert all(name.endswith(".ogg") for name in unlabeled)
    size = sum(p.stat().st_size for p in demo_root.rglob("*.ogg"))
    assert size <= 20e6, f"{size / 1e6:.1f} MB of audio"


def test_every_clip_decodes_at_16k_within_msp_durations(
        demo_root: Path, clips: dict[str, tuple[float, np.ndarray]]) -> None:
    assert len(clips) >= 400
    for name, (duration, _) in clips.items():
        info = soundfile.info(str(demo_root / name))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "VORBIS", 16000, 1), name
        assert 2.75 <= duration <= 11.0, name
    seconds = np.array([duration for duration, _ in clips.values()])
    assert seconds.min() < 3.5 and seconds.max() > 8.0 and 4.0 < np.median(seconds) < 6.5


def ccc(prediction: np.ndarray, truth: np.ndarray) -> float:
    covariance = np.mean((prediction - prediction.mean()) * (truth - truth.mean()))
    return float(2 * covariance / (prediction.var() + truth.var() + (prediction.mean() - truth.mean()) ** 2))


@pytest.mark.parametrize("column, minimum", [("EmoAct", 0.55), ("EmoVal", 0.15), ("EmoDom", 0.5)])
def test_ridge_on_mel_statistics_learns_each_attribute(
        column: str, minimum: float, labels: list[dict[str, str]], clips: dict[str, tuple[float, np.ndarray]]) -> None:
    """Train -> Test1 CCC of a ridge regression is clearly positive; on shuffled labels it is not.

    Measured on the committed corpus: CCC .71 / .24 / .72 (arousal / valence / dominance;
    on Development .82 / .64 / .73); the mean over 20 label shuffles .00 / .02 / .05
    (one shuffle alone spreads by about .14).
    """
    split = np.array([r["Split_Set"] for r in labels])
    features = np.array([clips[f"Audios/{r['FileName']}"][1] for r in labels])
    target = np.array([float(r[column]) for r in labels])
    train, test = split == "Train", split == "Test1"

    def fit_ccc(y_train: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), Ridge(alpha=30.0)).fit(features[train], y_train)
        return ccc(model.predict(features[test]), target[test])

    assert fit_ccc(target[train]) > minimum
    shuffled = [fit_ccc(np.random.default_rng(k).permutation(target[train])) for k in range(20)]
    assert abs(np.mean(shuffled)) < 0.15


def test_msp_subset_is_a_speaker_respecting_copy(tmp_path: Path, demo_root: Path) -> None:
    root = make_msp_subset(tmp_path / "sub", 7, 4, 5, 3, seed=3, source=demo_root)
    columns, rows = read_csv(root / LABELS_FILE)
    assert columns == list(tool.LABEL_COLUMNS)
    assert [sum(r["Split_Set"] == s for r in rows) for s in SPLITS] == [7, 4, 5]
    assert len({r["SpkrID"] for r in rows if r["Split_Set"] == "Train"}) == 7
    assert {p.name for p in (root / "Audios").iterdir()} == {r["FileName"] for r in rows}
    assert len(list((root / "Unlabeled").iterdir())) == 3
    for row in rows:
        assert (root / "Audios" / row["FileName"]).read_bytes() == (demo_root / "Audios" / row["FileName"]).read_bytes()
    with pytest.raises(ValueError, match="only"):
        make_msp_subset(tmp_path / "too_many", 1, 1, 1000, 0, source=demo_root)


def test_tiny_corpora_fixtures(tiny_msp_corpus: Path, tiny_csv_manifest: Path) -> None:
    _, rows = read_csv(tiny_msp_corpus / LABELS_FILE)
    assert [sum(r["Split_Set"] == s for r in rows) for s in SPLITS] == [12, 6, 6]
    assert max(soundfile.info(str(p)).duration for p in (tiny_msp_corpus / "Audios").iterdir()) < 6.0
    columns, entries = read_csv(tiny_csv_manifest)
    assert columns == ["path", "split", "arousal", "valence", "dominance", "speaker"]
    assert [sum(e["split"] == s for e in entries) for s in ("train", "dev", "test", "unlabeled")] == [12, 6, 6, 6]
    for entry in entries:
        assert (tiny_csv_manifest.parent / entry["path"]).is_file()
        labelled = entry["split"] != "unlabeled"
        assert all(bool(entry[k]) == labelled for k in ("arousal", "valence", "dominance", "speaker"))
    by_name = {r["FileName"]: r for r in rows}
    for entry in (e for e in entries if e["split"] != "unlabeled"):
        row = by_name[Path(entry["path"]).name]
        assert [entry[k] for k in ("arousal", "valence", "dominance")] == [row[c] for c in ATTRIBUTE_COLUMNS]


def espeak_version() -> str | None:
    if shutil.which("espeak-ng") is None:
        return None
    match = re.search(r"(\d+\.\d+)", subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout)
    return match.group(1) if match else None


@pytest.mark.skipif(espeak_version() != BUILT_WITH_ESPEAK, reason=f"needs espeak-ng {BUILT_WITH_ESPEAK}")
def test_rebuild_reproduces_committed_files_byte_for_byte(demo_root: Path) -> None:
    plan = tool.utterances()
    seeds = tool.utterance_seeds(tool.DEFAULT_SEED, len(plan))
    for index in (0, len(plan) - 1):
        audio, _ = tool.make_utterance(plan[index], *seeds[index], tool.pitch_curve(plan[index].voice))
        committed = demo_root / tool.audio_folder(plan[index]) / plan[index].file_name
        assert tool.ogg_vorbis(audio, serial=index + 1) == committed.read_bytes()
