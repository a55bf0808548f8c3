"""``model.predict`` and ``model.serving.predictor`` on real recordings (issue 19) and their footguns (issue 17).

Long files scored window by window, ``--format jsonl``, ``--list`` with its columns kept,
``--chunks``, ``--plot``, the Python API, a start that imports no Beam/Keras/scikit-learn/
matplotlib, and the output that never replaces an input or an existing file by surprise.
The model is exported untrained (kernel amplified so predictions differ between clips)
from the tiny pipeline output: no training needed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf

import model.serving.predictor as predictor_module
from model.serving.export import EmotionServing, write_saved_model
from model.serving.predict import (CHUNK_COLUMNS, COLUMNS, EXIT_MODEL, EXIT_NONE_READ, EXIT_OK, EXIT_USAGE, Progress,
                           main)
from model.serving.predictor import AudioError, Predictor, chunk_spans, window_spans
from model.training.config import TrainConfig
from model.nets.builder import build_net
from pipeline.audio_decoding import decode_audio
from pipeline.metadata import Metadata
from pipeline.params import ATTRIBUTES
from tests.fixtures.hostile_audio import flac_claiming
from tests.fixtures.streams import Terminal

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
TOLERANCE = 1e-4
AMPLIFY = 300.0


@pytest.fixture(scope="module")
def model(tiny_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = Metadata.load(str(tiny_features))
    config = TrainConfig(attributes=ATTRIBUTES)
    net = build_net(config, metadata.params)
    net(np.zeros((1, *metadata.params.feature_shape), np.float32))
    kernel = net.emotion_head.output_layer.kernel
    kernel.assign(kernel * AMPLIFY)
    path = tmp_path_factory.mktemp("recordings_model") / "model"
    write_saved_model(EmotionServing(net, metadata, config.attributes), str(path))
    return path


@pytest.fixture(scope="module")
def audio(tiny_msp_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``long.flac``: demo clips end to end (~40 s, 16 kHz); ``short.ogg``: one demo clip (< 11 s)."""
    folder = tmp_path_factory.mktemp("recordings")
    clips = sorted((tiny_msp_corpus / "Audios").iterdir())
    parts, total = [], 0
    for clip in clips:
        parts.append(decode_audio(clip.read_bytes(), RATE))
        total += parts[-1].size
        if total > 40 * RATE:
            break
    soundfile.write(folder / "long.flac", np.concatenate(parts)[:int(40.3 * RATE)], RATE)
    shutil.copy(clips[0], folder / "short.ogg")
    return {"long": folder / "long.flac", "short": folder / "short.ogg"}


def waveform_of(path: Path) -> np.ndarray:
    return decode_audio(path.read_bytes(), RATE)


_LOADED: dict[Path, object] = {}


def serve(model: Path, waveform: np.ndarray) -> dict[str, float]:
    """``serve_waveform``'s predictions (the model loaded once per test module)."""
    if model not in _LOADED:
        _LOADED[model] = tf.saved_model.load(str(model))
    outputs = _LOADED[model].signatures["serve_waveform"](waveform=tf.constant(waveform))
    return {a: float(outputs[a].numpy()[0]) for a in ATTRIBUTES}


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_window_spans_cover_the_recording_with_full_windows() -> None:
    assert window_spans(40 * RATE, RATE, 11, 11) == [(0, 176000), (176000, 352000), (352000, 528000),
                                                     (464000, 640000)]
    assert window_spans(33 * RATE, RATE, 11, 11)[-1] == (352000, 528000)  # hops land on the end: no extra
    assert [s for s, _ in window_spans(40 * RATE, RATE, 11, 5.5)] == [0, 88000, 176000, 264000, 352000,
                                                                      440000, 464000]
    assert window_spans(10 * RATE, RATE, 11, 11) == [(0, 160000)]  # shorter than a window: whole
    assert window_spans(40 * RATE, RATE, 0, 11) == [(0, 640000)]


def test_long_files_get_a_row_per_window_and_short_ones_one_row(model: Path, audio: dict[str, Path],
                                                                tmp_path: Path) -> None:
    output = tmp_path / "windows.csv"
    assert main(["--model", str(model), str(audio["long"]), str(audio["short"]), "--output", str(output)]) == EXIT_OK
    rows = csv_rows(output)
    assert tuple(rows[0]) == COLUMNS
    long, short = waveform_of(audio["long"]), waveform_of(audio["short"])
    spans = [(0.0, 11.0), (11.0, 22.0), (22.0, 33.0), (29.3, 40.3)]
    assert [(r["path"], float(r["start"]), float(r["end"])) for r in rows[:4]] == [
        (str(audio["long"]), *span) for span in spans]
    for row, (start, end) in zip(rows, spans):
        assert float(row["duration"]) == pytest.approx(40.3, abs=1e-3) and row["error"] == ""
        expected = serve(model, long[int(start * RATE):int(round(end * RATE))])
        for attribute in ATTRIBUTES:
            assert float(row[attribute]) == pytest.approx(expected[attribute], abs=TOLERANCE)
    assert len({row["arousal"] for row in rows[:4]}) == 4  # the windows are scored apart
    (row,) = rows[4:]
    assert (row["path"], float(row["start"])) == (str(audio["short"]), 0.0)
    assert float(row["end"]) == float(row["duration"]) == pytest.approx(short.size / RATE, abs=1e-3)
    expected = serve(model, short)
    for attribute in ATTRIBUTES:
        assert float(row[attribute]) == pytest.approx(expected[attribute], abs=TOLERANCE)


def test_jsonl_and_a_list_whose_columns_are_kept(model: Path, audio: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "clips").mkdir()
    shutil.copy(audio["short"], tmp_path / "clips" / "a.ogg")
    listing = tmp_path / "files.csv"
    listing.write_text("speaker,path,arousal\n"
                       "s1,clips/a.ogg,5.5\n"
                       f"s2,{audio['long']},2.0\n"
                       "s3,clips/missing.wav,\n")
    assert main(["--model", str(model), "--list", str(listing), "--format", "jsonl", "--window", "20",
                 "--hop", "15"]) == EXIT_OK
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [list(r) for r in records] == [[*COLUMNS, "speaker", "list_arousal"]] * len(records)
    assert [(Path(r["path"]).name, r["start"], r["speaker"], r["list_arousal"]) for r in records] == [
        ("a.ogg", 0.0, "s1", "5.5"), ("long.flac", 0.0, "s2", "2.0"), ("long.flac", 15.0, "s2", "2.0"),
        ("long.flac", 20.3, "s2", "2.0"), ("missing.wav", None, "s3", "")]
    assert records[0]["path"] == str(tmp_path / "clips" / "a.ogg")  # relative to the list's folder
    assert all(isinstance(records[1][a], float) for a in ATTRIBUTES) and records[1]["error"] is None
    missing = records[-1]
    assert missing["error"].startswith("unreadable file: ") and missing["arousal"] is None


def test_chunks_are_the_trace_the_window_score_averages(model: Path, audio: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "chunks.csv"
    assert main(["--model", str(model), str(audio["long"]), "--chunks", "--output", str(output)]) == EXIT_OK
    rows = csv_rows(output)
    assert tuple(rows[0]) == (*COLUMNS, *CHUNK_COLUMNS)
    chunks = tf.saved_model.load(str(model)).signatures["serving_default"].structured_input_signature[1][
        "features"].shape[1]
    assert len(rows) == 4 * chunks
    assert [(int(r["window"]), int(r["chunk"])) for r in rows] == [(w, k) for w in range(4) for k in range(chunks)]
    windows = csv_rows_of_windows(model, audio["long"], tmp_path)
    for w, window in enumerate(windows):
        trace = rows[w * chunks:(w + 1) * chunks]
        starts = [float(r["start"]) for r in trace]
        assert starts == sorted(starts) and starts[0] == pytest.approx(float(window["start"]), abs=1e-3)
        assert float(trace[-1]["end"]) <= float(window["end"]) + 1e-3
        for attribute in ATTRIBUTES:
            values = [float(r[attribute]) for r in trace]
            assert np.ptp(values) > 10 * TOLERANCE  # a trace, not one value repeated
            assert np.mean(values) == pytest.approx(float(window[attribute]), abs=TOLERANCE)


def csv_rows_of_windows(model: Path, path: Path, tmp_path: Path) -> list[dict[str, str]]:
    output = tmp_path / "windows_for_chunks.csv"
    assert main(["--model", str(model), str(path), "--output", str(output)]) == EXIT_OK
    return csv_rows(output)


def test_chunk_spans_follow_dynamic_chunking(tiny_features: Path) -> None:
    params = Metadata.load(str(tiny_features)).params
    spans = chunk_spans(11 * RATE, params)
    assert len(spans) == params.num_chunks and spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(11.0, abs=0.02)
    assert all(e - s == pytest.approx(params.chunk_frames * params.hop_length / RATE, abs=0.01) for s, e in spans)
    assert chunk_spans(RATE // 10, params) == [(0.0, 0.1)] * params.num_chunks  # tiled: all of the clip


def test_a_model_without_chunk_scores_refuses_chunks(model: Path, audio: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    loaded = tf.saved_model.load(str(model))
    wrapper = tf.Module()
    wrapper.inner = loaded
    tf.saved_model.save(wrapper, str(tmp_path / "bare"), signatures={
        name: loaded.signatures[name] for name in ("serving_default", "serve_waveform", "serve_waveform_features")})
    assert main(["--model", str(tmp_path / "bare"), str(audio["short"]), "--chunks"]) == EXIT_MODEL
    assert "the model has no chunk scores" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "bare"), str(audio["short"])]) == EXIT_OK  # without --chunks it serves


def test_plot_draws_the_trace_of_one_recording(model: Path, audio: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    picture = tmp_path / "trace.png"
    assert main(["--model", str(model), str(audio["long"]), "--plot", str(picture), "--hop", "5.5"]) == EXIT_OK
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    assert main(["--model", str(model), str(audio["long"]), str(audio["short"]),
                 "--plot", str(tmp_path / "two.png")]) == EXIT_USAGE
    assert "--plot draws one recording: 2 files given" in capsys.readouterr().err
    assert not (tmp_path / "two.png").exists()


def test_the_output_never_replaces_an_input_or_an_existing_file(model: Path, audio: dict[str, Path],
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip.ogg"
    shutil.copy(audio["short"], clip)
    original = clip.read_bytes()
    listing = tmp_path / "list.csv"
    listing.write_text("path\nclip.ogg\n")
    for arguments in ([str(clip), "--output", str(clip)], [str(tmp_path), "--output", str(clip), "--overwrite"],
                      ["--list", str(listing), "--output", str(listing), "--overwrite"],
                      [str(clip), "--plot", str(clip), "--overwrite"]):
        assert main(["--model", str(model), *arguments]) == EXIT_USAGE, arguments
        assert "is one of the inputs" in capsys.readouterr().err
    assert clip.read_bytes() == original and listing.read_text() == "path\nclip.ogg\n"
    output = tmp_path / "out" / "preds.csv"
    output.parent.mkdir()
    output.write_text("previous\n")
    assert main(["--model", str(model), str(clip), "--output", str(output)]) == EXIT_USAGE
    assert "exists: pass --overwrite" in capsys.readouterr().err and output.read_text() == "previous\n"
    assert main(["--model", str(model), str(clip), "--output", str(output), "--overwrite"]) == EXIT_OK
    assert csv_rows(output)[0]["path"] == str(clip)
    assert sorted(p.name for p in output.parent.iterdir()) == ["preds.csv"]  # no partial file left


def test_a_run_that_fails_part_way_leaves_the_previous_output(model: Path, audio: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "preds.csv"
    output.write_text("previous\n")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "_score", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["--model", str(model), str(audio["short"]), "--output", str(output), "--overwrite"])
    assert output.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["preds.csv"]


def test_files_that_break_the_decoder_become_error_rows(model: Path, audio: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    soundfile.write(tmp_path / "memory.wav", 0.1 * np.sin(np.arange(RATE) / 3.0), RATE)
    soundfile.write(tmp_path / "bug.wav", 0.1 * np.sin(np.arange(RATE) / 7.0), RATE)
    (tmp_path / "claims_2e36.flac").write_bytes(flac_claiming(2**36 - 1))
    decode = predictor_module.decode_audio
    raises = {(tmp_path / "memory.wav").read_bytes(): MemoryError(),
              (tmp_path / "bug.wav").read_bytes(): IndexError("index 3 is out of bounds")}

    def hostile(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
        if data in raises:
            raise raises[data]
        return decode(data, sample_rate, max_seconds=max_seconds)

    monkeypatch.setattr(predictor_module, "decode_audio", hostile)
    output = tmp_path / "out.csv"
    files = [str(tmp_path / "memory.wav"), str(tmp_path / "bug.wav"), str(tmp_path / "claims_2e36.flac"),
             str(audio["long"]), str(audio["short"])]
    assert main(["--model", str(model), *files, "--max-seconds", "30", "--output", str(output)]) == EXIT_OK
    rows = csv_rows(output)
    assert [r["path"] for r in rows] == files[:3] + [files[3]] + [files[4]]
    assert rows[0]["error"].startswith("out of memory decoding")
    assert rows[1]["error"] == "decoding failed: IndexError: index 3 is out of bounds"
    assert rows[2]["error"].startswith("too long: ")
    assert rows[3]["error"].startswith("too long: ") and "over the 30 s cap" in rows[3]["error"]
    assert rows[4]["error"] == "" and rows[4]["arousal"]


def test_no_file_read_exits_4(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.txt").write_text("not audio")
    assert main(["--model", str(model), str(tmp_path)]) == EXIT_NONE_READ
    captured = capsys.readouterr()
    assert "no file could be read" in captured.err and len(captured.out.splitlines()) == 3


@pytest.mark.parametrize("arguments, message", [
    (["{clip}", "--window", "-1"], "--window must be at least 0"),
    (["{clip}", "--hop", "0"], "--hop must be above 0"),
    (["{clip}", "--max-seconds", "nan"], "--max-seconds must be above 0"),
    (["{clip}", "--list", "{clip}"], "give PATHs or --list, not both"),
    (["--list", "{empty}"], "has no rows under a header"),
])
def test_unusable_new_arguments_exit_2(arguments: list[str], message: str, model: Path, audio: dict[str, Path],
                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty.csv").write_text("path\n")
    filled = [a.format(clip=audio["short"], empty=tmp_path / "empty.csv") for a in arguments]
    assert main(["--model", str(model), *filled]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_the_python_api_scores_files_and_waveforms(model: Path, audio: dict[str, Path], tmp_path: Path) -> None:
    predictor = Predictor(model, batch_size=3)
    long = waveform_of(audio["long"])
    by_path, by_waveform = predictor.predict(audio["long"], chunks=True), predictor.predict(long)
    assert [(w.start, w.end) for w in by_path.windows] == [(0.0, 11.0), (11.0, 22.0), (22.0, 33.0), (29.3, 40.3)]
    assert by_path.duration == pytest.approx(40.3)
    for a, b in zip(by_path.windows, by_waveform.windows):
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
    assert by_path.arousal == pytest.approx(np.mean([w.scores["arousal"] for w in by_path.windows]))
    assert len(by_path.chunks) == 4 and by_waveform.chunks == ()
    short = predictor.predict(waveform_of(audio["short"]))
    assert len(short.windows) == 1
    assert short.scores == pytest.approx(serve(model, waveform_of(audio["short"])), abs=TOLERANCE)
    assert (short.arousal, short.valence, short.dominance) == tuple(short.scores[a] for a in ATTRIBUTES)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVE")
    with pytest.raises(AudioError, match="unreadable audio"):
        predictor.predict(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="mono waveform"):
        predictor.predict(np.zeros((RATE, 2), np.float32))


LIGHT_START = """
import sys
import model.serving.predict, model.serving.predictor
heavy = ("apache_beam", "sklearn", "matplotlib", "keras", "librosa", "scipy.signal", "tensorflow")
assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
result = model.serving.predictor.Predictor(sys.argv[1]).predict(sys.argv[2])
# A plain "import tensorflow" imports Keras when installed, and Keras scikit-learn and matplotlib:
# loading and running the model must need none of them.
loaded = [m for m in heavy[:-1] if m in sys.modules]
assert not loaded, loaded
import keras  # still importable afterwards
print(result.arousal)
"""


def test_prediction_imports_only_what_it_uses(model: Path, audio: dict[str, Path]) -> None:
    result = subprocess.run([sys.executable, "-c", LIGHT_START, str(model), str(audio["short"])], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.splitlines()[-1]) > 0


def test_progress_counts_the_windows_of_a_long_file_on_a_terminal() -> None:
    terminal = Terminal()
    progress = Progress(2, terminal)
    progress.REDRAW_SECONDS = 0.0
    progress.update()
    progress.partial(5, 10)
    line = terminal.getvalue().split("\r")[-1]
    assert line.startswith("[" + "#" * 22 + "." * 8 + "] 1/2 files, 0 errors") and line.endswith(" s left")
