"""The SavedModel module of a converted release: the authors' three networks behind one serving contract.

Kept apart from ``model.convert_reference`` because these are TensorFlow classes: that
command's ``--help``, and the checks of ``trainer.py --init-from``, need not import TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import tensorflow as tf

from model.serving.export import EmotionServing
from pipeline.params import ATTRIBUTES

if TYPE_CHECKING:
    from model.nets.emocluster_net import EmoClusterNet
    from pipeline.metadata import Metadata


class ReleaseNets(tf.Module):
    """The three single-attribute networks of a release behind one call, as ``EmotionServing`` needs."""

    def __init__(self, nets: Mapping[str, EmoClusterNet]):
        super().__init__(name="release_nets")
        self.attributes = tuple(a for a in ATTRIBUTES if a in nets)
        self.nets = {a: nets[a] for a in self.attributes}
        # Positional variable lists (Keras layers in lists are invisible to checkpoints'
        # object graph): what ``load_release_weights`` reads to fine-tune from a release.
        self.weights = {a: part_checkpoints(net) for a, net in self.nets.items()}

    def __call__(self, features: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        outputs = {a: self.nets[a](features, training=training) for a in self.attributes}
        merged = {key: tf.concat([outputs[a][key] for a in self.attributes], axis=-1)
                  for key in ("predictions", "chunk_predictions")}
        for a in self.attributes:
            for key in ("embeddings", "cluster_logits", "chunk_predictions"):
                merged[f"{a}_{key}"] = outputs[a][key]
        return merged


WEIGHT_PARTS = ("encoder", "temporal", "cluster_hidden", "cluster_classifier", "emotion_head")


def part_checkpoints(net: EmoClusterNet) -> tf.train.Checkpoint:
    """A net's variables by part and position, so a differently configured net can take some parts."""
    head = net.cluster_head
    parts = {"encoder": net.encoder, "temporal": net.temporal, "cluster_hidden": head.hidden,
             "cluster_classifier": head.classifier, "emotion_head": net.emotion_head}
    return tf.train.Checkpoint(**{name: _positional(parts[name].weights) for name in WEIGHT_PARTS})


def _positional(variables: Sequence[Any]) -> tf.train.Checkpoint:
    """Variables as children ``v0000``, ``v0001``...: both sides build the part with this code, so
    positions match (``weights``, unlike ``variables``, leaves out dropout seed states)."""
    return tf.train.Checkpoint(**{f"v{i:04d}": v for i, v in enumerate(variables)})


class ReleaseServing(EmotionServing):
    """``EmotionServing`` over a release's three networks: adds the chunk-level outputs.

    ``serving_default`` also returns ``<attribute>_chunks`` [batch, C] on the 1..7 scale;
    the restored function ``chunk_outputs`` (features -> per-attribute ``embeddings``,
    ``cluster_logits`` and normalised ``chunk_predictions``) exposes what the authors'
    networks compute, for parity checks.
    """

    def __init__(self, nets: Mapping[str, EmoClusterNet], metadata: Metadata):
        release = ReleaseNets(nets)
        super().__init__(release, metadata, release.attributes)
        self.chunk_outputs = tf.function(
            self._chunk_outputs,
            input_signature=[tf.TensorSpec([None, *metadata.params.feature_shape], tf.float32, name="features")])

    def _serve_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self.net(features, training=False)
        scaled = outputs["predictions"] * self._label_std + self._label_mean
        chunks = outputs["chunk_predictions"] * self._label_std + self._label_mean
        return {**{a: scaled[:, i] for i, a in enumerate(self.attributes)},
                **{f"{a}_chunks": chunks[..., i] for i, a in enumerate(self.attributes)}}

    def _chunk_outputs(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self.net(features, training=False)
        return {key: value for key, value in outputs.items() if key.split("_", 1)[0] in self.attributes}
