"""Per-chunk output heads: the cluster classifier f_cltr and the emotion regressor f_emo.

Both are applied to every chunk's representation ([B, C, units] -> [B, C, out]); the
sentence-level prediction is the network's job (mean over chunks).
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
from keras import ops

from model.nets.encoder import dense_initializer


def _dense(units: int, name: str, activation: str | None = None) -> keras.layers.Dense:
    return keras.layers.Dense(units, activation=activation, kernel_initializer=dense_initializer(),
                              bias_initializer="zeros", name=name)


@keras.saving.register_keras_serializable(package="deepemocluster")
class ClusterHead(keras.layers.Layer):
    """Dense(units) -> ReLU -> Dense(Q) cluster logits.

    ``call`` returns ``(features, logits)``: ``features`` is the hidden Dense output
    *before* its ReLU, the point K-means clusters (as DeepCluster, which strips the ReLU
    before computing features). The last Dense is replaced by a fresh one before every
    clustering stage (``reset_classifier``), because cluster ids change meaning.
    """

    def __init__(self, num_clusters: int, units: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_clusters = num_clusters
        self.units = units
        self.hidden = _dense(units, "hidden")
        self.classifier = _dense(num_clusters, "classifier")
        self._reset_seed = keras.random.SeedGenerator(name="classifier_reset_seed")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.hidden.build(input_shape)
        self.classifier.build((*input_shape[:-1], self.units))

    def call(self, inputs: Any) -> tuple[Any, Any]:
        features = self.hidden(inputs)
        return features, self.classifier(ops.relu(features))

    def reset_classifier(self, num_clusters: int | None = None) -> None:
        """Fresh classifier weights before a clustering stage (cluster ids changed meaning).

        With the same Q the existing variables are re-initialised in place, so optimizers
        built on them and traced train steps stay valid (what the trainer does every
        stage). A different Q needs a new layer with new variables: an optimizer that
        tracked the old ones must then be rebuilt and a traced train step retraced.
        """
        if num_clusters is None or num_clusters == self.num_clusters:
            kernel, bias = self.classifier.kernel, self.classifier.bias
            kernel.assign(dense_initializer(self._reset_seed)(kernel.shape))
            bias.assign(ops.zeros(bias.shape))
            return
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {num_clusters}")
        self.num_clusters = num_clusters
        fresh = _dense(self.num_clusters, "classifier")
        if self.built:
            with contextlib.ExitStack() as scopes:
                for part in self.path.split("/"):
                    scopes.enter_context(keras.name_scope(part))
                fresh.build((None, self.units))
        # Keras locks a built layer's tracker against new sub-layers; swapping the tracked
        # entry in place keeps ``weights`` and saving in sync without unlocking it.
        self._tracker.replace_tracked_value("layers", self.classifier, fresh)
        self.classifier = fresh

    @property
    def classifier_variables(self) -> list[keras.Variable]:
        """Trainable variables of the current last Dense (they change at every reset)."""
        return list(self.classifier.trainable_variables)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[tuple[int | None, ...], ...]:
        return (*input_shape[:-1], self.units), (*input_shape[:-1], self.num_clusters)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_clusters": self.num_clusters, "units": self.units}


@keras.saving.register_keras_serializable(package="deepemocluster")
class EmotionHead(keras.layers.Layer):
    """Dense(units) + ReLU -> Dense(A): per-chunk attribute scores (A = 1 or 3)."""

    def __init__(self, num_attributes: int = 1, units: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_attributes = num_attributes
        self.units = units
        self.hidden = _dense(units, "hidden", activation="relu")
        self.output_layer = _dense(num_attributes, "output")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.hidden.build(input_shape)
        self.output_layer.build((*input_shape[:-1], self.units))

    def call(self, inputs: Any) -> Any:
        return self.output_layer(self.hidden(inputs))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.num_attributes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_attributes": self.num_attributes, "units": self.units}
