"""Encoder, temporal nets, heads and EmoClusterNet: shapes, parameter counts, init, serialisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.nets.encoder import FusedBatchNorm, SymmetricConv2D, VGGChunkEncoder
from model.nets.heads import ClusterHead
from model.nets.losses import cluster_cross_entropy
from model.nets.emocluster_net import EmoClusterNet
from model.nets.temporal import TEMPORAL_KINDS, build_temporal_net, sinusoidal_encoding
from pipeline.params import FeatureParams

C, M, N_MELS, BATCH = 4, 16, 32, 3

# Trainable parameters of the reference's PyTorch modules (REFERENCE.md; the temporal nets
# are torch.nn.GRU(256, 128, bidirectional=True): 296,448; the two Conv2d 5x5 + BN: 851;
# TransformerEncoderLayer(256, 1, 256): 395,776).
REFERENCE_COUNTS = {"none": 831_979, "gru": 831_979 + 296_448, "cnn": 831_979 + 851, "trans": 831_979 + 395_776}


def _features(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((BATCH, C, M, N_MELS)).astype("float32")


def _count(variables: list) -> int:
    return sum(math.prod(v.shape) for v in variables)


@pytest.fixture(scope="module")
def reference_models() -> dict[str, EmoClusterNet]:
    return {kind: EmoClusterNet.for_params(FeatureParams(), temporal=kind) for kind in TEMPORAL_KINDS}


@pytest.mark.parametrize("temporal", TEMPORAL_KINDS)
@pytest.mark.parametrize("num_clusters", [7, None])
def test_output_shapes(temporal: str, num_clusters: int | None) -> None:
    model = EmoClusterNet(C, M, N_MELS, temporal=temporal, num_clusters=num_clusters, num_attributes=3)
    outputs = {k: np.asarray(v) for k, v in model(_features()).items()}
    expected = {"embeddings": (BATCH, C, 256), "hidden": (BATCH, C, 256),
                "chunk_predictions": (BATCH, C, 3), "predictions": (BATCH, 3)}
    if num_clusters:
        expected.update(cluster_features=(BATCH, C, 256), cluster_logits=(BATCH, C, num_clusters))
    assert {k: v.shape for k, v in outputs.items()} == expected
    np.testing.assert_allclose(outputs["predictions"], outputs["chunk_predictions"].mean(axis=1), rtol=1e-6)
    if temporal == "none":
        np.testing.assert_array_equal(outputs["hidden"], outputs["embeddings"])
    else:
        assert not np.allclose(outputs["hidden"], outputs["embeddings"])


def test_reference_parameter_counts(reference_models: dict[str, EmoClusterNet]) -> None:
    vanilla = reference_models["none"]
    encoder = vanilla.encoder
    assert _count(encoder.dense.trainable_variables) == 262_400
    assert encoder.dense.kernel.shape == (1024, 256)
    assert _count(encoder.trainable_variables) - 262_400 == 435_168
    assert _count(vanilla.cluster_head.hidden.trainable_variables) == 65_792
    assert _count(vanilla.cluster_head.classifier_variables) == 2_570
    assert _count(vanilla.emotion_head.trainable_variables) == 65_792 + 257
    assert {kind: _count(m.trainable_variables) for kind, m in reference_models.items()} == REFERENCE_COUNTS


def test_reference_initialisation(reference_models: dict[str, EmoClusterNet]) -> None:
    model = reference_models["cnn"]
    convs = [conv for conv, _ in model.encoder.blocks + model.temporal.blocks]
    for conv in convs:
        kernel = np.asarray(conv.kernel)
        k, filters = kernel.shape[0], kernel.shape[-1]
        assert kernel.std() == pytest.approx(math.sqrt(2 / (k * k * filters)), rel=0.15)
        assert not np.any(np.asarray(conv.bias))
    for dense in (model.encoder.dense, model.cluster_head.hidden, model.emotion_head.hidden):
        assert np.asarray(dense.kernel).std() == pytest.approx(0.01, rel=0.05)
        assert not np.any(np.asarray(dense.bias))
    norms = [norm for _, norm in model.encoder.blocks + model.temporal.blocks]
    assert all(isinstance(n, FusedBatchNorm) and n.momentum == 0.9 and n.epsilon == 1e-5 for n in norms)


def test_encoder_processes_every_chunk_independently() -> None:
    encoder = VGGChunkEncoder()
    x = _features()
    encoder.build(x.shape)
    together = np.asarray(encoder(x))
    alone = np.asarray(encoder(x[:, 2:3]))
    np.testing.assert_allclose(together[:, 2], alone[:, 0], rtol=1e-5, atol=1e-6)
    assert together.shape == (BATCH, C, 256)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convolutions_take_a_padding_form_onednn_runs(dtype: str) -> None:
    """Explicit paddings have no oneDNN bfloat16 kernel (TensorFlow's fallback made the bfloat16
    step 30x slower) and are 2x slower than "SAME" in float32 where both are the reference's."""
    def padding_of(conv: SymmetricConv2D, shape: tuple[int, ...]) -> list[bytes]:
        traced = tf.function(conv).get_concrete_function(tf.TensorSpec(shape, dtype))
        return [op.get_attr("padding") for op in traced.graph.get_operations() if op.type == "Conv2D"]

    stride_1, stride_2 = (SymmetricConv2D(8, 3, strides=s, dtype=dtype) for s in (1, 2))
    assert padding_of(stride_1, (2, 62, 128, 4)) == [b"SAME"]
    assert padding_of(stride_2, (2, 62, 128, 4)) == [b"VALID" if dtype == "bfloat16" else b"EXPLICIT"]
    assert padding_of(stride_2, (2, 31, 64, 4)) == [b"VALID" if dtype == "bfloat16" else b"EXPLICIT"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_kernels_take_forms_that_are_fast_without_costing_memory(dtype: str) -> None:
    """oneDNN runs no backward conv with explicit paddings: the input gradient goes to a padded map
    and is cropped; the float32 kernel gradient takes TensorFlow's explicit-padding kernel rather
    than an odd-sized padded copy (which fragments the memory pool), the bfloat16 one a padded copy
    (TensorFlow's bfloat16 kernel is 30x slower); the float32 bias gradient is of flattened maps,
    which keeps TensorFlow from fusing it into oneDNN's slower fused kernel gradient."""
    def kernels(strides: int, shape: tuple[int, ...]) -> tuple[dict[str, bytes], list[int], int]:
        backprop = SymmetricConv2D(8, 3, strides=strides, dtype=dtype).backprop(tf.TensorShape(shape), tf.as_dtype(dtype))

        @tf.function
        def gradients(inputs: tf.Tensor, output_gradient: tf.Tensor) -> tuple[tf.Tensor, ...]:
            return backprop.gradients(inputs, tf.zeros([3, 3, shape[3], 8], dtype), output_gradient)

        outputs = [-(-size // strides) for size in shape[1:3]]
        graph = gradients.get_concrete_function(tf.TensorSpec([None, *shape[1:]], dtype),
                                                tf.TensorSpec([None, *outputs, 8], dtype)).graph
        ops = graph.get_operations()
        paddings = {op.type: op.get_attr("padding") for op in ops if op.type.startswith("Conv2DBackprop")}
        bias_ranks = [op.inputs[0].shape.rank for op in ops if op.type == "BiasAddGrad"]
        return paddings, bias_ranks, sum(op.type == "Pad" for op in ops)

    bias_rank, kernel_form, copies = (2, b"EXPLICIT", 0) if dtype == "float32" else (4, b"VALID", 1)
    same = {"Conv2DBackpropInput": b"SAME", "Conv2DBackpropFilter": b"SAME"}
    assert kernels(1, (2, 62, 128, 4)) == (same, [bias_rank], 0)
    padded = {"Conv2DBackpropInput": b"VALID", "Conv2DBackpropFilter": kernel_form}
    assert kernels(2, (2, 62, 128, 4)) == (padded, [bias_rank], copies)
    assert kernels(2, (2, 31, 64, 4)) == (padded, [bias_rank], copies)


def test_fused_batch_norm_matches_keras_and_keeps_pytorch_running_variance() -> None:
    x = np.random.default_rng(1).normal(1.0, 2.0, (6, 5, 7, 3)).astype("float32")
    fused = FusedBatchNorm(momentum=0.9, epsilon=1e-5)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (fused, plain):
        layer.build(x.shape)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-5)
    flat = x.reshape(-1, 3).astype("float64")
    np.testing.assert_allclose(fused.moving_mean, 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    expected = (x - np.asarray(fused.moving_mean)) / np.sqrt(np.asarray(fused.moving_variance) + 1e-5)
    np.testing.assert_allclose(fused(x, training=False), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "cnn", "trans"])
def test_temporal_nets_mix_chunks(kind: str) -> None:
    net = build_temporal_net(kind)
    x = np.random.default_rng(2).standard_normal((BATCH, C, 256)).astype("float32")
    net.build(x.shape)
    changed = x.copy()
    changed[:, 1] += 1.0
    before, after = np.asarray(net(x)), np.asarray(net(changed))
    assert before.shape == x.shape
    assert not np.allclose(before[:, 0], after[:, 0])


def test_gru_is_bidirectional_pytorch_formulation() -> None:
    gru = build_temporal_net("gru")
    assert gru.merge_mode == "concat"
    layer = gru.forward_layer
    assert (layer.units, layer.reset_after, layer.activation.__name__) == (128, True, "tanh")


def test_sinusoidal_encoding_matches_formula() -> None:
    length, depth = 5, 8
    pos = np.arange(length)[:, None]
    angle = pos / 10000 ** (np.arange(0, depth, 2) / depth)
    expected = np.zeros((length, depth))
    expected[:, 0::2], expected[:, 1::2] = np.sin(angle), np.cos(angle)
    np.testing.assert_allclose(sinusoidal_encoding(length, depth), expected, atol=1e-5)


def test_transformer_is_post_layer_norm() -> None:
    net = build_temporal_net("trans")
    out = np.asarray(net(np.random.default_rng(3).standard_normal((BATCH, C, 256)).astype("float32")))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)


def test_unknown_temporal_net_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown temporal net"):
        build_temporal_net("lstm")


@pytest.mark.parametrize("temporal", TEMPORAL_KINDS)
def test_variable_groups_are_disjoint_and_complete(temporal: str) -> None:
    model = EmoClusterNet(C, M, N_MELS, temporal=temporal)
    encoder, output = {id(v) for v in model.encoder_variables()}, {id(v) for v in model.output_variables()}
    assert not encoder & output
    assert encoder | output == {id(v) for v in model.trainable_variables}
    assert encoder == {id(v) for v in model.encoder.trainable_variables}


def test_reset_classifier_in_a_built_model_with_a_fresh_optimizer() -> None:
    model = EmoClusterNet(C, M, N_MELS, temporal="gru", num_clusters=5)
    head: ClusterHead = model.cluster_head
    old_ids = {id(v) for v in head.classifier_variables}
    head.classifier.bias.assign(np.ones(5, "float32"))
    old_kernel = np.asarray(head.classifier.kernel)
    head.reset_classifier()
    assert old_ids == {id(v) for v in head.classifier_variables}, "same Q: re-initialised in place"
    assert not np.allclose(np.asarray(head.classifier.kernel), old_kernel)
    np.testing.assert_array_equal(np.asarray(head.classifier.bias), np.zeros(5))
    assert head.classifier.kernel.path.endswith("cluster_head/classifier/kernel")

    optimizer = keras.optimizers.Adam(5e-4)
    optimizer.build(model.output_variables())
    head.reset_classifier(num_clusters=9)
    assert not old_ids & {id(v) for v in model.trainable_variables}
    assert model.num_clusters == 9 and model.get_config()["num_clusters"] == 9
    assert _count(head.classifier_variables) == 256 * 9 + 9
    labels = np.zeros((BATCH, C), "int32")

    def gradients() -> list:
        with tf.GradientTape() as tape:
            outputs = model(_features(), training=True)
            loss = cluster_cross_entropy(labels, outputs["cluster_logits"]) + tf.reduce_mean(outputs["predictions"])
        return tape.gradient(loss, model.output_variables())

    with pytest.raises(ValueError, match="Unknown variable"):
        optimizer.apply(gradients(), model.output_variables())
    before = np.asarray(head.classifier.kernel)
    fresh = keras.optimizers.Adam(5e-4)
    fresh.apply(gradients(), model.output_variables())
    assert not np.allclose(np.asarray(head.classifier.kernel), before)


@pytest.mark.parametrize("temporal,num_clusters", [("none", 6), ("gru", 6), ("cnn", None), ("trans", 6)])
def test_keras_round_trip_gives_identical_outputs(tmp_path, temporal: str, num_clusters: int | None) -> None:
    model = EmoClusterNet(C, M, N_MELS, temporal=temporal, num_clusters=num_clusters, num_attributes=3)
    model(_features(1), training=True)  # moves the BatchNorm statistics off their initial values
    if num_clusters:
        model.cluster_head.reset_classifier(num_clusters + 2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, EmoClusterNet) and loaded.get_config() == model.get_config()
    expected, actual = model(_features()), loaded(_features())
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


def test_for_params_reads_the_feature_shape() -> None:
    params = FeatureParams(max_seconds=4.0, chunk_seconds=0.25, n_mels=32)
    model = EmoClusterNet.for_params(params, num_clusters=None)
    assert (model.num_chunks, model.chunk_frames, model.n_mels) == params.feature_shape
    assert model.cluster_head is None and model.num_clusters is None
