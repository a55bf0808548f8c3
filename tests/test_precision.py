"""The mixed_bfloat16 option: bfloat16 conv blocks, float32 everything else, same parameters."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer

from model.training.train_step import DeepEmoCluster
from model.nets.emocluster_net import EmoClusterNet
from model.training.config import TrainConfig

C, M, N_MELS, BATCH = 4, 16, 32, 4


def _features(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((BATCH, C, M, N_MELS)).astype("float32")


def _net(precision: str, seed: int = 3) -> EmoClusterNet:
    keras.utils.set_random_seed(seed)
    return EmoClusterNet(C, M, N_MELS, temporal="gru", num_clusters=5, precision=precision)


def test_bfloat16_conv_blocks_with_float32_variables_and_outputs() -> None:
    reference, mixed = _net("float32"), _net("mixed_bfloat16")
    assert mixed.count_params() == reference.count_params()
    assert {v.dtype for v in mixed.variables if "float" in v.dtype} == {"float32"}
    for conv, norm in mixed.encoder.blocks:
        assert conv.compute_dtype == norm.compute_dtype == "bfloat16"
    assert mixed.encoder.dense.compute_dtype == "float32"
    outputs = mixed(_features())
    assert {str(v.dtype) for v in outputs.values()} == {"<dtype: 'float32'>"}
    expected = reference(_features())
    # Same initial weights; bfloat16 keeps about 3 significant digits in the conv stack.
    np.testing.assert_allclose(outputs["embeddings"], expected["embeddings"], atol=0.05 * float(
        np.abs(expected["embeddings"]).max()))


def test_batch_norm_statistics_stay_float32() -> None:
    mixed = _net("mixed_bfloat16")
    mixed(_features(), training=True)
    norm = mixed.encoder.blocks[0][1]
    assert norm.moving_mean.dtype == norm.moving_variance.dtype == "float32"
    assert float(tf.reduce_max(tf.abs(norm.moving_mean))) > 0


def test_keras_round_trip_keeps_precision(tmp_path) -> None:
    mixed = _net("mixed_bfloat16")
    path = str(tmp_path / "mixed.keras")
    mixed.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.precision == "mixed_bfloat16"
    assert loaded.encoder.blocks[1][0].compute_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded(_features())["predictions"], mixed(_features())["predictions"])


def test_training_step_updates_float32_weights() -> None:
    config = TrainConfig(model="temp-gru", batch_size=BATCH, clusters=5, precision="mixed_bfloat16")
    model = DeepEmoCluster(config, _net("mixed_bfloat16"))
    model.compile()
    kernel = model.net.encoder.blocks[1][0].kernel
    before = kernel.numpy().copy()
    batch = {"features": tf.constant(_features()), "targets": tf.constant(np.linspace(-1, 1, BATCH)[:, None], tf.float32),
             "cluster_labels": tf.constant(np.arange(BATCH * C).reshape(BATCH, C) % 5, tf.int32)}
    history = model.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert kernel.dtype == "float32" and not np.array_equal(kernel.numpy(), before)


@pytest.mark.parametrize("model", ["ae", "vae", "ladder"])
def test_reconstruction_baselines_reject_bfloat16(model: str) -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(model=model, precision="mixed_bfloat16")


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")


def test_trainer_flag_reaches_the_config() -> None:
    args = trainer.build_parser().parse_args(["--data-dir", "D", "--job-dir", "J", "--model", "temp-gru", "--precision", "mixed_bfloat16"])
    assert trainer.config_from_args(args).precision == "mixed_bfloat16"
    with pytest.raises(SystemExit):
        trainer.build_parser().parse_args(["--data-dir", "D", "--job-dir", "J", "--model", "temp-gru", "--precision", "float16"])
