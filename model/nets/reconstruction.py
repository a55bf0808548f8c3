"""The reconstruction-based SSL baselines of paper Sec. 4.3: CNN-AE, CNN-VAE, CNN-LadderNet.

One network class composes the shared parts: the VGG chunk encoder, the emotion head on
the bottleneck, the mirrored decoder (``model.nets.decoder``) and, for the VAE, a Gaussian
latent. At inference only the encoder and the emotion head run (plus the latent mean's
Dense for the VAE), so the baselines cost what the other models cost. When training,
``call`` also returns ``auxiliary_losses``: the weighted reconstruction terms, which the
training model adds to its loss in both stages (in stage I, on the unlabelled split,
they are the whole loss).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from keras import ops

from model.nets.decoder import VGGChunkDecoder, level_shapes
from model.nets.encoder import BN_EPSILON, VGGChunkEncoder, dense_initializer
from model.nets.heads import EmotionHead
from model.nets.emocluster_net import ChunkNet
from model.training.config import DEFAULT_LADDER_WEIGHTS

AE, VAE, LADDER = "ae", "vae", "ladder"
LOSS_NAMES: dict[str, tuple[str, ...]] = {AE: ("reconstruction",), VAE: ("reconstruction", "kl"),
                                          LADDER: ("denoising",)}


@keras.saving.register_keras_serializable(package="deepemocluster")
class GaussianLatent(keras.layers.Layer):
    """Mean and log-variance of the VAE's diagonal Gaussian posterior, one Dense each."""

    def __init__(self, units: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.mean = keras.layers.Dense(units, kernel_initializer=dense_initializer(), bias_initializer="zeros",
                                       name="mean")
        self.log_variance = keras.layers.Dense(units, kernel_initializer=dense_initializer(),
                                               bias_initializer="zeros", name="log_variance")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.mean.build(input_shape)
        self.log_variance.build(input_shape)

    def call(self, inputs: Any) -> tuple[Any, Any]:
        return self.mean(inputs), self.log_variance(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


def gaussian_kl(mean: Any, log_variance: Any) -> Any:
    """KL(N(mean, exp(log_variance)) || N(0, I)) summed over the last axis, averaged over the rest."""
    per_unit = 1.0 + log_variance - ops.square(mean) - ops.exp(log_variance)
    return ops.mean(-0.5 * ops.sum(per_unit, axis=-1))


def batch_normalise(x: Any) -> Any:
    """Per-channel standardisation with the batch's own statistics (no scale, no shift, no state)."""
    channels = x.shape[-1]
    return tf.compat.v1.nn.fused_batch_norm(x, tf.ones([channels]), tf.zeros([channels]), epsilon=BN_EPSILON,
                                            is_training=True)[0]


@keras.saving.register_keras_serializable(package="deepemocluster")
class ReconstructionNet(ChunkNet, keras.Model):
    """[B, C, m, n_mels] chunked features -> the ``EmoClusterNet`` output dict, plus losses when training.

    Args:
      num_chunks, chunk_frames, n_mels: C, m and mel bins of the input.
      kind: ``ae`` (MSE reconstruction), ``vae`` (ELBO) or ``ladder`` (denoising costs).
      num_attributes, encoder_dropout, units: as ``EmoClusterNet``.
      reconstruction_weight: weight of the ``reconstruction`` term (ae, vae).
      kl_weight: weight of the ``kl`` term (vae).
      ladder_noise: std of the Gaussian noise on every level of the ladder's noisy path.
      ladder_weights: ladder denoising weights per encoder level, input level first.
      seed: seed of the VAE's and the ladder's noise.

    ``call`` returns ``embeddings`` [B, C, units] (encoder output), ``hidden`` (what
    the emotion head reads: the embeddings, or the latent mean of the VAE),
    ``chunk_predictions`` [B, C, A] and ``predictions`` [B, A]; with ``training=True``
    also ``auxiliary_losses``, a dict of weighted scalar loss terms named as
    ``auxiliary_loss_names``. All loss terms are means per element, so their scales do
    not depend on m, n_mels or the batch.

    - ``reconstruction`` = weight * MSE(x, decoder(bottleneck)); the AE decodes the
      embeddings, the VAE a sample mean + exp(log_variance / 2) * eps.
    - ``kl`` = weight * KL(q(z|x) || N(0, I)) / (m * n_mels): with a Gaussian decoder of
      variance 1/2, reconstruction + kl at weight 1 is minus the ELBO per input element,
      up to a constant.
    - ``denoising`` = sum over levels l of weight_l * MSE(z^_l, z_l): z_l is the clean
      path's level l (the input, or a conv block's output standardised with the clean
      batch's statistics), z^_l the decoder's estimate from the noisy path's level l
      and the top-down signal. When training, the ladder's ``embeddings`` and
      predictions come from the noisy path, as in Rasmus et al. (2015); at inference
      the clean encoder runs alone.
    """

    def __init__(self, num_chunks: int, chunk_frames: int, n_mels: int, kind: str = AE, num_attributes: int = 1,
                 encoder_dropout: float = 0.5, units: int = 256, reconstruction_weight: float = 1.0,
                 kl_weight: float = 1.0, ladder_noise: float = 0.3,
                 ladder_weights: Sequence[float] = DEFAULT_LADDER_WEIGHTS, seed: int = 0, name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if kind not in LOSS_NAMES:
            raise ValueError(f"unknown reconstruction kind {kind!r}; choose one of {sorted(LOSS_NAMES)}")
        levels = len(level_shapes(chunk_frames, n_mels))
        if len(ladder_weights) != levels:
            raise ValueError(f"ladder_weights needs {levels} weights (input level first), got {len(ladder_weights)}")
        self.num_chunks = num_chunks
        self.chunk_frames = chunk_frames
        self.n_mels = n_mels
        self.kind = kind
        self.num_attributes = num_attributes
        self.encoder_dropout = encoder_dropout
        self.units = units
        self.reconstruction_weight = reconstruction_weight
        self.kl_weight = kl_weight
        self.ladder_noise = ladder_noise
        self.ladder_weights = tuple(float(w) for w in ladder_weights)
        self.seed = seed
        self.encoder = VGGChunkEncoder(units, encoder_dropout, name="encoder")
        self.latent = GaussianLatent(units, name="latent") if kind == VAE else None
        self.decoder = VGGChunkDecoder(chunk_frames, n_mels, lateral=kind == LADDER, name="decoder")
        self.emotion_head = EmotionHead(num_attributes, units, name="emotion_head")
        self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")
        self.build((None, num_chunks, chunk_frames, n_mels))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        embedding_shape = (input_shape[0], input_shape[1], self.units)
        self.encoder.build(input_shape)
        if self.latent is not None:
            self.latent.build(embedding_shape)
        self.decoder.build((None, self.units))
        self.emotion_head.build(embedding_shape)

    @property
    def auxiliary_loss_names(self) -> tuple[str, ...]:
        """Names of the ``auxiliary_losses`` a training call returns."""
        return LOSS_NAMES[self.kind]

    def call(self, features: Any, training: bool = False) -> dict[str, Any]:
        if training:
            return {AE: self._ae_outputs, VAE: self._vae_outputs, LADDER: self._ladder_outputs}[self.kind](features)
        embeddings = self.encoder(features, training=False)
        hidden = embeddings if self.latent is None else self.latent.mean(embeddings)
        return self._emotion_outputs(embeddings, hidden)

    def _ae_outputs(self, features: Any) -> dict[str, Any]:
        embeddings = self.encoder(features, training=True)
        outputs = self._emotion_outputs(embeddings, embeddings)
        outputs["auxiliary_losses"] = {"reconstruction": self._reconstruction_loss(features, embeddings)}
        return outputs

    def _vae_outputs(self, features: Any) -> dict[str, Any]:
        embeddings = self.encoder(features, training=True)
        mean, log_variance = self.latent(embeddings)
        outputs = self._emotion_outputs(embeddings, mean)
        sample = mean + ops.exp(0.5 * log_variance) * keras.random.normal(tf.shape(mean), seed=self.noise_seed)
        outputs["auxiliary_losses"] = {
            "reconstruction": self._reconstruction_loss(features, sample),
            "kl": self.kl_weight * gaussian_kl(mean, log_variance) / (self.chunk_frames * self.n_mels),
        }
        return outputs

    def _emotion_outputs(self, embeddings: Any, hidden: Any) -> dict[str, Any]:
        chunk_predictions = self.emotion_head(hidden)
        return {"embeddings": embeddings, "hidden": hidden, "chunk_predictions": chunk_predictions,
                "predictions": ops.mean(chunk_predictions, axis=1)}

    def _decode(self, bottleneck: Any, laterals: Sequence[Any] | None = None) -> list[Any]:
        """The decoder's per-level estimates for every chunk, folded as [B*C, ...]."""
        return self.decoder(ops.reshape(bottleneck, (-1, self.units)), laterals, training=True)

    def _chunk_images(self, features: Any) -> Any:
        return ops.reshape(features, (-1, self.chunk_frames, self.n_mels, 1))

    def _reconstruction_loss(self, features: Any, bottleneck: Any) -> Any:
        reconstruction = self._decode(bottleneck)[0]
        return self.reconstruction_weight * ops.mean(ops.square(reconstruction - self._chunk_images(features)))

    def _ladder_outputs(self, features: Any) -> dict[str, Any]:
        images = self._chunk_images(features)
        clean, _ = self._encoder_levels(images, noisy=False)
        noisy, top = self._encoder_levels(images, noisy=True)
        encoder = self.encoder
        flat = ops.reshape(top, (ops.shape(top)[0], -1))
        embeddings = ops.reshape(encoder.dropout(encoder.dense(flat), training=True),
                                 (-1, ops.shape(features)[1], self.units))
        outputs = self._emotion_outputs(embeddings, embeddings)
        estimates = self._decode(embeddings, noisy)
        outputs["auxiliary_losses"] = {"denoising": sum(
            weight * ops.mean(ops.square(estimate - target))
            for weight, estimate, target in zip(self.ladder_weights, estimates, clean))}
        return outputs

    def _encoder_levels(self, images: Any, noisy: bool) -> tuple[list[Any], Any]:
        """The encoder's conv stack run by hand: its levels (input, then each block's
        standardised pre-activation) and its top map after ReLU.

        The clean path normalises with the encoder's own BatchNorm in training mode, so
        its running statistics track the clean activations inference will see. The noisy
        path adds Gaussian noise to the input and to every standardised pre-activation
        and applies the BatchNorm's scale and shift by hand, leaving the running
        statistics alone.
        """
        x = self._corrupt(images) if noisy else images
        levels = [x]
        for conv, norm in self.encoder.blocks:
            convolved = conv(x)
            standardised = batch_normalise(convolved)
            if noisy:
                standardised = self._corrupt(standardised)
                x = ops.relu(norm.gamma * standardised + norm.beta)
            else:
                x = ops.relu(norm(convolved, training=True))
            levels.append(standardised)
        return levels, x

    def _corrupt(self, x: Any) -> Any:
        return x + self.ladder_noise * keras.random.normal(tf.shape(x), seed=self.noise_seed)

    def output_parts(self) -> list[keras.Layer | None]:
        """The latent, the decoder and the emotion head."""
        return [self.latent, self.decoder, self.emotion_head]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_chunks": self.num_chunks, "chunk_frames": self.chunk_frames, "n_mels": self.n_mels,
            "kind": self.kind, "num_attributes": self.num_attributes, "encoder_dropout": self.encoder_dropout,
            "units": self.units, "reconstruction_weight": self.reconstruction_weight, "kl_weight": self.kl_weight,
            "ladder_noise": self.ladder_noise, "ladder_weights": list(self.ladder_weights), "seed": self.seed,
        }
