"""SavedModel export: features and waveform signatures, then a check of what was written.

As YAMNet, the exported model carries its own feature front end, so applications feed
it 16 kHz waveforms without this project installed. The export is only reported done
after the SavedModel is loaded back and checked on known inputs: pipeline features, real
utterances (the pipeline's ``probes.npz``: waveform in, the pipeline's features and the
features signature's predictions out), silence and a very short clip.

The contract a loaded model must meet (docs/serving.md):

- ``serving_default``: ``features`` float32 [batch, C, m, n_mels] -> one float32 [batch]
  output per trained attribute (``arousal``, ``valence``, ``dominance``), on the label scale;
  optionally ``<attribute>_chunks`` [batch, C], the chunk-level scores (``CHUNKS_SUFFIX``).
- ``serve_waveform``: ``waveform`` float32 [samples] -> the same outputs ([1]).
- ``serve_wav_bytes``: ``wav_bytes`` string [batch], each a whole 16 kHz 16-bit PCM WAV file
  (``tf.audio.decode_wav``; channels are averaged) -> the outputs of ``serving_default``
  ([batch]). The compact request for online prediction: JSON carries the bytes as
  ``{"b64": ...}``, about 43 KB per second of audio against about 22 bytes a sample (350 KB
  a second) for a JSON waveform, so an utterance of up to about 34 s fits Vertex AI's
  1.5 MB request limit (``REQUEST_LIMIT_BYTES``).
- ``serve_waveform_features``: ``waveform`` -> ``features`` float32 [C, m, n_mels], the
  normalised chunks the front end computes: asked for on its own, so that no prediction
  response carries them.
- ``waveform_features`` (a restored function, not a signature): waveform -> features
  only, so a predictor can batch many files through ``serving_default``.
- ``metadata_json`` (a string variable) and ``assets.extra/metadata.json``: the data's
  ``metadata.json`` (feature settings, feature and label statistics) with ``attributes``
  set to the model's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import sys
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import tensorflow as tf

from model.tf_paths import load_saved_model
from pipeline.params import ATTRIBUTES

if TYPE_CHECKING:  # Keras, librosa and Beam only where a model is exported, not where one is served
    from model.nets.emocluster_net import EmoClusterNet
    from pipeline.metadata import Metadata
    from pipeline.probe_file import Probe

SERVING_DEFAULT = "serving_default"
SERVE_WAVEFORM = "serve_waveform"
SERVE_WAV_BYTES = "serve_wav_bytes"
SERVE_WAVEFORM_FEATURES = "serve_waveform_features"
FEATURES = "features"
WAVEFORM = "waveform"
WAV_BYTES = "wav_bytes"
REQUEST_LIMIT_BYTES = 1_500_000
"""Vertex AI online prediction refuses request bodies over 1.5 MB."""
METADATA_ASSET = posixpath.join("assets.extra", "metadata.json")
PREDICTION_TOLERANCE = 1e-4
FEATURE_TOLERANCE = 1e-3
"""Issue 6: waveform features within 1e-3 of the pipeline's, predictions within 1e-4."""
SAME_GRAPH_TOLERANCE = 1e-6
"""Two functions of the SavedModel running the same ops on the same input."""
SHORT_CLIP_SECONDS = 0.05
CHUNKS_SUFFIX = "_chunks"
"""Optional ``<attribute>_chunks`` outputs [batch, C]: chunk-level scores (converted releases)."""


class ExportError(RuntimeError):
    """The written SavedModel does not reproduce the trained model or breaks the contract."""


class EmotionServing(tf.Module):
    """What the SavedModel holds: the network, the front end, label statistics, settings."""

    def __init__(self, net: EmoClusterNet, metadata: Metadata, attributes: Sequence[str]):
        from model.serving.graph_frontend import WaveformFrontend

        super().__init__(name="deepemocluster")
        self.net = net
        self.frontend = WaveformFrontend(metadata.params, metadata.feature_mean, metadata.feature_std)
        self.attributes = tuple(attributes)
        mean, std = metadata.label_stats.vectors(attributes)
        self._label_mean = tf.constant(mean)
        self._label_std = tf.constant(std)
        self.metadata_json = tf.Variable(
            json.dumps({**metadata.to_dict(), "attributes": list(attributes)}), trainable=False,
            name="metadata_json")
        shape = metadata.params.feature_shape
        waveform_spec = tf.TensorSpec([None], tf.float32, name=WAVEFORM)
        self.serve_features = tf.function(
            self._serve_features, input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=FEATURES)])
        self.serve_waveform = tf.function(self._serve_waveform, input_signature=[waveform_spec])
        self.serve_wav_bytes = tf.function(
            self._serve_wav_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=WAV_BYTES)])
        self.waveform_features = tf.function(self.frontend.__call__, input_signature=[waveform_spec])
        self.serve_waveform_features = tf.function(
            lambda waveform: {FEATURES: self.frontend(waveform)}, input_signature=[waveform_spec])
        self.chunk_predictions = tf.function(
            self._chunk_predictions, input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=FEATURES)])

    def _serve_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        normalised = self.net(features, training=False)["predictions"]
        scaled = normalised * self._label_std + self._label_mean
        return {name: scaled[:, i] for i, name in enumerate(self.attributes)}

    def _chunk_predictions(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per attribute, the C chunk scores [batch, C] that ``serving_default`` averages (label scale)."""
        chunks = self.net(features, training=False)["chunk_predictions"] * self._label_std + self._label_mean
        return {name: chunks[..., i] for i, name in enumerate(self.attributes)}

    def _serve_waveform(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._serve_features(self.frontend(waveform)[tf.newaxis])

    def _serve_wav_bytes(self, wav_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = self.frontend.params.feature_shape
        features = tf.map_fn(lambda data: self.frontend(decode_wav(data, self.frontend.params.sample_rate)),
                             wav_bytes, fn_output_signature=tf.TensorSpec(shape, tf.float32))
        return self._serve_features(tf.ensure_shape(features, [None, *shape]))


def decode_wav(data: tf.Tensor, sample_rate: int) -> tf.Tensor:
    """A mono waveform [samples] from the bytes of a 16-bit PCM WAV file at ``sample_rate``."""
    audio, rate = tf.audio.decode_wav(data)
    check = tf.debugging.assert_equal(rate, tf.constant(sample_rate, tf.int32),
                                      message=f"{SERVE_WAV_BYTES} takes WAV files at {sample_rate} Hz")
    with tf.control_dependencies([check]):
        return tf.reduce_mean(audio, axis=1)


@dataclasses.dataclass(frozen=True)
class Contract:
    """What a loaded SavedModel serves: its attributes (in ``ATTRIBUTES`` order) and [C, m, n_mels]."""

    attributes: tuple[str, ...]
    feature_shape: tuple[int, int, int]


def read_contract(loaded) -> Contract:
    """Checks a ``tf.saved_model.load`` result against the serving contract.

    Raises ExportError naming the first departure (a missing signature, input or
    output, a wrong dtype or shape), so a predictor can refuse a model with a reason.
    """
    signatures = getattr(loaded, "signatures", {})
    missing = [name for name in (SERVING_DEFAULT, SERVE_WAVEFORM) if name not in signatures]
    if missing:
        raise ExportError(f"missing signature(s) {', '.join(missing)} (it has: {', '.join(signatures) or 'none'})")
    features_fn, waveform_fn = signatures[SERVING_DEFAULT], signatures[SERVE_WAVEFORM]
    spec = _only_input(features_fn, SERVING_DEFAULT, FEATURES)
    if spec.shape.rank != 4 or not all(isinstance(d, int) for d in spec.shape[1:]):
        raise ExportError(f"{SERVING_DEFAULT} input {FEATURES} has shape {spec.shape}, "
                          "expected [batch, C, m, n_mels] with C, m and n_mels fixed")
    feature_shape = tuple(spec.shape[1:])
    _check_spec(_only_input(waveform_fn, SERVE_WAVEFORM, WAVEFORM), [None], f"{SERVE_WAVEFORM} input {WAVEFORM}")
    outputs = features_fn.structured_outputs
    attributes = tuple(a for a in ATTRIBUTES if a in outputs)
    chunk_outputs = {f"{a}{CHUNKS_SUFFIX}" for a in attributes} & set(outputs)
    unknown = sorted(set(outputs) - set(attributes) - chunk_outputs)
    if not attributes or unknown:
        raise ExportError(f"{SERVING_DEFAULT} outputs {sorted(outputs)}; expected some of {list(ATTRIBUTES)} "
                          f"(and their {CHUNKS_SUFFIX} outputs) only")
    for name in attributes:
        _check_spec(outputs[name], [None], f"{SERVING_DEFAULT} output {name}")
    for name in chunk_outputs:
        _check_spec(outputs[name], [None, feature_shape[0]], f"{SERVING_DEFAULT} output {name}")
    waveform_outputs = waveform_fn.structured_outputs
    if set(waveform_outputs) != {*attributes, *chunk_outputs}:
        raise ExportError(f"{SERVE_WAVEFORM} outputs {sorted(waveform_outputs)}; expected "
                          f"{sorted([*attributes, *chunk_outputs])}")
    for name in attributes:
        _check_spec(waveform_outputs[name], [1], f"{SERVE_WAVEFORM} output {name}")
    for name in chunk_outputs:
        _check_spec(waveform_outputs[name], [1, feature_shape[0]], f"{SERVE_WAVEFORM} output {name}")
    if SERVE_WAV_BYTES in signatures:
        wav_fn = signatures[SERVE_WAV_BYTES]
        spec = _only_input(wav_fn, SERVE_WAV_BYTES, WAV_BYTES)
        if spec.dtype != tf.string or spec.shape.as_list() != [None]:
            raise ExportError(f"{SERVE_WAV_BYTES} input {WAV_BYTES} is {spec.dtype.name} {spec.shape}, "
                              "expected string [None]")
        if set(wav_fn.structured_outputs) != set(outputs):
            raise ExportError(f"{SERVE_WAV_BYTES} outputs {sorted(wav_fn.structured_outputs)}; expected "
                              f"those of {SERVING_DEFAULT}, {sorted(outputs)}")
        for name, output in outputs.items():
            _check_spec(wav_fn.structured_outputs[name], output.shape.as_list(), f"{SERVE_WAV_BYTES} output {name}")
    if SERVE_WAVEFORM_FEATURES in signatures:
        features_of = signatures[SERVE_WAVEFORM_FEATURES]
        _check_spec(_only_input(features_of, SERVE_WAVEFORM_FEATURES, WAVEFORM), [None],
                    f"{SERVE_WAVEFORM_FEATURES} input {WAVEFORM}")
        if set(features_of.structured_outputs) != {FEATURES}:
            raise ExportError(f"{SERVE_WAVEFORM_FEATURES} outputs {sorted(features_of.structured_outputs)}; "
                              f"expected ['{FEATURES}']")
        _check_spec(features_of.structured_outputs[FEATURES], list(feature_shape),
                    f"{SERVE_WAVEFORM_FEATURES} output {FEATURES}")
    return Contract(attributes, feature_shape)


def _only_input(function, signature: str, name: str) -> tf.TensorSpec:
    args, kwargs = function.structured_input_signature
    if args or set(kwargs) != {name}:
        raise ExportError(f"{signature} takes {sorted(kwargs)}, expected exactly [{name!r}]")
    return kwargs[name]


def _check_spec(spec: tf.TensorSpec, shape: list, what: str) -> None:
    if spec.dtype != tf.float32 or spec.shape.as_list() != shape:
        raise ExportError(f"{what} is {spec.dtype.name} {spec.shape}, expected float32 {shape}")


def export_saved_model(
    net: EmoClusterNet,
    metadata: Metadata,
    attributes: Sequence[str],
    path: str,
    record_features: np.ndarray,
    data_dir: str,
) -> dict[str, float]:
    """Writes the SavedModel to ``path``, re-loads it and checks it; returns the check's figures.

    ``record_features`` [N, C, m, F] are features read from the records (e.g. a few dev
    sentences); ``data_dir`` is the pipeline output, whose ``probes.npz`` gives the real
    utterances. Data written before probes existed falls back to silence and a short
    clip for the waveform check, with a warning.
    """
    from pipeline.probe_file import FILENAME as PROBES_FILE, load_probes

    module = EmotionServing(net, metadata, attributes)
    write_saved_model(module, path)
    probes = load_probes(data_dir)
    if not probes:
        print(f"warning: {data_dir} has no waveform probes ({PROBES_FILE} is missing: an older pipeline "
              "wrote the data, or empty: the first inputs of its probe split were all rejected); "
              "serve_waveform is checked on silence and a short clip only. Re-run the pipeline to check "
              "it on real utterances.", file=sys.stderr, flush=True)
    return verify_saved_model(path, module, record_features, probes or [])


def write_saved_model(module: EmotionServing, path: str) -> None:
    """Saves ``module`` with its four signatures and its metadata asset (not yet verified)."""
    tf.saved_model.save(module, path, signatures={
        SERVING_DEFAULT: module.serve_features, SERVE_WAVEFORM: module.serve_waveform,
        SERVE_WAV_BYTES: module.serve_wav_bytes, SERVE_WAVEFORM_FEATURES: module.serve_waveform_features})
    tf.io.gfile.makedirs(posixpath.dirname(posixpath.join(path, METADATA_ASSET)))
    with tf.io.gfile.GFile(posixpath.join(path, METADATA_ASSET), "w") as handle:
        handle.write(module.metadata_json.numpy().decode())


def verify_saved_model(path: str, module: EmotionServing, record_features: np.ndarray,
                       probes: Sequence[Probe]) -> dict[str, float]:
    """Loads ``path`` and checks it against ``module`` and the pipeline; ExportError on any miss.

    1. The contract: signature names, inputs, outputs, dtypes and shapes.
    2. ``serving_default`` on record features equals the in-memory network (1e-4).
    3. Every probe: ``serve_waveform_features`` on its waveform gives the pipeline's features
       (1e-3), ``serve_waveform`` the predictions ``serving_default`` gives on those features
       (1e-4), and ``serve_wav_bytes`` on the probe as a 16-bit WAV file the predictions
       ``serve_waveform`` gives on the decoded samples (1e-4).
    4. Silence and a short clip: the same outputs as the in-memory module, all finite.
    """
    loaded = load_saved_model(path)
    contract = read_contract(loaded)
    params = module.frontend.params
    if set(contract.attributes) != set(module.attributes) or contract.feature_shape != params.feature_shape:
        raise ExportError(f"the SavedModel serves {contract.attributes} on {contract.feature_shape}, the "
                          f"trained model {module.attributes} on {params.feature_shape}")
    missing = [name for name in (SERVE_WAV_BYTES, SERVE_WAVEFORM_FEATURES) if name not in loaded.signatures]
    if missing:
        raise ExportError(f"missing signature(s) {', '.join(missing)} (it has: {', '.join(loaded.signatures)})")
    features_fn = loaded.signatures[SERVING_DEFAULT]
    waveform_fn = loaded.signatures[SERVE_WAVEFORM]
    wav_fn = loaded.signatures[SERVE_WAV_BYTES]
    features_of = loaded.signatures[SERVE_WAVEFORM_FEATURES]
    attributes = module.attributes
    rate = params.sample_rate

    batch = tf.constant(record_features, tf.float32)
    record_error = _prediction_error(features_fn(features=batch), module.serve_features(batch), attributes)
    _check(record_error, PREDICTION_TOLERANCE, f"{SERVING_DEFAULT} on {batch.shape[0]} record(s) differs "
           "from the trained network")

    feature_error = prediction_error = wav_error = 0.0
    for probe in probes:
        waveform = tf.constant(probe.waveform, tf.float32)
        outputs = waveform_fn(waveform=waveform)
        served = features_of(waveform=waveform)[FEATURES]
        if served.shape != probe.features.shape:
            raise ExportError(f"probe {probe.utt_id}: serve_waveform gave features {served.shape}, "
                              f"the pipeline {probe.features.shape}")
        error = _max_difference(served, probe.features)
        _check(error, FEATURE_TOLERANCE, f"probe {probe.utt_id}: serve_waveform features differ from the pipeline's")
        _check(_max_difference(loaded.waveform_features(waveform), served), SAME_GRAPH_TOLERANCE,
               f"probe {probe.utt_id}: waveform_features differs from {SERVE_WAVEFORM_FEATURES}")
        feature_error = max(feature_error, error)
        error = _prediction_error(outputs, features_fn(features=probe.features[np.newaxis]), attributes)
        _check(error, PREDICTION_TOLERANCE, f"probe {probe.utt_id}: serve_waveform predictions differ from "
               f"{SERVING_DEFAULT} on the pipeline's features")
        prediction_error = max(prediction_error, error)
        wav = tf.audio.encode_wav(waveform[:, tf.newaxis], rate)
        error = _prediction_error(wav_fn(wav_bytes=wav[tf.newaxis]), waveform_fn(waveform=decode_wav(wav, rate)),
                                  attributes)
        _check(error, PREDICTION_TOLERANCE, f"probe {probe.utt_id}: {SERVE_WAV_BYTES} differs from "
               f"{SERVE_WAVEFORM} on the same samples")
        wav_error = max(wav_error, error)

    short = int(rate * SHORT_CLIP_SECONDS)
    for name, waveform in (("silence", np.zeros(rate, np.float32)),
                           ("a short clip", 0.1 * np.sin(np.arange(short, dtype=np.float32) / 5.0))):
        got = {**waveform_fn(waveform=tf.constant(waveform)), **features_of(waveform=tf.constant(waveform))}
        if not all(np.all(np.isfinite(got[key].numpy())) for key in (*attributes, FEATURES)):
            raise ExportError(f"serve_waveform on {name} gave non-finite outputs")
        expected = module.serve_waveform(tf.constant(waveform))
        _check(_max_difference(got[FEATURES], module.waveform_features(tf.constant(waveform))), FEATURE_TOLERANCE,
               f"serve_waveform features on {name} differ from the trained model's")
        _check(_prediction_error(got, expected, attributes), PREDICTION_TOLERANCE,
               f"serve_waveform on {name} differs from the trained model")
    return {"max_abs_difference": record_error, "probe_sentences": int(batch.shape[0]),
            "waveform_probes": len(probes), "probe_feature_difference": feature_error,
            "probe_prediction_difference": prediction_error, "probe_wav_bytes_difference": wav_error}


def _max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def _prediction_error(got: Mapping[str, tf.Tensor], expected: Mapping[str, tf.Tensor],
                      attributes: Sequence[str]) -> float:
    return max(_max_difference(got[a], expected[a]) for a in attributes)


def _check(error: float, tolerance: float, what: str) -> None:
    """NaN fails too: ``not error <= tolerance``."""
    if not error <= tolerance:
        raise ExportError(f"{what} by {error:.3g} (tolerance {tolerance:g})")
