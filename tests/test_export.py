"""The exported SavedModel: its contract in a TensorFlow-only process, parity with the
pipeline on real utterances, the export's own check, and the pipeline's probes output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from model.training.datasets import inference_batches
from model.serving.export import (FEATURE_TOLERANCE, PREDICTION_TOLERANCE, EmotionServing, ExportError,
                          export_saved_model, verify_saved_model, write_saved_model)
from model.training.job_folder import load_job
from model.nets.builder import build_net
from pipeline.audio_decoding import decode_audio
from pipeline.corpus import Utterance
from pipeline.metadata import Metadata
from pipeline.numpy_frontend import mel_to_chunks, waveform_to_mel
from pipeline.params import ATTRIBUTES, FeatureParams
from pipeline.probe_file import Probe, load_probes
from pipeline.probes import WriteProbes
from pipeline.stats import Moments
from tests.fixtures.edge_audio import speech_like, write_audio

SMALL_SHAPE = (4, 31, 128)
FLOAT16_TOLERANCE = 2e-3
"""Stored features are float16: about 3 decimals on values in [-3, 3]."""
AMPLIFY = 1000.0


def export_amplified(job_dir: Path, destination: Path) -> Path:
    """The job's best network with its emotion output kernel scaled up, exported (and checked).

    Two epochs on 12 sentences leave every prediction within about 1e-4 of a constant, so
    agreement within 1e-4 would prove nothing on the trained model alone; scaled by 1000,
    its predictions spread by about 0.1 over the same utterances.
    """
    job = load_job(str(job_dir))
    kernel = job.net.emotion_head.output_layer.kernel
    kernel.assign(kernel * AMPLIFY)
    export_saved_model(job.net, job.metadata, job.config.attributes, str(destination),
                       record_features(job.data_dir, "dev", job.metadata), job.data_dir)
    return destination


def record_features(data_dir: str | Path, split: str, metadata: Metadata) -> np.ndarray:
    return np.concatenate([batch["features"].numpy() for batch in inference_batches(
        str(data_dir), split, metadata.params, 8, keys=("features",))])


def records_by_id(data_dir: Path, split: str, metadata: Metadata) -> dict[str, dict]:
    batches = inference_batches(str(data_dir), split, metadata.params, 8, keys=("utt_id", "features", "num_frames"))
    return {utt_id.decode(): {"features": features, "num_frames": int(frames)}
            for batch in batches for utt_id, features, frames in
            zip(batch["utt_id"].numpy(), batch["features"].numpy(), batch["num_frames"].numpy())}


@pytest.fixture(scope="module")
def amplified_model(trained_job: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_amplified(trained_job, tmp_path_factory.mktemp("amplified") / "model")


@pytest.fixture(scope="module")
def demo_utterances(tiny_msp_corpus: Path) -> dict[str, np.ndarray]:
    """The tiny corpus's demo clips (espeak-ng speech, Ogg Vorbis), decoded as the pipeline does."""
    paths = sorted((tiny_msp_corpus / "Audios").iterdir())[:10]
    return {path.stem: decode_audio(path.read_bytes(), FeatureParams().sample_rate) for path in paths}


# --- the pipeline's probes ---------------------------------------------------------------

def test_the_pipeline_writes_probes_that_match_its_records(tiny_features: Path, tiny_msp_corpus: Path) -> None:
    metadata = Metadata.load(str(tiny_features))
    probes = load_probes(str(tiny_features))
    assert [(p.split, p.index) for p in probes] == [("dev", 0), ("dev", 1), ("dev", 2)]
    stored = records_by_id(tiny_features, "dev", metadata)
    for probe in probes:
        assert probe.waveform.dtype == np.float32 and probe.waveform.ndim == 1
        assert probe.features.dtype == np.float32 and probe.features.shape == SMALL_SHAPE
        audio = next((tiny_msp_corpus / "Audios").glob(f"{probe.utt_id}.*"))
        np.testing.assert_array_equal(probe.waveform, decode_audio(audio.read_bytes(), 16000))
        record = stored[probe.utt_id]
        np.testing.assert_allclose(probe.features, record["features"], atol=FLOAT16_TOLERANCE, rtol=0)
        assert record["num_frames"] == metadata.params.num_frames(probe.waveform.size)
        expected = mel_to_chunks(waveform_to_mel(probe.waveform, metadata.params), metadata.feature_mean,
                                 metadata.feature_std, metadata.params)
        # The pipeline's workers run the mel matmul on one BLAS thread: float32 rounding apart.
        np.testing.assert_allclose(probe.features, expected, atol=1e-6, rtol=0)


def test_probes_fall_back_to_train_and_skip_rejected_inputs(tmp_path: Path) -> None:
    params = FeatureParams(max_seconds=2.0, chunk_seconds=0.5)
    paths = [write_audio(tmp_path / f"u{i}.wav", speech_like(0.6 + 0.1 * i, seed=i)) for i in range(5)]
    paths[0].write_bytes(b"")
    utterances = [Utterance(f"u{i}", str(p), "train", "spk", (4.0, 4.0, 4.0), index=i) for i, p in enumerate(paths)]
    utterances.append(Utterance("t0", str(paths[4]), "test", "spk", (4.0, 4.0, 4.0), index=0))
    stats = Moments(100, np.full(params.n_mels, 0.01), np.full(params.n_mels, 0.02))
    with BeamTestPipeline() as pipeline:
        feature_stats = pipeline | "Stats" >> beam.Create([stats])
        (pipeline | beam.Create(utterances)
         | WriteProbes(str(tmp_path), params, ["test", "train"], feature_stats, count=2))
    probes = load_probes(str(tmp_path))
    assert [(p.utt_id, p.split, p.index) for p in probes] == [("u1", "train", 1), ("u2", "train", 2)]
    assert probes[0].waveform.size == int(0.7 * 16000)


def test_data_without_probes_loads_as_none(tmp_path: Path) -> None:
    assert load_probes(str(tmp_path)) is None


# --- the SavedModel's contract, loaded where only TensorFlow is imported -----------------

FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf

model_dir, inputs, outputs = sys.argv[1:]
loaded = tf.saved_model.load(model_dir)
data = np.load(inputs)
spec = lambda s: [s.dtype.name, s.shape.as_list()]
report = {"signatures": {name: {"inputs": {k: spec(v) for k, v in fn.structured_input_signature[1].items()},
                                "outputs": {k: spec(v) for k, v in fn.structured_outputs.items()}}
                         for name, fn in loaded.signatures.items()}}
by_features = loaded.signatures["serving_default"](features=tf.constant(data["features"]))
by_waveform = {**loaded.signatures["serve_waveform"](waveform=tf.constant(data["waveform"])),
               **loaded.signatures["serve_waveform_features"](waveform=tf.constant(data["waveform"]))}
np.savez(outputs, **{"features/" + k: v.numpy() for k, v in by_features.items()},
         **{"waveform/" + k: v.numpy() for k, v in by_waveform.items()})
report["metadata_json"] = json.loads(loaded.metadata_json.numpy())
with open(model_dir + "/assets.extra/metadata.json") as handle:
    report["asset"] = json.load(handle)
report["modules"] = sorted(name for name in sys.modules if name.split(".")[0] in
                           ("pipeline", "model", "trainer", "tests", "librosa", "soundfile", "apache_beam"))
print(json.dumps(report))
"""


def test_saved_model_loads_with_only_tensorflow_and_meets_the_contract(trained_job: Path, tiny_features: Path,
                                                                       tmp_path: Path) -> None:
    metadata = Metadata.load(str(tiny_features))
    features = record_features(tiny_features, "test", metadata)
    probe = load_probes(str(tiny_features))[0]
    np.savez(tmp_path / "inputs.npz", features=features, waveform=probe.waveform)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(trained_job / "model"), str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")],
        cwd=tmp_path, capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["modules"] == []

    c, m, f = SMALL_SHAPE
    per_attribute = {a: ["float32", [None]] for a in ATTRIBUTES}
    assert report["signatures"] == {
        "serving_default": {"inputs": {"features": ["float32", [None, c, m, f]]}, "outputs": per_attribute},
        "serve_waveform": {"inputs": {"waveform": ["float32", [None]]},
                           "outputs": {a: ["float32", [1]] for a in ATTRIBUTES}},
        "serve_wav_bytes": {"inputs": {"wav_bytes": ["string", [None]]}, "outputs": per_attribute},
        "serve_waveform_features": {"inputs": {"waveform": ["float32", [None]]},
                                    "outputs": {"features": ["float32", [c, m, f]]}}}

    outputs = np.load(tmp_path / "outputs.npz")
    for attribute in ATTRIBUTES:
        by_features = outputs[f"features/{attribute}"]
        assert by_features.dtype == np.float32 and by_features.shape == (len(features),)
        assert np.all((1.0 <= by_features) & (by_features <= 7.0))  # de-normalised to the label scale
        assert abs(by_features.mean() - metadata.label_stats.mean[attribute]) < 1.0
    assert outputs["waveform/features"].shape == SMALL_SHAPE
    assert np.abs(outputs["waveform/features"] - probe.features).max() < FEATURE_TOLERANCE

    assert report["asset"] == report["metadata_json"]
    assert report["asset"]["attributes"] == list(ATTRIBUTES)
    assert report["asset"]["feature_params"] == metadata.params.to_dict()
    np.testing.assert_allclose(report["asset"]["feature_mean"], metadata.feature_mean, rtol=1e-12)
    assert report["asset"]["label_mean"] == pytest.approx(dict(metadata.label_stats.mean))


def test_a_single_attribute_model_serves_only_that_attribute(tiny_features: Path, trained_job: Path,
                                                             tmp_path: Path) -> None:
    job = load_job(str(trained_job))
    config = dataclasses.replace(job.config, attributes=("valence",))
    net = build_net(config, job.metadata.params)
    net(np.zeros((1, *SMALL_SHAPE), np.float32))
    export_saved_model(net, job.metadata, config.attributes, str(tmp_path / "model"),
                       record_features(tiny_features, "dev", job.metadata)[:2], str(tiny_features))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    assert set(loaded.signatures["serving_default"].structured_outputs) == {"valence"}
    assert set(loaded.signatures["serve_waveform"].structured_outputs) == {"valence"}
    assert set(loaded.signatures["serve_wav_bytes"].structured_outputs) == {"valence"}
    assert json.loads(loaded.metadata_json.numpy())["attributes"] == ["valence"]


# --- parity with the pipeline on real utterances -----------------------------------------

@pytest.mark.parametrize("which", ["trained", "amplified"])
def test_waveform_signature_matches_the_pipeline_on_demo_utterances(which: str, trained_job: Path,
                                                                    amplified_model: Path, tiny_features: Path,
                                                                    demo_utterances: dict) -> None:
    metadata = Metadata.load(str(tiny_features))
    loaded = tf.saved_model.load(str(trained_job / "model" if which == "trained" else amplified_model))
    by_features, by_waveform = loaded.signatures["serving_default"], loaded.signatures["serve_waveform"]
    predictions = []
    for utt_id, waveform in demo_utterances.items():
        expected = mel_to_chunks(waveform_to_mel(waveform, metadata.params), metadata.feature_mean,
                                 metadata.feature_std, metadata.params)
        served = by_waveform(waveform=tf.constant(waveform))
        features = loaded.signatures["serve_waveform_features"](waveform=tf.constant(waveform))["features"]
        assert np.abs(features.numpy() - expected).max() < FEATURE_TOLERANCE, utt_id
        reference = by_features(features=tf.constant(expected[np.newaxis]))
        for attribute in ATTRIBUTES:
            assert abs(served[attribute].numpy()[0] - reference[attribute].numpy()[0]) < PREDICTION_TOLERANCE
        predictions.append([served[a].numpy()[0] for a in ATTRIBUTES])
    if which == "amplified":  # the 1e-4 bound is far below how much the predictions vary
        assert np.ptp(np.array(predictions), axis=0).min() > 100 * PREDICTION_TOLERANCE


def test_batched_features_prediction_equals_per_utterance(amplified_model: Path, tiny_features: Path) -> None:
    metadata = Metadata.load(str(tiny_features))
    features = record_features(tiny_features, "test", metadata)
    serve = tf.saved_model.load(str(amplified_model)).signatures["serving_default"]
    batched = serve(features=tf.constant(features))
    singles = [serve(features=tf.constant(features[i:i + 1])) for i in range(len(features))]
    for attribute in ATTRIBUTES:
        single = np.concatenate([s[attribute].numpy() for s in singles])
        np.testing.assert_allclose(batched[attribute].numpy(), single, rtol=0, atol=1e-6)
        assert np.ptp(single) > 100 * PREDICTION_TOLERANCE


# --- the export's own check --------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(trained_job: Path, tiny_features: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EmotionServing, np.ndarray]:
    """A fresh export of the trained job, and the module it was written from (tests restore what they change)."""
    job = load_job(str(trained_job))
    module = EmotionServing(job.net, job.metadata, job.config.attributes)
    path = tmp_path_factory.mktemp("exported") / "model"
    write_saved_model(module, str(path))
    return path, module, record_features(tiny_features, "dev", job.metadata)


def test_export_check_passes_on_what_was_written(exported, tiny_features: Path) -> None:
    path, module, features = exported
    figures = verify_saved_model(str(path), module, features, load_probes(str(tiny_features)))
    assert figures["waveform_probes"] == 3 and figures["probe_sentences"] == len(features)
    assert figures["probe_feature_difference"] < FEATURE_TOLERANCE
    assert figures["max_abs_difference"] <= PREDICTION_TOLERANCE


def test_export_check_fails_when_the_weights_differ(exported, tiny_features: Path) -> None:
    path, module, features = exported
    bias = module.net.emotion_head.output_layer.bias
    original = bias.numpy()
    bias.assign(original + 0.01)
    try:
        with pytest.raises(ExportError, match="serving_default on .* differs from the trained network"):
            verify_saved_model(str(path), module, features, load_probes(str(tiny_features)))
    finally:
        bias.assign(original)


def test_export_check_fails_when_waveform_features_differ_from_the_pipeline(exported, tiny_features: Path) -> None:
    path, module, features = exported
    probe = load_probes(str(tiny_features))[0]
    shifted = Probe(probe.utt_id, probe.split, probe.index, probe.waveform, probe.features + 0.01)
    with pytest.raises(ExportError, match=f"probe {probe.utt_id}: serve_waveform features differ"):
        verify_saved_model(str(path), module, features, [shifted])
    other = load_probes(str(tiny_features))[1]
    swapped = Probe(probe.utt_id, probe.split, probe.index, other.waveform, probe.features)
    with pytest.raises(ExportError, match="features differ from the pipeline's"):
        verify_saved_model(str(path), module, features, [swapped])


def test_export_check_refuses_a_saved_model_without_the_waveform_signature(exported, tmp_path: Path) -> None:
    path, module, features = exported
    partial = tmp_path / "partial"
    tf.saved_model.save(module, str(partial), signatures={"serving_default": module.serve_features})
    with pytest.raises(ExportError, match="missing signature.*serve_waveform"):
        verify_saved_model(str(partial), module, features, [])
    two = tmp_path / "two"
    tf.saved_model.save(module, str(two), signatures={"serving_default": module.serve_features,
                                                      "serve_waveform": module.serve_waveform})
    with pytest.raises(ExportError, match="missing signature.*serve_wav_bytes, serve_waveform_features"):
        verify_saved_model(str(two), module, features, [])


def test_export_without_probes_warns_and_checks_the_rest(trained_job: Path, tiny_features: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    job = load_job(str(trained_job))
    old_data = tmp_path / "old_data"
    old_data.mkdir()
    figures = export_saved_model(job.net, job.metadata, job.config.attributes, str(tmp_path / "model"),
                                 record_features(tiny_features, "dev", job.metadata), str(old_data))
    assert figures["waveform_probes"] == 0
    assert f"warning: {old_data} has no waveform probes" in capsys.readouterr().err
    assert (tmp_path / "model" / "assets.extra" / "metadata.json").is_file()


def test_the_trainer_reports_the_export_check(trained_job: Path) -> None:
    figures = json.loads((trained_job / "metrics.json").read_text())["export"]
    assert figures["waveform_probes"] == 3
    assert figures["probe_feature_difference"] < FEATURE_TOLERANCE
    assert figures["probe_prediction_difference"] <= PREDICTION_TOLERANCE
    assert figures["probe_wav_bytes_difference"] <= PREDICTION_TOLERANCE
