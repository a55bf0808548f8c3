"""The encoder's conv -> BatchNorm -> ReLU blocks in training mode, with a backward pass that keeps
one map per block instead of two.

Autodiff keeps, for every block, the BatchNorm input (for BatchNorm's gradient) and the ReLU
output (for ReLU's gradient and the next conv's kernel gradient). At the reference's batch (64
sentences x 11 chunks) one full-resolution map is 715 MB, and these kept maps set the training
step's peak memory (docs/performance.md).

Here the stack is cut into segments "BatchNorm -> ReLU -> next conv", each one custom gradient that
keeps only its input, the BatchNorm input. When the backward pass reaches a segment (not before:
the recomputation waits for the segment's output gradient) it recomputes the ReLU output from that
input (BatchNorm in training mode again: a reduction and an elementwise pass, no convolution),
takes the next conv's kernel gradient with it and keeps only its sign (one byte an element) for
ReLU's gradient, so that the ReLU output is gone before the conv's input gradient is made. The
kernels are autodiff's, in the forms oneDNN runs fastest (``SymmetricConv2D.backprop``). The first
segment starts at the input images and recomputes the first conv too, which has one input channel
and costs about as much as an elementwise pass, so the first full-resolution map is not kept either.

The forward pass is op for op the plain stack's, so outputs and running statistics are identical;
gradients equal autodiff's to float32 rounding (tests/test_recomputed_blocks.py). The saving is
made in traced functions (Keras' train step); an eager tape records the inner ops anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import tensorflow as tf
from keras import ops

if TYPE_CHECKING:
    from model.nets.encoder import FusedBatchNorm, SymmetricConv2D


def recomputed_conv_stack(images: tf.Tensor, blocks: Sequence[tuple["SymmetricConv2D", "FusedBatchNorm"]]) -> tf.Tensor:
    """relu(bn_n(conv_n(... relu(bn_1(conv_1(images)))))) with every BatchNorm in training mode
    (running statistics updated), keeping one map per block for the backward pass."""
    (first_conv, norm), *rest = blocks
    x, lead_conv = ops.cast(images, first_conv.compute_dtype), first_conv
    for conv, next_norm in rest:
        x = _segment(x, lead_conv, norm, conv)
        lead_conv, norm = None, next_norm
    if lead_conv is not None:
        x = lead_conv(x)
    return ops.relu(norm(x, training=True))


def _segment(x: tf.Tensor, lead_conv: "SymmetricConv2D | None", norm: "FusedBatchNorm",
             conv: "SymmetricConv2D") -> tf.Tensor:
    """``conv(relu(norm(lead_conv(x))))`` (``lead_conv`` may be None) as one custom gradient
    that keeps ``x``; assigns the norm's running statistics."""
    dtype = x.dtype
    lead_weights = [] if lead_conv is None else [_read(lead_conv.kernel, dtype), _read(lead_conv.bias, dtype)]

    def normalise(y: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor,
                  running: tuple[tf.Tensor, tf.Tensor] | None) -> list[tf.Tensor]:
        """FusedBatchNormV3 in training mode; with ``running`` also the updated running statistics."""
        mean, variance = running or (tf.constant([], tf.float32), tf.constant([], tf.float32))
        return tf.raw_ops.FusedBatchNormV3(
            x=y, scale=gamma, offset=beta, mean=mean, variance=variance, epsilon=norm.epsilon,
            exponential_avg_factor=norm.exponential_avg_factor if running else 1.0, is_training=True)

    @tf.custom_gradient
    def segment(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, moving_mean: tf.Tensor,
                moving_variance: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, *lead: tf.Tensor):
        y = x if lead_conv is None else lead_conv.convolve(x, *lead)
        normalised, running_mean, running_variance, *_ = normalise(y, gamma, beta, (moving_mean, moving_variance))
        outputs = conv.convolve(tf.nn.relu(normalised), kernel, bias)

        def gradient(output_gradient: tf.Tensor, *_: tf.Tensor) -> list[tf.Tensor | None]:
            with tf.control_dependencies([output_gradient]):
                kept = tf.identity(x)
            y = kept if lead_conv is None else lead_conv.convolve(kept, *lead)
            normalised, _, _, *reserve = normalise(y, gamma, beta, None)
            activations = tf.nn.relu(normalised)
            active = tf.greater(activations, 0)
            backprop = conv.backprop(activations.shape, activations.dtype)
            kernel_gradient, bias_gradient = backprop.kernel_gradient(activations, kernel, output_gradient)
            # The activations die here: their gradient is only made once they are gone.
            with tf.control_dependencies([kernel_gradient, active]):
                activation_gradient = backprop.inputs_gradient(tf.shape(activations), kernel, output_gradient)
            normalised_gradient = tf.where(active, activation_gradient, tf.zeros((), activation_gradient.dtype))
            y_gradient, gamma_gradient, beta_gradient, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=normalised_gradient, x=y, scale=gamma, reserve_space_1=reserve[0],
                reserve_space_2=reserve[1], reserve_space_3=reserve[2], epsilon=norm.epsilon, is_training=True)
            gradients = [y_gradient, gamma_gradient, beta_gradient, None, None, kernel_gradient, bias_gradient]
            if lead_conv is None:
                return gradients
            x_gradient, *lead_gradients = lead_conv.backprop(x.shape, x.dtype).gradients(x, lead[0], y_gradient)
            return [x_gradient, *gradients[1:], *lead_gradients]

        return (outputs, running_mean, running_variance), gradient

    outputs, running_mean, running_variance = segment(
        x, *(_read(v, tf.float32) for v in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance)),
        _read(conv.kernel, dtype), _read(conv.bias, dtype), *lead_weights)
    norm.assign_moving_statistics(running_mean, running_variance)
    return outputs


def _read(variable: Any, dtype: tf.DType) -> tf.Tensor:
    """A variable's value as a tensor of ``dtype``: a custom gradient must not see the variable
    itself (eagerly it would have to return gradients for it apart)."""
    return tf.cast(tf.convert_to_tensor(variable), dtype)
