"""The training model of paper Algorithm 1: Eq. 3 and Eq. 7 in a custom ``train_step``.

One class serves every variant: the variant's knobs (model.variants) decide which loss
terms exist, and a network may add its own through the ``auxiliary_losses`` it returns
when training (the reconstruction baselines' terms, model.reconstruction). Following the
paper (Sec. 4.3), SGD steps the VGG encoder and Adam the output layers, on disjoint
variable sets; the cluster classifier gets its own Adam whose state is reset together
with the classifier's weights before every clustering stage (DeepCluster re-creates that
layer because cluster ids change meaning between stages).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from model.losses import ccc_loss, cluster_cross_entropy, temporal_triplet_loss
from model.network import EmoClusterNet
from model.reconstruction import ReconstructionNet
from model.train_config import TrainConfig

SUPERVISED = "supervised"
UNSUPERVISED = "unsupervised"


@keras.saving.register_keras_serializable(package="deepemocluster")
class DeepEmoCluster(keras.Model):
    """Wraps an ``EmoClusterNet`` or a ``ReconstructionNet`` with the two training stages of Algorithm 1.

    Batches are dicts with ``features`` [B, C, m, F], ``targets`` [B, A] (normalised
    labels of the trained attributes), and ``cluster_labels`` [B, C] for clustering
    variants. Stage II (``supervised``) minimises CE + (1 - CCC) (+ gamma * triplet);
    stage I (``unsupervised``) minimises CE (+ gamma * triplet) and leaves the emotion
    head untouched. Both stages add every term of the network's ``auxiliary_losses``
    (named up front by its ``auxiliary_loss_names``), each tracked as a metric.
    """

    def __init__(self, config: TrainConfig, net: EmoClusterNet | ReconstructionNet, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.variant = config.variant
        self.net = net
        self.encoder_optimizer = keras.optimizers.SGD(config.encoder_lr, name="encoder_sgd")
        self.output_optimizer = keras.optimizers.Adam(config.output_lr, name="output_adam")
        self.classifier_optimizer = keras.optimizers.Adam(config.output_lr, name="classifier_adam")
        # Built up front with every variable each will ever step: stage I applies to a subset.
        self.encoder_optimizer.build(net.encoder_variables())
        self.output_optimizer.build(self._output_variables())
        if self.variant.clustering:
            self.classifier_optimizer.build(net.cluster_head.classifier_variables)
        self.triplet_rng = tf.random.Generator.from_seed(config.seed + 7919)
        self.stage = SUPERVISED
        self._stage_functions: dict[str, object] = {}
        names = ["loss"]
        if self.variant.clustering:
            names.append("cluster_ce")
        names.append("ccc_loss")
        if self.variant.triplet:
            names.append("triplet")
        names.extend(getattr(net, "auxiliary_loss_names", ()))
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # The net's variables exist (the optimizers were built on them); without this, Keras
        # under a tf.distribute strategy would build the wrapper by calling it on a batch dict.
        self.built = True

    def call(self, features, training=False):
        return self.net(features, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def set_stage(self, stage: str) -> None:
        """Switches loss terms and trained variables; keeps one traced function per stage."""
        if stage not in (SUPERVISED, UNSUPERVISED):
            raise ValueError(f"unknown stage {stage!r}")
        if stage != self.stage:
            self._stage_functions[self.stage] = self.train_function
            self.stage = stage
            self.train_function = self._stage_functions.get(stage)

    def reset_cluster_classifier(self) -> None:
        """Fresh classifier weights and optimizer state before a clustering stage."""
        self.net.cluster_head.reset_classifier()
        for variable in self.classifier_optimizer.variables:
            variable.assign(tf.zeros_like(variable))

    def _output_variables(self) -> list:
        """Output-layer variables stepped by Adam: temporal net and heads, minus the classifier."""
        classifier = {id(v) for v in self.net.cluster_head.classifier_variables} if self.variant.clustering else set()
        return [v for v in self.net.output_variables() if id(v) not in classifier]

    def _variable_groups(self):
        classifier = self.net.cluster_head.classifier_variables if self.variant.clustering else []
        frozen = set()
        if self.stage == UNSUPERVISED:
            frozen = {id(v) for v in self.net.emotion_head.trainable_variables}
        output = [v for v in self._output_variables() if id(v) not in frozen]
        groups = [(self.encoder_optimizer, self.net.encoder_variables()), (self.output_optimizer, output)]
        if classifier:
            groups.append((self.classifier_optimizer, classifier))
        return groups

    def _loss_terms(self, data, outputs, training: bool) -> dict[str, tf.Tensor]:
        terms = {}
        if self.variant.clustering:
            terms["cluster_ce"] = cluster_cross_entropy(data["cluster_labels"], outputs["cluster_logits"])
        if self.stage == SUPERVISED or not training:
            terms["ccc_loss"] = ccc_loss(*self._ccc_pairs(data["targets"], outputs))
        if self.variant.triplet:
            terms["triplet"] = self.config.triplet_weight * temporal_triplet_loss(
                outputs["embeddings"], window=self.config.triplet_window,
                margin=self.config.triplet_margin, per_sentence=self.config.triplets_per_sentence,
                generator=self.triplet_rng)
        terms.update(outputs.get("auxiliary_losses", {}))
        return terms

    def _ccc_pairs(self, targets: tf.Tensor, outputs) -> tuple[tf.Tensor, tf.Tensor]:
        """Chunk level as the reference (every chunk carries its sentence label) or sentence level."""
        if self.config.ccc_level == "sentence":
            return targets, outputs["predictions"]
        chunk = outputs["chunk_predictions"]
        attributes = tf.shape(chunk)[-1]
        repeated = tf.broadcast_to(targets[:, None, :], tf.shape(chunk))
        return tf.reshape(repeated, [-1, attributes]), tf.reshape(chunk, [-1, attributes])

    def train_step(self, data):
        groups = self._variable_groups()
        variables = [v for _, group in groups for v in group]
        with tf.GradientTape() as tape:
            outputs = self.net(data["features"], training=True)
            terms = self._loss_terms(data, outputs, training=True)
            loss = tf.add_n(list(terms.values()))
        gradients = tape.gradient(loss, variables)
        start = 0
        for optimizer, group in groups:
            optimizer.apply(gradients[start:start + len(group)], group)
            start += len(group)
        return self._update_trackers(loss, terms)

    def test_step(self, data):
        outputs = self.net(data["features"], training=False)
        terms = self._loss_terms(data, outputs, training=False)
        return self._update_trackers(tf.add_n(list(terms.values())), terms)

    def _update_trackers(self, loss, terms):
        self.trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()
                if name == "loss" or name in terms}

    def get_config(self):
        return {"config": self.config.to_dict(), "net": keras.saving.serialize_keras_object(self.net)}

    @classmethod
    def from_config(cls, config):
        return cls(TrainConfig.from_dict(config["config"]),
                   keras.saving.deserialize_keras_object(config["net"]))

