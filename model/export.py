"""SavedModel export: features and waveform signatures, then a check of what was written.

As YAMNet, the exported model carries its own feature front end, so applications feed
it 16 kHz waveforms without this project installed. The export is only reported done
after the SavedModel is loaded back and checked on known inputs: pipeline features,
silence and a very short clip.
"""

from __future__ import annotations

import json
import posixpath
from typing import Sequence

import numpy as np
import tensorflow as tf

from model.frontend import WaveformFrontend
from model.network import EmoClusterNet
from pipeline.metadata import Metadata

SERVING_DEFAULT = "serving_default"
SERVE_WAVEFORM = "serve_waveform"
PREDICTION_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The written SavedModel does not reproduce the trained model."""


class EmotionServing(tf.Module):
    """What the SavedModel holds: the network, the front end, label statistics, settings."""

    def __init__(self, net: EmoClusterNet, metadata: Metadata, attributes: Sequence[str]):
        super().__init__(name="deepemocluster")
        self.net = net
        self.frontend = WaveformFrontend(metadata.params, metadata.feature_mean, metadata.feature_std)
        self.attributes = tuple(attributes)
        mean, std = metadata.label_stats.vectors(attributes)
        self._label_mean = tf.constant(mean)
        self._label_std = tf.constant(std)
        self.metadata_json = tf.Variable(
            json.dumps({"attributes": list(attributes), **metadata.to_dict()}), trainable=False, name="metadata_json")
        shape = metadata.params.feature_shape
        self.serve_features = tf.function(
            self._serve_features, input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="features")])
        self.serve_waveform = tf.function(
            self._serve_waveform, input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])

    def _serve_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        normalised = self.net(features, training=False)["predictions"]
        scaled = normalised * self._label_std + self._label_mean
        return {name: scaled[:, i] for i, name in enumerate(self.attributes)}

    def _serve_waveform(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        features = self.frontend(waveform)
        return {**self._serve_features(features[tf.newaxis]), "features": features}


def export_saved_model(
    net: EmoClusterNet,
    metadata: Metadata,
    attributes: Sequence[str],
    path: str,
    probe_features: np.ndarray,
) -> dict[str, float]:
    """Writes the SavedModel to ``path``, re-loads it and checks it; returns the check's figures.

    ``probe_features`` [N, C, m, F] are real pipeline features (e.g. a few dev sentences):
    the reloaded ``serving_default`` must reproduce the in-memory network on them.
    """
    module = EmotionServing(net, metadata, attributes)
    tf.saved_model.save(module, path, signatures={
        SERVING_DEFAULT: module.serve_features, SERVE_WAVEFORM: module.serve_waveform})
    tf.io.gfile.makedirs(posixpath.join(path, "assets.extra"))
    with tf.io.gfile.GFile(posixpath.join(path, "assets.extra", "metadata.json"), "w") as handle:
        handle.write(module.metadata_json.numpy().decode())
    return verify_saved_model(path, module, probe_features)


def verify_saved_model(path: str, module: EmotionServing, probe_features: np.ndarray) -> dict[str, float]:
    """Loads ``path`` and compares it with ``module`` on real features, silence and a short clip."""
    loaded = tf.saved_model.load(path)
    features_fn = loaded.signatures[SERVING_DEFAULT]
    waveform_fn = loaded.signatures[SERVE_WAVEFORM]
    probe = tf.constant(probe_features, tf.float32)
    expected = module.serve_features(probe)
    got = features_fn(features=probe)
    worst = max(float(np.max(np.abs(got[a].numpy() - expected[a].numpy()))) for a in module.attributes)
    if not worst <= PREDICTION_TOLERANCE:
        raise ExportError(f"reloaded serving_default differs from the trained model by {worst:.3g}")
    rate = module.frontend.params.sample_rate
    for name, waveform in (("silence", np.zeros(rate, np.float32)),
                           ("short clip", 0.1 * np.sin(np.arange(rate // 20, dtype=np.float32) / 5.0))):
        outputs = waveform_fn(waveform=tf.constant(waveform))
        if outputs["features"].shape != tuple(module.frontend.params.feature_shape):
            raise ExportError(f"serve_waveform on {name} gave features of shape {outputs['features'].shape}")
        if not all(np.all(np.isfinite(outputs[a].numpy())) for a in module.attributes):
            raise ExportError(f"serve_waveform on {name} gave non-finite predictions")
    return {"max_abs_difference": worst, "probe_sentences": int(probe.shape[0])}
