"""Temporal nets Psi over the C chunk embeddings of a sentence (paper Eq. 5, Sec. 4.3).

Every net maps [B, C, units] -> [B, C, units], so the heads never know which one ran.
Initialisation reproduces the reference's PyTorch modules after its init loop
(REFERENCE.md): convs and fully connected layers as the encoder, the GRU with PyTorch's
U(-1/sqrt(h), 1/sqrt(h)), the attention in-projection with Xavier-uniform.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from model.nets.encoder import BN_EPSILON, conv_bn, dense_initializer

TEMPORAL_KINDS: tuple[str, ...] = ("none", "gru", "cnn", "trans")


def build_temporal_net(kind: str, units: int = 256) -> keras.layers.Layer:
    """The temporal net ``kind`` (none|gru|cnn|trans) for ``units``-wide chunk embeddings."""
    if kind == "none":
        return keras.layers.Identity(name="temporal")
    if kind == "gru":
        return temporal_gru(units)
    if kind == "cnn":
        return TemporalCNN(name="temporal")
    if kind == "trans":
        return TemporalTransformer(units, name="temporal")
    raise ValueError(f"unknown temporal net {kind!r}; choose one of {TEMPORAL_KINDS}")


def temporal_gru(units: int = 256) -> keras.layers.Bidirectional:
    """Temp-GRU: one bidirectional GRU, units/2 per direction, concatenated.

    ``reset_after=True`` is PyTorch's GRU formulation (separate input and recurrent biases).
    """
    per_direction = units // 2
    bound = 1.0 / math.sqrt(per_direction)

    def uniform() -> keras.initializers.Initializer:
        return keras.initializers.RandomUniform(-bound, bound)

    gru = keras.layers.GRU(
        per_direction, activation="tanh", return_sequences=True, reset_after=True,
        kernel_initializer=uniform(), recurrent_initializer=uniform(), bias_initializer=uniform(),
    )
    return keras.layers.Bidirectional(gru, merge_mode="concat", name="temporal")


@keras.saving.register_keras_serializable(package="deepemocluster")
class TemporalCNN(keras.layers.Layer):
    """Temp-CNN: the C x units map as a 1-channel image, two Conv5x5 + BN + ReLU, dropout."""

    def __init__(self, filters: int = 16, kernel_size: int = 5, dropout: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.dropout_rate = dropout
        self.blocks = [conv_bn(filters, kernel_size, name="conv1"), conv_bn(1, kernel_size, name="conv2")]
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = 1
        for conv, norm in self.blocks:
            conv.build((*input_shape, channels))
            channels = conv.filters
            norm.build((*input_shape, channels))

    def call(self, embeddings: Any, training: bool = False) -> Any:
        x = ops.expand_dims(embeddings, -1)
        for conv, norm in self.blocks:
            x = ops.relu(norm(conv(x), training=training))
        return self.dropout(ops.squeeze(x, -1), training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "dropout": self.dropout_rate}


def sinusoidal_encoding(length: Any, depth: int) -> Any:
    """[length, depth] positional encoding of "Attention is all you need": sin on even, cos on odd dims."""
    positions = ops.cast(ops.arange(length), "float32")[:, None]
    rates = ops.exp(ops.cast(ops.arange(0, depth, 2), "float32") * (-math.log(10000.0) / depth))
    angles = positions * rates[None, :]
    return ops.reshape(ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1), (length, depth))


@keras.saving.register_keras_serializable(package="deepemocluster")
class TemporalTransformer(keras.layers.Layer):
    """Temp-Trans: sinusoidal positions + one post-LN single-head transformer encoder layer.

    As PyTorch's ``TransformerEncoderLayer(d_model, nhead=1, dim_feedforward, dropout)``:
    x = LN(x + Drop(SelfAttn(x))); x = LN(x + Drop(W2 Drop(ReLU(W1 x)))), with dropout also
    on the attention weights. Written out rather than ``keras.layers.MultiHeadAttention``
    because that layer shares one initialiser between the in- and out-projections, and the
    reference initialises them differently.
    """

    def __init__(self, units: int = 256, feed_forward: int = 256, dropout: float = 0.3,
                 epsilon: float = BN_EPSILON, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.feed_forward = feed_forward
        self.dropout_rate = dropout
        self.epsilon = epsilon
        xavier = math.sqrt(6.0 / (units + 3 * units))
        self.in_projection = keras.layers.Dense(
            3 * units, kernel_initializer=keras.initializers.RandomUniform(-xavier, xavier), name="in_projection",
        )
        self.out_projection = keras.layers.Dense(units, kernel_initializer=dense_initializer(), name="out_projection")
        self.ff_in = keras.layers.Dense(feed_forward, activation="relu", kernel_initializer=dense_initializer(),
                                        name="ff_in")
        self.ff_out = keras.layers.Dense(units, kernel_initializer=dense_initializer(), name="ff_out")
        self.norm1 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm2")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for layer in (self.in_projection, self.out_projection, self.ff_in, self.norm1, self.norm2):
            layer.build(input_shape)
        self.ff_out.build((*input_shape[:-1], self.feed_forward))

    def call(self, embeddings: Any, training: bool = False) -> Any:
        chunks = ops.shape(embeddings)[1]
        x = embeddings + ops.cast(sinusoidal_encoding(chunks, self.units), embeddings.dtype)
        query, key, value = ops.split(self.in_projection(x), 3, axis=-1)
        scores = ops.einsum("bqd,bkd->bqk", query, key) / math.sqrt(self.units)
        weights = self.dropout(ops.softmax(scores, axis=-1), training=training)
        attended = self.out_projection(ops.einsum("bqk,bkd->bqd", weights, value))
        x = self.norm1(x + self.dropout(attended, training=training))
        hidden = self.dropout(self.ff_in(x), training=training)
        return self.norm2(x + self.dropout(self.ff_out(hidden), training=training))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(), "units": self.units, "feed_forward": self.feed_forward,
            "dropout": self.dropout_rate, "epsilon": self.epsilon,
        }
