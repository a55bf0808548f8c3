"""``python -m model.predict`` over real audio files: the CSV row by row, batching, exit codes."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.serving.export import EmotionServing
from model.training.job_folder import load_job
from model.serving.predict import COLUMNS, EXIT_MODEL, EXIT_OK, EXIT_USAGE, HANDFUL, Progress, main
from model.nets.builder import build_net
from pipeline.audio_decoding import decode_audio
from pipeline.params import ATTRIBUTES
from tests.fixtures.edge_audio import write_edge_files
from tests.test_export import export_amplified
from tests.fixtures.streams import Terminal

ROOT = Path(__file__).resolve().parent.parent
PREDICTION_TOLERANCE = 1e-4
ERRORS = {"corrupt.wav": "unreadable audio: ", "empty.wav": "empty file (0 bytes)",
          "truncated.wav": "truncated audio: ", "notes.txt": "unreadable audio: "}


@pytest.fixture(scope="module")
def model(trained_job: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained job's model with predictions that vary by about 0.1 across utterances."""
    return export_amplified(trained_job, tmp_path_factory.mktemp("predict") / "model")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_msp_corpus: Path) -> Path:
    """Demo clips, the edge-case audio (corrupt, empty, truncated, silent, stereo 44.1 kHz, 13 s,
    0.1 s, FLAC, Vorbis), a text file, a nested folder and a hidden file."""
    root = tmp_path_factory.mktemp("predict_inputs") / "inputs"
    write_edge_files(root / "edge")
    for clip in sorted((tiny_msp_corpus / "Audios").iterdir())[:3]:
        shutil.copy(clip, root / clip.name)
    (root / "notes.txt").write_text("not audio\n")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def read_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames) == COLUMNS
    return list(reader)


def expected_predictions(serve_waveform, path: Path,
                         window: tuple[float, float] | None = None) -> tuple[float, dict[str, float]]:
    """Duration and ``serve_waveform``'s predictions on the pipeline's decoding of ``path`` (or a window of it)."""
    waveform = decode_audio(path.read_bytes(), 16000)
    part = waveform if window is None else waveform[int(window[0] * 16000):int(window[1] * 16000)]
    outputs = serve_waveform(waveform=tf.constant(part))
    return waveform.size / 16000, {a: float(outputs[a].numpy()[0]) for a in ATTRIBUTES}


def test_predicts_a_folder_row_by_row(model: Path, folder: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "model.predict", "--model", str(model), str(folder)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    rows = read_csv(result.stdout)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    # the 13 s file is longer than the 11 s default window: two windows, the second ending at its end
    windows = [(path, (0.0, 11.0) if path.name == "long_13s.flac" else None) for path in files]
    windows.insert(next(k for k, (p, _) in enumerate(windows) if p.name == "long_13s.flac") + 1,
                   (folder / "edge" / "long_13s.flac", (2.0, 13.0)))
    assert [row["path"] for row in rows] == [str(p) for p, _ in windows]
    assert len(rows) == 20
    serve_waveform = tf.saved_model.load(str(model)).signatures["serve_waveform"]
    for row, (path, window) in zip(rows, windows):
        if path.name in ERRORS:
            assert row["error"].startswith(ERRORS[path.name]), row
            assert row["duration"] == row["start"] == row["end"] == "" and all(row[a] == "" for a in ATTRIBUTES)
            continue
        assert row["error"] == "", row
        duration, predictions = expected_predictions(serve_waveform, path, window)
        assert float(row["duration"]) == pytest.approx(duration, abs=5e-4)
        start, end = window or (0.0, duration)
        assert (float(row["start"]), float(row["end"])) == pytest.approx((start, end), abs=5e-4)
        for attribute in ATTRIBUTES:
            assert float(row[attribute]) == pytest.approx(predictions[attribute], abs=PREDICTION_TOLERANCE), path
    by_name = {Path(row["path"]).name: row for row in rows}
    assert float(by_name["stereo_44k.wav"]["duration"]) == pytest.approx(1.0, abs=1e-3)
    assert float(by_name["silence.wav"]["duration"]) == pytest.approx(1.0, abs=1e-3)
    spread = np.ptp([float(row["arousal"]) for row in rows if not row["error"]])
    assert spread > 100 * PREDICTION_TOLERANCE  # so the 1e-4 agreement above is meaningful
    assert "4 of 19 files could not be read" in result.stderr
    assert "19/19 files, 4 errors" in result.stderr  # progress: more than a handful of files


def test_batch_size_does_not_change_the_predictions(model: Path, folder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    outputs = {}
    for batch_size in (1, 7):
        path = tmp_path / f"batch{batch_size}.csv"
        assert main(["--model", str(model), str(folder), "--output", str(path),
                     "--batch-size", str(batch_size)]) == EXIT_OK
        outputs[batch_size] = read_csv(path.read_text())
    assert capsys.readouterr().out == ""  # --output: nothing on stdout
    assert len(outputs[1]) == len(outputs[7]) == 20  # 19 files, the 13 s one in two windows
    for one, seven in zip(outputs[1], outputs[7]):
        assert (one["path"], one["duration"], one["error"]) == (seven["path"], seven["duration"], seven["error"])
        for attribute in ATTRIBUTES:
            if one[attribute] or seven[attribute]:
                assert float(one[attribute]) == pytest.approx(float(seven[attribute]), abs=2e-6)


def test_files_and_folders_mix_and_attributes_the_model_lacks_stay_empty(
        trained_job: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = load_job(str(trained_job))
    config = dataclasses.replace(job.config, attributes=("valence",))
    net = build_net(config, job.metadata.params)
    net(np.zeros((1, *job.metadata.params.feature_shape), np.float32))
    module = EmotionServing(net, job.metadata, config.attributes)
    tf.saved_model.save(module, str(tmp_path / "valence"), signatures={
        "serving_default": module.serve_features, "serve_waveform": module.serve_waveform})
    clip = next(folder.glob("*.ogg"))
    assert main(["--model", str(tmp_path / "valence"), str(clip), str(folder / "edge" / "silence.wav")]) == EXIT_OK
    captured = capsys.readouterr()
    rows = read_csv(captured.out)
    assert [row["path"] for row in rows] == [str(clip), str(folder / "edge" / "silence.wav")]
    for row in rows:
        assert row["valence"] and row["arousal"] == row["dominance"] == row["error"] == ""
    assert captured.err == ""  # two files, not a terminal: no progress display


def test_a_model_with_only_the_two_signatures_predicts_the_same(model: Path, folder: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """No ``waveform_features`` and no ``metadata_json``: features come from the
    serve_waveform_features signature, 16 kHz."""
    loaded = tf.saved_model.load(str(model))
    wrapper = tf.Module()
    wrapper.inner = loaded
    tf.saved_model.save(wrapper, str(tmp_path / "bare"), signatures={
        name: loaded.signatures[name] for name in ("serving_default", "serve_waveform", "serve_waveform_features")})
    bare = tf.saved_model.load(str(tmp_path / "bare"))
    assert not hasattr(bare, "waveform_features") and not hasattr(bare, "metadata_json")
    clips = [str(p) for p in sorted(folder.glob("*.ogg"))] + [str(folder / "edge" / "stereo_44k.wav")]
    for path in (model, tmp_path / "bare"):
        assert main(["--model", str(path), *clips, "--batch-size", "2"]) == EXIT_OK
    first, second = capsys.readouterr().out.split("path,duration", 2)[1:]
    for a, b in zip(read_csv("path,duration" + first), read_csv("path,duration" + second)):
        assert a["duration"] == b["duration"] and not a["error"] and not b["error"]
        for attribute in ATTRIBUTES:
            assert float(a[attribute]) == pytest.approx(float(b[attribute]), abs=PREDICTION_TOLERANCE)


@pytest.mark.parametrize("arguments, message", [
    ([], "no PATH given"),
    (["missing.wav"], "no such file or folder: missing.wav"),
    (["{folder}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["{folder}", "--output", "no/such/folder/preds.csv"], "its folder does not exist"),
    (["{empty}"], "holds no files"),
])
def test_unusable_arguments_exit_2(arguments: list[str], message: str, model: Path, folder: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    filled = [a.format(folder=folder, empty=tmp_path / "empty") for a in arguments]
    assert main(["--model", str(model), *filled]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_an_unloadable_model_exits_3(model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "saved_model.pb").write_bytes(b"garbage")
    partial = tmp_path / "partial"
    loaded = tf.saved_model.load(str(model))
    tf.saved_model.save(loaded, str(partial), signatures={"serving_default": loaded.signatures["serving_default"]})
    clip = str(next(folder.glob("*.ogg")))
    for path, message in [(tmp_path / "nowhere", "cannot load the model"),
                          (tmp_path / "not_a_model", "cannot load the model"),
                          (partial, "missing signature(s) serve_waveform")]:
        assert main(["--model", str(path), clip]) == EXIT_MODEL
        assert message in capsys.readouterr().err, path


def test_progress_redraws_on_a_terminal_and_stays_quiet_for_a_handful_of_files() -> None:
    terminal = Terminal()
    progress = Progress(3, terminal)
    for _ in range(3):
        progress.update()
    drawn = terminal.getvalue()
    assert drawn.startswith("\r[") and drawn.endswith(" s left\n") and drawn.count("\n") == 1
    assert "[" + "#" * 30 + "] 3/3 files, 0 errors" in drawn.split("\r")[-1]
    quiet = io.StringIO()
    progress = Progress(HANDFUL, quiet)
    progress.update(HANDFUL, errors=HANDFUL)
    assert quiet.getvalue() == ""
    log = io.StringIO()
    progress = Progress(20, log)
    for _ in range(20):
        progress.update()
    assert len(log.getvalue().splitlines()) == 10 and "20/20 files" in log.getvalue().splitlines()[-1]
