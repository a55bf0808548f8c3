"""Which optimiser steps which weights (``optimizer_groups``), with the reference's arithmetic.

The reference steps ``torch.optim.Adam`` (epsilon 1e-8 added to the bias-corrected
``sqrt(v_hat)``); Keras' Adam adds its epsilon to the uncorrected ``sqrt(v)``, which is a
different update whenever gradients are small. ``TorchAdam`` is Keras' Adam with
PyTorch's update, so a step here is the step the authors' code takes.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from model.training.config import OPTIMIZER_MODES

TORCH_ADAM_EPSILON = 1e-8
"""``torch.optim.Adam``'s default epsilon (Keras' default is 1e-7)."""


@keras.saving.register_keras_serializable(package="deepemocluster")
class TorchAdam(keras.optimizers.Adam):
    """Adam with ``torch.optim.Adam``'s update (no weight decay, no AMSGrad):

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, learning_rate: float = 0.001, epsilon: float = TORCH_ADAM_EPSILON, **kwargs) -> None:
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, **kwargs)
        if self.amsgrad:
            raise ValueError("TorchAdam does not implement AMSGrad")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        correction_1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
        correction_2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / correction_1), denominator))


def reset_state(optimizer: keras.optimizers.Optimizer) -> None:
    """Makes a built optimizer behave as a fresh one: slots and step count to zero.

    Only the state is reset: ``optimizer.variables`` also holds the learning rate, which
    must keep its configured value (zeroing it silently stops all training).
    """
    keep = {id(optimizer._learning_rate)} if isinstance(optimizer._learning_rate, keras.Variable) else set()
    for variable in optimizer.variables:
        if id(variable) not in keep:
            variable.assign(ops.zeros_like(variable))


@dataclasses.dataclass(frozen=True)
class OptimizerGroup:
    """One optimiser and the weights it steps in stage II (``supervised``) and stage I."""

    name: str
    optimizer: keras.optimizers.Optimizer
    supervised: tuple
    unsupervised: tuple
    cluster_classifier: bool = False
    """Steps the top cluster layer: reset with it before every clustering stage."""

    def variables(self, supervised: bool) -> tuple:
        return self.supervised if supervised else self.unsupervised


def optimizer_groups(config, net) -> list[OptimizerGroup]:
    """Who steps which weights, per ``config.optimizers`` (see ``model.training.train_step``).

    Optimisers are built here on every weight they will ever step, so a stage that steps a
    subset (stage I freezes the emotion head) never creates slots inside a traced step.
    """
    classifier = tuple(net.cluster_head.classifier_variables) if config.variant.clustering else ()
    excluded = {id(v) for v in classifier}
    frozen = {id(v) for v in net.emotion_head.trainable_variables}

    def unfrozen(variables) -> tuple:
        return tuple(v for v in variables if id(v) not in frozen)

    if config.optimizers == "reference":
        shared = tuple(v for v in net.trainable_variables if id(v) not in excluded)
        groups = [
            OptimizerGroup("sgd", keras.optimizers.SGD(config.encoder_lr, name="sgd"), shared, unfrozen(shared)),
            OptimizerGroup("adam", TorchAdam(config.output_lr, name="adam"), shared, ()),
        ]
        classifier_optimizer = keras.optimizers.SGD(config.classifier_lr, name="classifier_sgd")
    elif config.optimizers == "paper":
        encoder = tuple(net.encoder_variables())
        output = tuple(v for v in net.output_variables() if id(v) not in excluded)
        groups = [
            OptimizerGroup("encoder_sgd", keras.optimizers.SGD(config.encoder_lr, name="encoder_sgd"),
                           encoder, encoder),
            OptimizerGroup("output_adam", TorchAdam(config.output_lr, name="output_adam"), output, unfrozen(output)),
        ]
        classifier_optimizer = TorchAdam(config.output_lr, name="classifier_adam")
    else:
        raise ValueError(f"optimizers must be one of {OPTIMIZER_MODES}, got {config.optimizers!r}")
    if classifier:
        groups.append(OptimizerGroup(classifier_optimizer.name, classifier_optimizer, classifier, classifier,
                                     cluster_classifier=True))
    for group in groups:
        group.optimizer.build(list(group.supervised))
    return groups
