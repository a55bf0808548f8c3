"""The shipped releases (pretrained/) reproduce the authors' PyTorch outputs, and need only TensorFlow.

The golden inputs and outputs under tests/fixtures/reference_models/ were computed with the
authors' own model classes and weights (see its README); the tolerances are the issue's:
float32 rounding on the authors' features, 1e-3 on scores from the audio through our
in-graph front end.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.serving.convert_reference import ATTRIBUTE_CODES, RELEASES, golden_features_group
from model.serving.export import read_contract
from pipeline.audio_decoding import decode_audio
from pipeline.params import ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "reference_models"
SPECS = {spec.name: spec for spec in RELEASES}
UTTERANCES = [f"utt{k}" for k in range(1, 6)]
SCORE_TOLERANCE = 1e-4
WAVEFORM_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def golden() -> tuple[np.lib.npyio.NpzFile, np.lib.npyio.NpzFile]:
    return np.load(FIXTURES / "features.npz"), np.load(FIXTURES / "reference_outputs.npz")


def checkpoint_stems(release: Path) -> dict[str, str]:
    """Attribute -> the authors' checkpoint name (the key prefix of reference_outputs.npz)."""
    spec = SPECS[release.name]
    files = json.loads((release / "release.json").read_text())["files_sha256"]
    stems = {}
    for attribute, code in ATTRIBUTE_CODES.items():
        (match,) = [f for f in files if fnmatch.fnmatch(Path(f).name, spec.pattern.format(code=code))]
        stems[attribute] = Path(match).name[:-len(".pth.tar")]
    return stems


def golden_waveform(utt: str) -> np.ndarray:
    return decode_audio((FIXTURES / "audio" / f"{utt}.wav").read_bytes(), 16000)


@pytest.fixture(scope="module", params=sorted(SPECS))
def release(request) -> tuple[Path, object]:
    path = ROOT / "pretrained" / request.param
    return path, tf.saved_model.load(str(path))


def test_every_output_matches_the_authors_on_their_features(release, golden) -> None:
    path, loaded = release
    features, reference = golden
    group = golden_features_group(SPECS[path.name])
    assert read_contract(loaded).attributes == ATTRIBUTES
    metadata = json.loads(loaded.metadata_json.numpy())
    mean, std = metadata["label_mean"], metadata["label_std"]
    worst: dict[str, float] = {}
    for name in ("random", *UTTERANCES):
        batch = features["random/chunks"] if name == "random" else features[f"{group}/{name}/chunks"][None]
        served = loaded.signatures["serving_default"](features=tf.constant(batch))
        outputs = loaded.chunk_outputs(tf.constant(batch))
        for attribute, stem in checkpoint_stems(path).items():
            expected = {key: reference[f"{stem}/{name}/{key}"] for key in (
                "embeddings", "cluster_logits", "chunk_predictions", "sentence_prediction_normalised", "score")}
            chunks = outputs[f"{attribute}_chunk_predictions"].numpy()
            got = {"embeddings": outputs[f"{attribute}_embeddings"].numpy().reshape(-1, 256),
                   "cluster_logits": outputs[f"{attribute}_cluster_logits"].numpy().reshape(len(batch) * 11, -1),
                   "chunk_predictions": chunks.reshape(-1, 1),
                   "sentence_prediction_normalised": chunks.mean(axis=1)[:, 0],
                   "score": served[attribute].numpy()}
            for key, value in got.items():
                # float32 rounding: relative to the output's magnitude (embeddings reach ~100)
                scale = max(1.0, float(np.max(np.abs(expected[key]))))
                worst[key] = max(worst.get(key, 0.0), float(np.max(np.abs(value - expected[key]))) / scale)
            chunk_scores = expected["chunk_predictions"].reshape(len(batch), 11) * std[attribute] + mean[attribute]
            np.testing.assert_allclose(served[f"{attribute}_chunks"].numpy(), chunk_scores,
                                       atol=SCORE_TOLERANCE, rtol=0)
            assert np.max(np.abs(served[attribute].numpy() - expected["score"])) <= SCORE_TOLERANCE
    assert max(worst.values()) <= 2e-5, worst


def test_scores_from_the_golden_audio_match_the_authors(release, golden) -> None:
    path, loaded = release
    features, reference = golden
    group = golden_features_group(SPECS[path.name])
    stems = checkpoint_stems(path)
    for utt in UTTERANCES:
        waveform = tf.constant(golden_waveform(utt))
        served = loaded.signatures["serve_waveform"](waveform=waveform)
        np.testing.assert_allclose(loaded.waveform_features(waveform).numpy(), features[f"{group}/{utt}/chunks"],
                                   atol=1e-3, rtol=0)
        for attribute, stem in stems.items():
            error = abs(float(served[attribute][0]) - float(reference[f"{stem}/{utt}/score"][0]))
            assert error <= WAVEFORM_TOLERANCE, (path.name, utt, attribute, error)


FRESH_PROCESS = """
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
scores = {}
for path in sys.argv[2:]:
    audio, rate = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
    assert int(rate) == 16000
    out = model.signatures["serve_waveform"](waveform=audio[:, 0])
    scores[path] = {a: float(out[a][0]) for a in ("arousal", "valence", "dominance")}
project = sorted(m for m in sys.modules if m.split(".")[0] in ("model", "pipeline"))
print(json.dumps({"scores": scores, "project_modules": project}))
"""


def test_a_shipped_release_scores_audio_in_a_fresh_process_with_tensorflow_alone(tmp_path: Path, golden) -> None:
    release = ROOT / "pretrained" / "msp-podcast-v1.8-temp-cnn"
    wavs = [str(FIXTURES / "audio" / f"{utt}.wav") for utt in UTTERANCES]
    # -I: isolated mode, neither the working directory nor PYTHONPATH is on sys.path
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, str(release), *wavs], cwd=tmp_path,
                            capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["project_modules"] == []
    _, reference = golden
    for attribute, stem in checkpoint_stems(release).items():
        for wav, utt in zip(wavs, UTTERANCES):
            assert abs(report["scores"][wav][attribute] - reference[f"{stem}/{utt}/score"][0]) <= WAVEFORM_TOLERANCE


def test_model_predict_scores_a_folder_with_a_shipped_release(tmp_path: Path, golden) -> None:
    from model.serving.predict import main as predict_main

    release = ROOT / "pretrained" / "msp-podcast-v1.6-vanilla"
    output = tmp_path / "predictions.csv"
    # --window 0 scores each file whole, as the authors' script does (utt5 is longer than one window).
    assert predict_main(["--model", str(release), str(FIXTURES / "audio"), "--output", str(output),
                         "--window", "0"]) == 0
    rows = {Path(row["path"]).stem: row for row in csv.DictReader(output.open())}
    _, reference = golden
    assert sorted(rows) == UTTERANCES
    for attribute, stem in checkpoint_stems(release).items():
        for utt in UTTERANCES:
            assert abs(float(rows[utt][attribute]) - reference[f"{stem}/{utt}/score"][0]) <= WAVEFORM_TOLERANCE
