"""The network a training run builds: its variant's parts, shaped by the data's feature settings.

One function for the trainer, for loading a finished job back and for the tests, so that a
job's network is rebuilt exactly as it was trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.nets.emocluster_net import EmoClusterNet
from model.nets.reconstruction import ReconstructionNet
from pipeline.params import FeatureParams

if TYPE_CHECKING:
    from model.training.config import TrainConfig


def build_net(config: "TrainConfig", params: FeatureParams) -> EmoClusterNet | ReconstructionNet:
    """The network ``config``'s variant trains: an ``EmoClusterNet`` or a reconstruction baseline."""
    if config.variant.reconstruction:
        net = ReconstructionNet.for_params(
            params, kind=config.variant.reconstruction, num_attributes=len(config.attributes),
            encoder_dropout=config.variant.encoder_dropout, reconstruction_weight=config.reconstruction_weight,
            kl_weight=config.kl_weight, ladder_noise=config.ladder_noise, ladder_weights=config.ladder_weights,
            seed=config.seed)
    else:
        net = EmoClusterNet.for_params(
            params, temporal=config.variant.temporal,
            num_clusters=config.clusters if config.variant.clustering else None,
            num_attributes=len(config.attributes), encoder_dropout=config.variant.encoder_dropout,
            precision=config.precision)
    net.encoder.recompute_activations = not config.keep_activations
    return net
