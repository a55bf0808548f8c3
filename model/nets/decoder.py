"""The decoder Phi^-1 of the reconstruction baselines: the VGG chunk encoder mirrored.

Paper Sec. 4.3: the decoder has the reverse structure of the encoder, upsampling with
transposed convolutions. Every level of the encoder (its input chunk and the output of
each of its seven conv blocks) has a decoder counterpart of the same shape, so the
ladder network can combine them level by level; the autoencoders use the same layers
without the lateral inputs. Nothing here depends on m or n_mels: the level shapes follow
from the encoder's strides.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from model.nets.encoder import (BN_EPSILON, BN_MOMENTUM, CONV_CHANNELS, CONV_STRIDES, FusedBatchNorm, conv_initializer,
                           dense_initializer)


def level_shapes(frames: int, n_mels: int) -> list[tuple[int, int, int]]:
    """(height, width, channels) of the encoder's levels: the input chunk, then each conv block.

    A 'same' convolution with stride s maps n to ceil(n / s), as in ``VGGChunkEncoder``.
    """
    shapes = [(frames, n_mels, 1)]
    for channels, stride in zip(CONV_CHANNELS, CONV_STRIDES):
        height, width, _ = shapes[-1]
        shapes.append((-(-height // stride), -(-width // stride), channels))
    return shapes


@keras.saving.register_keras_serializable(package="deepemocluster")
class LadderCombinator(keras.layers.Layer):
    """Rasmus et al.'s (2015) vanilla combinator g(z~, u), with its ten parameters per channel.

    ``mu = a1 sigmoid(a2 u + a3) + a4 u + a5``, ``v = a6 sigmoid(a7 u + a8) + a9 u + a10``
    and ``z^ = (z~ - mu) v + mu``: a learned gate between the lateral (noisy) activation
    z~ and the top-down signal u. Initialised as theirs (a2 = a7 = 1, the rest 0).
    """

    INITIAL = (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.weights_per_channel = self.add_weight(
            shape=(len(self.INITIAL), input_shape[-1]), name="a",
            initializer=keras.initializers.Constant([[value] for value in self.INITIAL]))

    def call(self, lateral: Any, top_down: Any) -> Any:
        a = self.weights_per_channel
        mu = a[0] * ops.sigmoid(a[1] * top_down + a[2]) + a[3] * top_down + a[4]
        v = a[5] * ops.sigmoid(a[6] * top_down + a[7]) + a[8] * top_down + a[9]
        return (lateral - mu) * v + mu


@keras.saving.register_keras_serializable(package="deepemocluster")
class VGGChunkDecoder(keras.layers.Layer):
    """[N, units] bottleneck -> per-level estimates of the encoder's N chunks, input level first.

    Dense to the top conv map, then for each conv block of the encoder, last first: ReLU,
    Conv2DTranspose 3x3 with the block's stride back to the block's input channels, crop
    to the block's input size (a stride-2 'same' convolution maps n to ceil(n / 2), so
    upsampling gives n or n + 1: cropping is all it takes), and BatchNorm except at the
    input level, which is linear (the features are z-normalised, not non-negative). A
    transposed convolution's kernel has the shape of its encoder block's kernel and gets
    the same initialisation, which keeps unit-variance signals at unit variance.

    ``call`` returns one estimate per encoder level ([N, m, n_mels, 1] first, the top
    map last): the pre-activations the decoder reaches at that level. With ``lateral``
    the decoder is a ladder network's: each level's estimate is
    ``LadderCombinator(lateral[level], top-down signal)``, and ``call`` needs the noisy
    encoder's levels as ``laterals``.
    """

    def __init__(self, frames: int, n_mels: int, lateral: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames
        self.n_mels = n_mels
        self.lateral = lateral
        self.shapes = level_shapes(frames, n_mels)
        height, width, channels = self.shapes[-1]
        self.dense = keras.layers.Dense(height * width * channels, kernel_initializer=dense_initializer(),
                                        bias_initializer="zeros", name="dense")
        levels = range(len(CONV_STRIDES), 0, -1)
        self.deconvs = [
            keras.layers.Conv2DTranspose(
                self.shapes[level - 1][2], 3, strides=CONV_STRIDES[level - 1], padding="same",
                kernel_initializer=conv_initializer(3, self.shapes[level][2]), bias_initializer="zeros",
                name=f"deconv{level}")
            for level in levels]
        self.norms = [FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"deconv{level}_bn")
                      for level in levels if level > 1]
        self.combinators = [LadderCombinator(name=f"combinator{level}")
                            for level in range(len(self.shapes))] if lateral else []

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.dense.build(input_shape)
        for index, deconv in enumerate(self.deconvs):
            level = len(self.deconvs) - index
            deconv.build((None, *self.shapes[level]))
            if index < len(self.norms):
                self.norms[index].build((None, *self.shapes[level - 1]))
        for combinator, shape in zip(self.combinators, self.shapes):
            combinator.build((None, *shape))

    def call(self, bottleneck: Any, laterals: Sequence[Any] | None = None, training: bool = False) -> list[Any]:
        if self.lateral != (laterals is not None):
            raise ValueError("a lateral decoder needs the encoder's levels as laterals, a plain one none")
        top = len(self.shapes) - 1
        signal = ops.reshape(self.dense(bottleneck), (-1, *self.shapes[top]))
        estimates = []
        for index, deconv in enumerate(self.deconvs):
            level = top - index
            estimate = self._combine(level, signal, laterals)
            estimates.append(estimate)
            height, width, _ = self.shapes[level - 1]
            signal = deconv(ops.relu(estimate))[:, :height, :width, :]
            if index < len(self.norms):
                signal = self.norms[index](signal, training=training)
        estimates.append(self._combine(0, signal, laterals))
        return estimates[::-1]

    def _combine(self, level: int, signal: Any, laterals: Sequence[Any] | None) -> Any:
        return signal if laterals is None else self.combinators[level](laterals[level], signal)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "frames": self.frames, "n_mels": self.n_mels, "lateral": self.lateral}
