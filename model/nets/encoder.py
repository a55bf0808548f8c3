"""VGG chunk encoder Phi of paper Table 1, applied to every chunk of a sentence at once.

The C chunks of a sentence are folded into the batch axis, so one convolution stack
runs over B*C single-channel images with no per-chunk loop; the result is unfolded back
to [B, C, units]. Initialisation follows the reference (REFERENCE.md, "Model"); the
initialiser factories here are shared by every part of the model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from model.nets.encoder_geometry import CONV_CHANNELS, CONV_STRIDES
from model.nets.recomputed_blocks import recomputed_conv_stack

BN_MOMENTUM = 0.9
"""Keras momentum equal to PyTorch's default ``momentum=0.1``."""
BN_EPSILON = 1e-5
"""PyTorch's default BatchNorm/LayerNorm epsilon."""


def conv_initializer(kernel_size: int, filters: int) -> keras.initializers.Initializer:
    """N(0, sqrt(2 / (k*k*filters))): the reference's He-style conv init (fan-out)."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel_size * kernel_size * filters)))


def dense_initializer(seed: int | keras.random.SeedGenerator | None = None) -> keras.initializers.Initializer:
    """N(0, 0.01): the reference's init of every fully connected layer.

    An int or None seed gives the same draw on every call (Keras 3); a SeedGenerator
    gives a new draw per call, as re-initialising a layer needs.
    """
    return keras.initializers.RandomNormal(stddev=0.01, seed=seed)


@keras.saving.register_keras_serializable(package="deepemocluster")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization of 4-D channels-last maps with TensorFlow's fused kernel.

    Keras 3 normalises with separate moment, scale and shift ops, several passes over
    activations that reach [B*C, m, n_mels, 32] in the encoder; the fused kernel (oneDNN on
    CPU, cuDNN on GPU) does it in one pass forward and one backward, a large share of a
    CPU training step. Its running variance is the unbiased batch variance, as PyTorch's.
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or self.axis not in (-1, 3):
            raise ValueError(f"FusedBatchNorm normalises the last axis of 4-D inputs, got {input_shape}")
        super().build(input_shape)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        is_training = bool(training) and self.trainable
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=is_training,
            exponential_avg_factor=self.exponential_avg_factor if is_training else 1.0,
        )
        if is_training:
            self.assign_moving_statistics(mean, variance)
        return outputs

    @property
    def exponential_avg_factor(self) -> float:
        """The weight of a batch's statistics in the running ones (PyTorch's ``momentum``)."""
        return 1.0 - self.momentum

    def assign_moving_statistics(self, mean: Any, variance: Any) -> None:
        """Stores the running mean and variance that a training-mode fused kernel returned."""
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)


@keras.saving.register_keras_serializable(package="deepemocluster")
class SymmetricConv2D(keras.layers.Conv2D):
    """Conv2D with PyTorch's ``padding=k // 2``: that many zeros on both sides of H and W.

    Keras' "same" pads (0, 1) for a stride-2 3x3 conv on an even size, which shifts the
    sampling grid by one pixel against the reference; the output size and the parameters
    are the same either way. The padding is handed to the kernels in the form oneDNN runs
    fastest (``convolve``); ``backprop`` gives the gradient kernels in such forms for code
    that runs them itself (``model.nets.recomputed_blocks``). A plain call is differentiated
    by autodiff.
    """

    def __init__(self, filters: int, kernel_size: int, **kwargs: Any) -> None:
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)

    def call(self, inputs: Any) -> Any:
        return self.convolve(inputs, ops.cast(self.kernel, inputs.dtype), ops.cast(self.bias, inputs.dtype))

    def convolve(self, inputs: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        """The layer's convolution with the given weights (cast to the inputs' dtype), in the
        form oneDNN runs fastest: "SAME" where it equals the reference's padding (every stride-1
        conv), else explicit paddings of only the zeros a window reads in float32, and a padded
        copy convolved "VALID" in bfloat16 (oneDNN has no bfloat16 kernel for explicit
        paddings: TensorFlow's fallback is 30x slower, docs/performance.md)."""
        explicit = self.reference_padding(inputs.shape)
        padding: Any = "SAME" if explicit is None else explicit
        if explicit is not None and inputs.dtype == tf.bfloat16:
            inputs, padding = tf.pad(inputs, explicit), "VALID"
        outputs = tf.nn.conv2d(inputs, kernel, strides=[1, *self.strides, 1], padding=padding)
        return tf.nn.bias_add(outputs, bias)

    def backprop(self, input_shape: tf.TensorShape, dtype: tf.DType) -> "ConvBackprop":
        """The gradient kernels of ``convolve`` on inputs of that shape and dtype."""
        return ConvBackprop(tuple(input_shape), self.reference_padding(input_shape), [1, *self.strides, 1], dtype)

    def reference_padding(self, input_shape: tf.TensorShape) -> list[list[int]] | None:
        """The zeros of the reference's padding that a window reads, as explicit paddings, or None
        where TensorFlow's "SAME" equals them."""
        (top, bottom), (left, right) = (
            _used_padding(size, k, s) for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides))
        if all(_same_padding(size, k, s) == pads for size, k, s, pads in zip(
                input_shape[1:3], self.kernel_size, self.strides, ((top, bottom), (left, right)))):
            return None
        return [[0, 0], [top, bottom], [left, right], [0, 0]]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, _ = input_shape
        pad_h, pad_w = (k // 2 for k in self.kernel_size)
        padded = (batch, None if height is None else height + 2 * pad_h,
                  None if width is None else width + 2 * pad_w, input_shape[3])
        return super().compute_output_shape(padded)


@dataclasses.dataclass(frozen=True)
class ConvBackprop:
    """The gradient kernels of one ``SymmetricConv2D.convolve`` call, for code that runs them
    itself (``model.nets.recomputed_blocks``), in the forms that are fastest without costing
    memory (docs/performance.md):

    - the input gradient of a conv with explicit paddings runs oneDNN's "VALID" kernel into a
      padded map and crops it (TensorFlow's explicit-padding kernel is 1.6-2x slower);
    - the kernel gradient takes the explicit paddings on the inputs themselves in float32
      (TensorFlow's kernel, as fast as oneDNN's on a padded copy, but that copy, 63 x 129 next
      to the 62 x 128 maps, fragments TensorFlow's memory pool: 0.7 GB more peak RSS at batch
      64) and a padded copy in bfloat16 (TensorFlow's bfloat16 kernel is 30x slower);
    - the float32 bias gradient is taken of the flattened maps: of the 4-D ones TensorFlow fuses
      it into oneDNN's kernel gradient, which then runs about 1.3x slower.
    """

    input_shape: tuple[int | None, ...]
    explicit_padding: list[list[int]] | None
    """The reference's padding where it is not "SAME" (``SymmetricConv2D.reference_padding``)."""
    strides: list[int]
    dtype: tf.DType

    def kernel_gradient(self, inputs: tf.Tensor, kernel: tf.Tensor,
                        output_gradient: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The gradients for the kernel and the bias, given the conv's inputs and its output gradient."""
        padding: Any = "SAME" if self.explicit_padding is None else self.explicit_padding
        if self.explicit_padding is not None and self.dtype == tf.bfloat16:
            inputs, padding = tf.pad(inputs, self.explicit_padding), "VALID"
        kernel_gradient = tf.compat.v1.nn.conv2d_backprop_filter(
            inputs, tf.shape(kernel), output_gradient, self.strides, padding)
        if self.dtype == tf.float32:
            output_gradient = tf.reshape(output_gradient, [-1, tf.shape(output_gradient)[-1]])
        return kernel_gradient, tf.raw_ops.BiasAddGrad(out_backprop=output_gradient)

    def inputs_gradient(self, input_shape: tf.Tensor, kernel: tf.Tensor, output_gradient: tf.Tensor) -> tf.Tensor:
        """The gradient for the conv's inputs, of that (dynamic) shape, given its output gradient."""
        if self.explicit_padding is None:
            return tf.compat.v1.nn.conv2d_backprop_input(input_shape, kernel, output_gradient, self.strides, "SAME")
        padded_shape = input_shape + tf.constant([before + after for before, after in self.explicit_padding])
        padded = tf.compat.v1.nn.conv2d_backprop_input(padded_shape, kernel, output_gradient, self.strides, "VALID")
        (_, _), (top, _), (left, _), (_, _) = self.explicit_padding
        return padded[:, top:top + self.input_shape[1], left:left + self.input_shape[2]]

    def gradients(self, inputs: tf.Tensor, kernel: tf.Tensor,
                  output_gradient: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The gradients for the inputs, the kernel and the bias."""
        return (self.inputs_gradient(tf.shape(inputs), kernel, output_gradient),
                *self.kernel_gradient(inputs, kernel, output_gradient))


def _used_padding(size: int | None, kernel: int, stride: int) -> tuple[int, int]:
    """The zeros PyTorch's ``padding=k // 2`` adds before and after one axis that a window
    reads: a trailing pad that no window reaches is dropped (stride 2 over an even size)."""
    pad = kernel // 2
    if size is None:
        return pad, pad
    outputs = (size + 2 * pad - kernel) // stride + 1
    return pad, (outputs - 1) * stride + kernel - size - pad


def _same_padding(size: int | None, kernel: int, stride: int) -> tuple[int, int] | None:
    """The zeros TensorFlow's "SAME" adds before and after one axis (None: unknown size)."""
    if size is None:
        return None
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_bn(filters: int, kernel_size: int, strides: int = 1, name: str = "conv",
            dtype: Any = None) -> tuple[SymmetricConv2D, FusedBatchNorm]:
    """A conv padded as PyTorch's ``padding=k // 2`` (with bias, as the reference) and its
    PyTorch-equivalent BatchNorm.

    ``dtype`` is a Keras dtype policy for both; None takes the global one (float32).
    """
    conv = SymmetricConv2D(
        filters, kernel_size, strides=strides,
        kernel_initializer=conv_initializer(kernel_size, filters), bias_initializer="zeros",
        name=name, dtype=dtype,
    )
    norm = FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn", dtype=dtype)
    return conv, norm


@keras.saving.register_keras_serializable(package="deepemocluster")
class VGGChunkEncoder(keras.layers.Layer):
    """[B, C, m, n_mels] chunked features -> [B, C, units] chunk embeddings h (Eq. 4).

    Seven Conv3x3 + BatchNorm + ReLU blocks (channels 32,32,64,64,128,128,128, strides
    1,1,2,2,2,2,2), each padded by one zero on every side as the reference's ``padding=1``
    (``SymmetricConv2D``), flatten, Dense(units) + ReLU, Dropout. The flatten size
    follows from m and n_mels (62 x 128 -> 2 x 4 x 128 = 1024); it is the NHWC
    (channels-last) flatten, so the reference's NCHW Dense kernel is permuted on
    conversion (``model.convert_reference``).

    The layer's dtype policy applies to the conv blocks only: ``dtype="mixed_bfloat16"``
    runs convolutions, BatchNorm and ReLU in bfloat16 (float32 variables, batch statistics
    and running averages), which halves the CPU time of a training step on CPUs with
    AVX-512 BF16 (docs/performance.md); the Dense and everything after stay float32.

    In training the conv blocks run as ``model.nets.recomputed_blocks`` does: the same forward
    pass, and a backward pass that keeps half the activation maps autodiff would.
    """

    def __init__(self, units: int = 256, dropout: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.dropout_rate = dropout
        self.blocks = [conv_bn(channels, 3, stride, name=f"conv{i + 1}", dtype=self.dtype_policy)
                       for i, (channels, stride) in enumerate(zip(CONV_CHANNELS, CONV_STRIDES))]
        self.dense = keras.layers.Dense(
            units, activation="relu", kernel_initializer=dense_initializer(), bias_initializer="zeros",
            name="dense", dtype="float32",
        )
        self.dropout = keras.layers.Dropout(dropout)
        self.recompute_activations = True
        """Training keeps one map per conv block and recomputes the rest in the backward pass
        (``model.nets.recomputed_blocks``); False keeps autodiff's two (same gradients, about
        1.7x the peak memory: docs/performance.md)."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _, _, frames, n_mels = input_shape
        height, width = frames, n_mels
        channels = 1
        for (conv, norm), stride in zip(self.blocks, CONV_STRIDES):
            conv.build((None, height, width, channels))
            height, width, channels = -(-height // stride), -(-width // stride), conv.filters
            norm.build((None, height, width, channels))
        self._flat_size = height * width * channels
        self.dense.build((None, self._flat_size))

    def call(self, features: Any, training: bool = False) -> Any:
        _, chunks, frames, n_mels = ops.shape(features)
        x = self.conv_blocks(ops.reshape(features, (-1, frames, n_mels, 1)), training=training)
        x = self.dropout(self.dense(ops.reshape(x, (-1, self._flat_size))), training=training)
        return ops.reshape(x, (-1, chunks, self.units))

    def conv_blocks(self, images: Any, training: bool = False) -> Any:
        """The seven Conv + BatchNorm + ReLU blocks on [B*C, m, n_mels, 1] chunk images; in training
        with one kept map per block unless ``recompute_activations`` is off."""
        if training and self.recompute_activations and all(norm.trainable for _, norm in self.blocks):
            return recomputed_conv_stack(images, self.blocks)
        x = images
        for conv, norm in self.blocks:
            x = ops.relu(norm(conv(x), training=training))
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "dropout": self.dropout_rate}
