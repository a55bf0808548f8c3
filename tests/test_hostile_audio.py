"""One bad file never crashes a job or costs unbounded memory: lying headers, absurd sample
rates, over-long audio and cut Ogg files become reasons (issue 17)."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
import soundfile

from pipeline.__main__ import main
from pipeline.audio_decoding import DEFAULT_MAX_SECONDS, AudioError, decode_audio
from pipeline.metadata import Metadata
from tests.fixtures import hostile_audio as hostile
from tests.fixtures.edge_audio import speech_like, write_audio, write_manifest
from tests.fixtures.jobs import SMALL_GEOMETRY

HOSTILE = {
    "flac_claims_2_36_samples": (lambda: hostile.flac_claiming(2 ** 36 - 1), "too long"),
    "wav_at_1_hz": (lambda: hostile.wav_at_rate(1), "unsupported sample rate"),
    "wav_at_10_mhz": (lambda: hostile.wav_at_rate(10_000_000), "unsupported sample rate"),
    "wav_at_0_hz": (lambda: hostile.wav_at_rate(0), "unreadable audio"),
    "silence_700_s": (lambda: hostile.silent_flac(700.0), "too long"),
    "ogg_cut_between_pages": (hostile.ogg_cut_at_page, "truncated audio"),
    "ogg_cut_mid_page": (hostile.ogg_cut_mid_page, "truncated audio"),
}
SUFFIX = {"flac": ".flac", "wav": ".wav", "silence": ".flac", "ogg": ".ogg"}


def _reason(data: bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> str:
    with pytest.raises(AudioError) as caught:
        decode_audio(data, 16000, max_seconds)
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_is_rejected_with_a_reason_in_bounded_time_and_memory(name: str) -> None:
    build, category = HOSTILE[name]
    data = build()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        reason = _reason(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason.split(":")[0] == category, reason
    assert time.perf_counter() - start < 2.0
    assert peak < 20 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB to reject a {len(data)} B file"


def test_sample_rates_and_the_duration_cap_are_checked_from_the_header() -> None:
    assert "header declares 1 Hz" in _reason(hostile.wav_at_rate(1))
    assert "68719476735 frames" in _reason(hostile.flac_claiming(2 ** 36 - 1))
    three_seconds = hostile.encoded(speech_like(3.0), format="FLAC")
    assert decode_audio(three_seconds, 16000).shape == (48000,)
    assert _reason(three_seconds, max_seconds=2.0).startswith("too long: header declares 48000 frames (3.0 s)")
    assert decode_audio(hostile.wav_at_rate(8000), 16000).shape == (48000,), "8 kHz is a real rate"


def test_a_cut_ogg_vorbis_file_is_truncated_audio_and_an_intact_one_decodes() -> None:
    intact = hostile.ogg_vorbis(3.0)
    assert decode_audio(intact, 16000).shape == (48000,)
    assert "without its end-of-stream page" in _reason(hostile.ogg_cut_at_page())
    assert "needs" in _reason(hostile.ogg_cut_mid_page())


def test_a_decode_out_of_memory_is_an_audio_error(monkeypatch) -> None:
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(soundfile.SoundFile, "read", exhausted)
    assert _reason(hostile.encoded(speech_like(1.0), format="WAV")).startswith("out of memory")


def test_the_pipeline_dead_letters_every_hostile_file_and_finishes(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    rows = []
    for i, name in enumerate(("good_a", "good_b", "good_c")):
        write_audio(audio / f"{name}.wav", speech_like(1.0 + 0.3 * i, seed=i))
        rows.append({"path": f"audio/{name}.wav", "split": "train" if i < 2 else "dev"})
    write_audio(audio / "three_seconds.wav", speech_like(3.0, seed=9))
    rows.append({"path": "audio/three_seconds.wav", "split": "dev"})
    for name, (build, _) in HOSTILE.items():
        path = audio / (name + SUFFIX[name.split("_")[0]])
        path.write_bytes(build())
        rows.append({"path": f"audio/{path.name}", "split": "train"})
    manifest = write_manifest(tmp_path / "manifest.csv",
                              [{**row, "arousal": "4", "valence": "4", "dominance": "4"} for row in rows])
    output = tmp_path / "features"
    assert main(["--corpus", "csv", "--manifest", str(manifest), "--output", str(output),
                 "--max-audio-seconds", "2.5", *SMALL_GEOMETRY]) == 0
    errors = {}
    for path in output.glob("errors-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            errors[record["id"]] = record["reason"].split(":")[0]
    expected = {name: category for name, (_, category) in HOSTILE.items()}
    assert errors == {**expected, "three_seconds": "too long"}
    metadata = Metadata.load(str(output))
    assert (metadata.splits["train"].count, metadata.splits["dev"].count) == (2, 1)
    assert metadata.source["max_audio_seconds"] == 2.5


def test_model_predict_gets_the_same_reasons(tmp_path: Path) -> None:
    from model.serving.predict import decode_file

    path = tmp_path / "bomb.flac"
    path.write_bytes(hostile.flac_claiming(2 ** 36 - 1))
    waveform, reason = decode_file(str(path), 16000)
    assert waveform is None and reason.startswith("too long"), reason
