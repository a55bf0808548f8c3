"""The converter's mapping into our layers, its refusals, and the encoder's reference padding."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.serving.convert_reference import ConversionError, main, net_from_state_dict, reference_variables
from model.nets.encoder import CONV_STRIDES, VGGChunkEncoder
from model.nets.emocluster_net import EmoClusterNet
from model.nets.variants import VARIANTS


def reference_state_dict(variant: str, clusters: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under the authors' state-dict keys and PyTorch shapes."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    channels_in = 1
    for i, channels in enumerate((32, 32, 64, 64, 128, 128, 128)):
        shapes[f"cnn_features.module.{3 * i}.weight"] = (channels, channels_in, 3, 3)
        shapes[f"cnn_features.module.{3 * i}.bias"] = (channels,)
        for key in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"cnn_features.module.{3 * i + 1}.{key}"] = (channels,)
        channels_in = channels
    shapes.update({"cnn_out.module.0.weight": (256, 1024), "cnn_out.module.0.bias": (256,),
                   "classifier.0.weight": (256, 256), "classifier.0.bias": (256,),
                   "top_layer_class.weight": (clusters, 256), "top_layer_class.bias": (clusters,),
                   "emo_regressor.0.weight": (256, 256), "emo_regressor.0.bias": (256,),
                   "top_layer_attri.weight": (1, 256), "top_layer_attri.bias": (1,)})
    if VARIANTS[variant].temporal == "cnn":
        for index, (out, into) in ((0, (16, 1)), (3, (1, 16))):
            shapes[f"temporal_net.{index}.weight"] = (out, into, 5, 5)
            shapes[f"temporal_net.{index}.bias"] = (out,)
            for key in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"temporal_net.{index + 1}.{key}"] = (out,)
    state = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = np.abs(state[key]) + 0.5
    state["cnn_features.module.1.num_batches_tracked"] = np.array(1404)
    return state


def test_the_first_dense_reads_the_reference_nchw_flatten() -> None:
    state = reference_state_dict("vanilla")
    net = net_from_state_dict(state, "vanilla")
    top = np.random.default_rng(1).standard_normal((1, 2, 4, 128)).astype(np.float32)  # NHWC [H=2, W=4, C=128]
    ours = net.encoder.dense(top.reshape(1, -1)).numpy()
    nchw = top.transpose(0, 3, 1, 2).reshape(1, -1)
    theirs = np.maximum(nchw @ state["cnn_out.module.0.weight"].T + state["cnn_out.module.0.bias"], 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_conv_and_linear_weights_land_transposed_in_their_layers() -> None:
    state = reference_state_dict("temp-cnn", clusters=30)
    net = net_from_state_dict(state, "temp-cnn")
    assert net.num_clusters == 30
    np.testing.assert_array_equal(net.encoder.blocks[2][0].kernel.numpy(),
                                  state["cnn_features.module.6.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(net.temporal.blocks[1][1].moving_variance.numpy(),
                                  state["temporal_net.4.running_var"])
    np.testing.assert_array_equal(net.emotion_head.hidden.kernel.numpy(), state["emo_regressor.0.weight"].T)
    np.testing.assert_array_equal(net.cluster_head.classifier.bias.numpy(), state["top_layer_class.bias"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("emo_regressor.0.bias"), "missing \\['emo_regressor.0.bias'\\]"),
    (lambda s: s.__setitem__("decoder.0.weight", np.zeros(3, np.float32)), "unused \\['decoder.0.weight'\\]"),
    (lambda s: s.__setitem__("cnn_out.module.0.weight", np.zeros((256, 512), np.float32)), "cnn_out.module.0"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_by_name(edit, message) -> None:
    state = reference_state_dict("temp-triplet")
    edit(state)
    with pytest.raises((ConversionError, ValueError), match=message):
        net_from_state_dict(state, "temp-triplet")


def test_every_reference_entry_of_a_temp_cnn_has_a_variable_and_back() -> None:
    net = EmoClusterNet(11, 62, 128, temporal="cnn", num_clusters=10)
    mapped = {id(variable) for variable, _ in reference_variables(net).values()}
    assert mapped == {id(v) for v in net.weights}


def test_the_encoder_pads_both_sides_as_pytorch_padding_1() -> None:
    """Stride-2 convs on even sizes: Keras 'same' pads (0, 1), the reference (1, 1)."""
    encoder = VGGChunkEncoder(256, 0.0)
    features = tf.random.stateless_normal((1, 2, 62, 128), seed=(1, 2))
    encoder.build(features.shape)
    for conv, norm in encoder.blocks:  # non-trivial BatchNorm so a misplaced pad shows
        norm.moving_mean.assign(tf.random.stateless_normal(norm.moving_mean.shape, seed=(3, 4)))
    x = tf.reshape(features, (-1, 62, 128, 1))
    for (conv, norm), stride in zip(encoder.blocks, CONV_STRIDES):
        y = tf.nn.conv2d(x, conv.kernel, stride, padding=[[0, 0], [1, 1], [1, 1], [0, 0]]) + conv.bias
        x = tf.nn.relu(norm(y, training=False))
    assert x.shape[1:] == (2, 4, 128)
    expected = tf.nn.relu(encoder.dense(tf.reshape(x, (-1, 1024))))
    np.testing.assert_allclose(encoder(features).numpy().reshape(-1, 256), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_the_command_refuses_a_source_without_models_and_a_checkpoint_that_runs_code(tmp_path: Path, capsys) -> None:
    import scipy.io

    assert main([str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    assert "no trained_models/" in capsys.readouterr().err
    (tmp_path / "trained_models").mkdir()
    (tmp_path / "NormTerm").mkdir()
    for name in ("feat_norm_means", "feat_norm_stds"):
        scipy.io.savemat(tmp_path / "NormTerm" / f"{name}.mat", {"normal_para": np.ones((1, 128))})
    for code in ("act", "val", "dom"):
        for stat in ("means", "stds"):
            scipy.io.savemat(tmp_path / "NormTerm" / f"{code}_norm_{stat}.mat", {"normal_para": np.ones((1, 1))})

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(tmp_path / 'ran')!r}, 'w')",)

    for code in ("Act", "Val", "Dom"):
        name = f"TempDeepEmoCluster_epoch30_batch64_10clusters_{code}_Temp-CNN.pth.tar"
        (tmp_path / "trained_models" / name).write_bytes(pickle.dumps(RunsCode(), protocol=2))
    assert main([str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    assert re.search(r"refusing to load (__builtin__|builtins)\.exec", capsys.readouterr().err)
    assert not (tmp_path / "ran").exists()
