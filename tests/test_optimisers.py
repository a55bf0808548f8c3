"""Who steps which weights in Algorithm 1, checked against hand-computed updates.

The reference (REFERENCE.md, "Optimisers") steps SGD(1e-3) and PyTorch's Adam(5e-4) over
every weight but the top cluster layer, both in the labelled stage and only the SGD in the
unlabelled one; the top cluster layer has a fresh SGD(0.05) at every clustering. These tests
compute those updates by hand from the same gradient, and check that the cluster classifier
really learns after a reset (an optimizer whose learning rate was reset to 0 did not).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.training.stages import STAGE_I, STAGE_II
from model.training.train_step import DeepEmoCluster
from model.nets.emocluster_net import EmoClusterNet
from model.training.optimizers import TorchAdam, reset_state
from model.training.config import TrainConfig

C, M, F, Q = 4, 16, 16, 4
PATTERNS = np.random.default_rng(99).standard_normal((Q, M, F)) * 1.5


def planted_batch(size: int, seed: int) -> dict[str, np.ndarray]:
    """Chunks whose features are their cluster's pattern plus noise: separable by construction."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, Q, size=(size, C))
    features = PATTERNS[labels] + 0.3 * rng.standard_normal((size, C, M, F))
    return {"features": features.astype(np.float32), "targets": rng.standard_normal((size, 1)).astype(np.float32),
            "cluster_labels": labels.astype(np.int32)}


def make_model(optimizers: str = "reference", dropout: float = 0.0, **overrides) -> DeepEmoCluster:
    keras.utils.set_random_seed(0)
    config = TrainConfig(model="vanilla", clusters=Q, optimizers=optimizers, **overrides)
    net = EmoClusterNet(C, M, F, temporal="none", num_clusters=Q, encoder_dropout=dropout)
    model = DeepEmoCluster(config, net)
    model.compile()
    return model


def first_encoder_kernel(model: DeepEmoCluster) -> keras.Variable:
    return model.net.encoder_variables()[0]


def gradient_of(model: DeepEmoCluster, batch: dict, variable: keras.Variable) -> np.ndarray:
    """The gradient ``train_step`` takes, computed the same way (dropout is off in these nets)."""
    with tf.GradientTape() as tape:
        outputs = model.net(batch["features"], training=True)
        loss = tf.add_n(list(model._loss_terms(batch, outputs, training=True).values()))
    return tape.gradient(loss, variable).numpy().astype(np.float64)


def torch_adam_first_step(gradient: np.ndarray, lr: float, eps: float = 1e-8) -> np.ndarray:
    """torch.optim.Adam's first update: lr * m_hat / (sqrt(v_hat) + eps)."""
    m_hat = (0.1 * gradient) / (1 - 0.9)
    v_hat = (0.001 * gradient ** 2) / (1 - 0.999)
    return lr * m_hat / (np.sqrt(v_hat) + eps)


def test_a_reference_step_is_the_sum_of_an_sgd_and_an_adam_step() -> None:
    model = make_model()
    batch = planted_batch(8, 0)
    kernel = first_encoder_kernel(model)
    before = kernel.numpy().astype(np.float64)
    gradient = gradient_of(model, batch, kernel)
    model.train_step(batch)
    expected = before - 1e-3 * gradient - torch_adam_first_step(gradient, 5e-4)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=0, atol=1e-7)
    assert np.abs(kernel.numpy() - before).max() > 1e-4, "the step must move the kernel"


def test_the_unlabelled_stage_steps_only_the_sgd_and_freezes_the_emotion_head() -> None:
    model = make_model()
    model.set_stage(STAGE_I)
    batch = planted_batch(8, 1)
    kernel = first_encoder_kernel(model)
    before = kernel.numpy().astype(np.float64)
    gradient = gradient_of(model, batch, kernel)
    emotion = [v.numpy().copy() for v in model.net.emotion_head.trainable_variables]
    model.train_step(batch)
    np.testing.assert_allclose(kernel.numpy(), before - 1e-3 * gradient, rtol=0, atol=1e-7)
    for value, variable in zip(emotion, model.net.emotion_head.trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert int(model.optimizer_named("adam").iterations.numpy()) == 0
    assert int(model.optimizer_named("sgd").iterations.numpy()) == 1


def test_the_top_cluster_layer_has_its_own_sgd_at_005() -> None:
    model = make_model()
    batch = planted_batch(8, 2)
    kernel = model.net.cluster_head.classifier.kernel
    before = kernel.numpy().astype(np.float64)
    gradient = gradient_of(model, batch, kernel)
    model.train_step(batch)
    np.testing.assert_allclose(kernel.numpy(), before - 0.05 * gradient, rtol=0, atol=1e-7)
    shared = {id(v) for group in model.optimizer_groups if not group.cluster_classifier for v in group.supervised}
    assert id(kernel) not in shared, "SGD and Adam over all weights but the top cluster layer"


def test_paper_mode_keeps_the_disjoint_split() -> None:
    model = make_model("paper")
    batch = planted_batch(8, 3)
    kernel = first_encoder_kernel(model)
    output = model.net.emotion_head.output_layer.kernel
    before, output_before = kernel.numpy().astype(np.float64), output.numpy().astype(np.float64)
    gradient, output_gradient = gradient_of(model, batch, kernel), gradient_of(model, batch, output)
    model.train_step(batch)
    np.testing.assert_allclose(kernel.numpy(), before - 1e-3 * gradient, rtol=0, atol=1e-7)
    np.testing.assert_allclose(output.numpy(), output_before - torch_adam_first_step(output_gradient, 5e-4),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("optimizers,learning_rate", [("reference", 0.05), ("paper", 5e-4)])
def test_a_reset_keeps_the_learning_rate_and_clears_the_state(optimizers: str, learning_rate: float) -> None:
    model = make_model(optimizers)
    model.train_step(planted_batch(8, 4))
    model.reset_cluster_classifier()
    classifier = next(group.optimizer for group in model.optimizer_groups if group.cluster_classifier)
    assert float(classifier.learning_rate.numpy()) == pytest.approx(learning_rate)
    assert int(classifier.iterations.numpy()) == 0
    slots = [v for v in classifier.variables if v is not classifier._learning_rate]
    assert all(not np.any(v.numpy()) for v in slots)


def test_reset_state_zeroes_slots_but_not_the_learning_rate() -> None:
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = TorchAdam(0.01)
    optimizer.build([variable])
    optimizer.apply([tf.ones(3)], [variable])
    reset_state(optimizer)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert int(optimizer.iterations.numpy()) == 0
    optimizer.apply([tf.ones(3)], [variable])
    np.testing.assert_allclose(variable.numpy(), 1 - 0.01 - 0.01 / (1 + 1e-8), rtol=1e-6)


def test_after_a_reset_the_cluster_classifier_learns_planted_clusters() -> None:
    """Stage I moves the classifier and leaves the emotion head exactly as it was; one short
    stage II on separable chunks brings the cluster CE far below chance (ln Q) and trains
    the emotion head."""
    model = make_model(dropout=0.5)
    stage = tf.data.Dataset.from_tensor_slices(planted_batch(16 * 30, 5)).batch(16)
    emotion = [v.numpy().copy() for v in model.net.emotion_head.trainable_variables]
    kernel = model.net.cluster_head.classifier.kernel

    model.reset_cluster_classifier()
    start = kernel.numpy().copy()
    model.set_stage(STAGE_I)
    model.fit(stage.take(5), epochs=1, verbose=0)
    assert np.abs(kernel.numpy() - start).max() > 1e-4, "the classifier kernel must move during a stage"
    for value, variable in zip(emotion, model.net.emotion_head.trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), value)

    model.reset_cluster_classifier()
    start = kernel.numpy().copy()
    model.set_stage(STAGE_II)
    model.fit(stage, epochs=1, verbose=0)
    assert np.abs(kernel.numpy() - start).max() > 1e-3
    held_out = tf.data.Dataset.from_tensor_slices(planted_batch(64, 6)).batch(16)
    cluster_ce = model.evaluate(held_out, verbose=0, return_dict=True)["cluster_ce"]
    assert cluster_ce < 0.5 * math.log(Q), cluster_ce
    assert any(np.abs(variable.numpy() - value).max() > 0
               for value, variable in zip(emotion, model.net.emotion_head.trainable_variables))
