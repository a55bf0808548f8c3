"""EmoClusterNet: every model variant as one composition of encoder, temporal net and heads.

Variants differ only in knobs (temporal net kind, cluster head or not, attributes per
model), never in copied code (DESIGN.md, "Variants as composition"). All shapes are
known at construction, so the model builds itself and is ready for optimizers,
parameter counts and weight loading without a forward pass.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from model.nets.encoder import VGGChunkEncoder
from model.nets.heads import ClusterHead, EmotionHead
from model.nets.temporal import build_temporal_net
from model.nets.variants import PAPER_CLUSTERS
from pipeline.params import FeatureParams


class ChunkNet:
    """What every network over chunked features shares (a mix-in for ``keras.Model``s):
    construction from the pipeline's ``FeatureParams`` and the paper's two optimiser
    groups, the VGG ``encoder`` (SGD lr 0.001) and the ``output_parts`` (Adam lr 0.0005)."""

    encoder: VGGChunkEncoder

    @classmethod
    def for_params(cls, params: FeatureParams, **kwargs: Any) -> Any:
        """The network for features produced with ``params`` (C, m and n_mels from there)."""
        c, m, n_mels = params.feature_shape
        return cls(c, m, n_mels, **kwargs)

    def output_parts(self) -> list[keras.Layer | None]:
        """The layers after the encoder (None for an absent part)."""
        raise NotImplementedError

    def encoder_variables(self) -> list[keras.Variable]:
        return list(self.encoder.trainable_variables)

    def output_variables(self) -> list[keras.Variable]:
        return [v for part in self.output_parts() if part is not None for v in part.trainable_variables]


@keras.saving.register_keras_serializable(package="deepemocluster")
class EmoClusterNet(ChunkNet, keras.Model):
    """[B, C, m, n_mels] chunked features -> dict of per-chunk and sentence outputs.

    Args:
      num_chunks, chunk_frames, n_mels: C, m and mel bins of the input.
      temporal: temporal net over the chunk embeddings: none, gru, cnn or trans.
      num_clusters: Q outputs of the cluster head; None or 0 gives the CNN-regressor
        baseline, which has no cluster head.
      num_attributes: A emotion outputs (1 as the reference, 3 for all attributes).
      encoder_dropout: dropout after the encoder's Dense (0.5 in the reference's
        temporal-net models; its Temp-Triplet model has none).
      units: width of the chunk embeddings and of both heads' hidden layers.
      precision: ``float32`` (the reference) or ``mixed_bfloat16``: the encoder's conv
        blocks in bfloat16 with float32 variables (``VGGChunkEncoder``); the rest is
        float32 either way.

    ``call`` returns ``embeddings`` h [B, C, units] (encoder output, for the triplet
    loss), ``hidden`` z [B, C, units] (temporal net output, equal to h for ``none``),
    ``chunk_predictions`` [B, C, A] and ``predictions`` [B, A] (mean over chunks); with a
    cluster head also ``cluster_features`` [B, C, units] (pre-activation, what K-means
    clusters) and ``cluster_logits`` [B, C, Q].
    """

    def __init__(self, num_chunks: int, chunk_frames: int, n_mels: int, temporal: str = "none",
                 num_clusters: int | None = PAPER_CLUSTERS, num_attributes: int = 1, encoder_dropout: float = 0.5,
                 units: int = 256, precision: str = "float32", name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_chunks = num_chunks
        self.chunk_frames = chunk_frames
        self.n_mels = n_mels
        self.temporal_kind = temporal
        self.num_attributes = num_attributes
        self.encoder_dropout = encoder_dropout
        self.units = units
        self.precision = precision
        self.encoder = VGGChunkEncoder(units, encoder_dropout, dtype=precision, name="encoder")
        self.temporal = build_temporal_net(temporal, units)
        self.cluster_head = ClusterHead(num_clusters, units, name="cluster_head") if num_clusters else None
        self.emotion_head = EmotionHead(num_attributes, units, name="emotion_head")
        self.build((None, num_chunks, chunk_frames, n_mels))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        embedding_shape = (input_shape[0], input_shape[1], self.units)
        self.encoder.build(input_shape)
        self.temporal.build(embedding_shape)
        if self.cluster_head is not None:
            self.cluster_head.build(embedding_shape)
        self.emotion_head.build(embedding_shape)

    def call(self, features: Any, training: bool = False) -> dict[str, Any]:
        embeddings = self.encoder(features, training=training)
        hidden = self.temporal(embeddings, training=training)
        chunk_predictions = self.emotion_head(hidden)
        outputs = {
            "embeddings": embeddings,
            "hidden": hidden,
            "chunk_predictions": chunk_predictions,
            "predictions": ops.mean(chunk_predictions, axis=1),
        }
        if self.cluster_head is not None:
            outputs["cluster_features"], outputs["cluster_logits"] = self.cluster_head(hidden)
        return outputs

    @property
    def num_clusters(self) -> int | None:
        """Current Q (it follows ``cluster_head.reset_classifier``), None without a head."""
        return None if self.cluster_head is None else self.cluster_head.num_clusters

    def output_parts(self) -> list[keras.Layer | None]:
        """The temporal net and both heads."""
        return [self.temporal, self.cluster_head, self.emotion_head]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_chunks": self.num_chunks, "chunk_frames": self.chunk_frames, "n_mels": self.n_mels,
            "temporal": self.temporal_kind, "num_clusters": self.num_clusters,
            "num_attributes": self.num_attributes, "encoder_dropout": self.encoder_dropout, "units": self.units,
            "precision": self.precision,
        }
