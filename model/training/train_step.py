"""The training model of paper Algorithm 1: Eq. 3 and Eq. 7 in a custom ``train_step``.

One class serves every variant: the variant's knobs (model.nets.variants) decide which loss
terms exist, and a network may add its own through the ``auxiliary_losses`` it returns
when training (the reconstruction baselines' terms, model.nets.reconstruction).

Who steps which weights is an ``OptimizerPlan`` (``TrainConfig.optimizers``):

- ``reference`` (default, the authors' code): SGD and Adam both over every weight but the
  top cluster layer; stage II steps both with the same gradients (the update is the sum of
  an SGD and an Adam step); stage I steps only the SGD, emotion head frozen. The top cluster
  layer has its own SGD (lr 0.05).
- ``paper`` (the paper's wording, Sec. 4.3): SGD on the VGG encoder, Adam on the output
  layers, disjoint; the top cluster layer has its own Adam.

The top cluster layer and its optimizer's state are reset before every clustering stage
(DeepCluster re-creates that layer because cluster ids change meaning between stages).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from model.nets.losses import ccc_loss, cluster_cross_entropy, temporal_triplet_loss
from model.nets.emocluster_net import EmoClusterNet
from model.training.optimizers import optimizer_groups, reset_state
from model.nets.reconstruction import ReconstructionNet
from model.training.config import TrainConfig
from model.training.stages import STAGE_II, Stage


@keras.saving.register_keras_serializable(package="deepemocluster")
class DeepEmoCluster(keras.Model):
    """Wraps an ``EmoClusterNet`` or a ``ReconstructionNet`` with the two training stages of Algorithm 1.

    Batches are dicts with ``features`` [B, C, m, F], ``targets`` [B, A] (normalised
    labels of the trained attributes), and ``cluster_labels`` [B, C] for clustering
    variants. A supervised stage (stage II) minimises CE + (1 - CCC) (+ gamma * triplet);
    an unsupervised one (stage I) minimises CE (+ gamma * triplet) and leaves the emotion
    head untouched. Both stages add every term of the network's ``auxiliary_losses``
    (named up front by its ``auxiliary_loss_names``), each tracked as a metric.
    """

    def __init__(self, config: TrainConfig, net: EmoClusterNet | ReconstructionNet, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.variant = config.variant
        self.net = net
        self.optimizer_groups = optimizer_groups(config, net)
        self.triplet_rng = tf.random.Generator.from_seed(config.seed + 7919)
        self.stage: Stage = STAGE_II
        self._stage_functions: dict[bool, object] = {}
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

    def set_stage(self, stage: Stage) -> None:
        """Switches loss terms and trained variables; keeps one traced function per kind of stage."""
        if stage.supervised != self.stage.supervised:
            self._stage_functions[self.stage.supervised] = self.train_function
            self.train_function = self._stage_functions.get(stage.supervised)
        self.stage = stage

    def reset_cluster_classifier(self) -> None:
        """Fresh top cluster layer and a fresh optimizer for it, before a clustering stage."""
        self.net.cluster_head.reset_classifier()
        for group in self.optimizer_groups:
            if group.cluster_classifier:
                reset_state(group.optimizer)

    def optimizer_named(self, name: str) -> keras.optimizers.Optimizer:
        return next(group.optimizer for group in self.optimizer_groups if group.name == name)

    def _loss_terms(self, data, outputs, training: bool) -> dict[str, tf.Tensor]:
        terms = {}
        if self.variant.clustering:
            terms["cluster_ce"] = cluster_cross_entropy(data["cluster_labels"], outputs["cluster_logits"])
        if self.stage.supervised or not training:
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
        supervised = self.stage.supervised
        steps = [(group.optimizer, group.variables(supervised)) for group in self.optimizer_groups]
        variables = list({id(v): v for _, group in steps for v in group}.values())
        with tf.GradientTape() as tape:
            outputs = self.net(data["features"], training=True)
            terms = self._loss_terms(data, outputs, training=True)
            loss = tf.add_n(list(terms.values()))
        gradients = dict(zip((id(v) for v in variables), tape.gradient(loss, variables)))
        # Every optimizer applies the same gradients (the reference's SGD + Adam sum).
        for optimizer, group in steps:
            if group:
                optimizer.apply([gradients[id(v)] for v in group], list(group))
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

