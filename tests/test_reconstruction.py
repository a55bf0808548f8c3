"""The reconstruction baselines (CNN-AE, CNN-VAE, CNN-LadderNet): shapes, losses, SSL, export."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.training.datasets import inference_batches
from model.nets.decoder import VGGChunkDecoder, level_shapes
from model.training.train_step import DeepEmoCluster
from model.training.job_folder import TrainedJob, load_job
from model.nets.emocluster_net import EmoClusterNet
from model.nets.reconstruction import AE, LADDER, VAE, ReconstructionNet
from model.training.config import TrainConfig
from model.training.algorithm import Trainer
from model.training.job_folder import JobPaths
from pipeline.metadata import Metadata
from tests.fixtures.jobs import train_job

KINDS = (AE, VAE, LADDER)


def _features(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _history(job: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((job / "history.csv").open()))


@pytest.mark.parametrize("frames,n_mels", [(62, 128), (31, 128), (17, 33)])
def test_decoder_estimates_every_encoder_level_down_to_the_input_chunk(frames: int, n_mels: int) -> None:
    decoder = VGGChunkDecoder(frames, n_mels)
    decoder.build((None, 256))
    estimates = decoder(tf.zeros([3, 256]))
    assert [tuple(e.shape) for e in estimates] == [(3, *shape) for shape in level_shapes(frames, n_mels)]
    assert tuple(estimates[0].shape) == (3, frames, n_mels, 1)
    assert level_shapes(62, 128)[-1] == (2, 4, 128), "the encoder's 2 x 4 x 128 top map"


@pytest.mark.parametrize("kind", KINDS)
def test_inference_runs_only_the_encoder_and_the_emotion_head(tmp_path: Path, kind: str) -> None:
    net = ReconstructionNet(4, 31, 128, kind=kind, num_attributes=2)
    features = _features((2, 4, 31, 128))
    outputs = net(features, training=False)
    assert set(outputs) == {"embeddings", "hidden", "chunk_predictions", "predictions"}
    head_input = outputs["embeddings"] if kind != VAE else net.latent.mean(outputs["embeddings"])
    np.testing.assert_allclose(outputs["predictions"], np.mean(net.emotion_head(head_input), axis=1), atol=1e-6)
    training = net(features, training=True)
    assert tuple(training["predictions"].shape) == (2, 2)
    assert sorted(training["auxiliary_losses"]) == sorted(net.auxiliary_loss_names)
    regressor = EmoClusterNet(4, 31, 128, num_clusters=None, num_attributes=2)
    inference_parts = [net.encoder, net.emotion_head] + ([net.latent.mean] if kind == VAE else [])
    extra = 256 * 256 + 256 if kind == VAE else 0
    assert sum(part.count_params() for part in inference_parts) == regressor.count_params() + extra
    encoder, output = net.encoder_variables(), net.output_variables()
    assert {id(v) for v in encoder}.isdisjoint(id(v) for v in output)
    assert len(encoder) + len(output) == len(net.trainable_variables)
    net.save(tmp_path / "net.keras")
    restored = keras.saving.load_model(tmp_path / "net.keras")
    assert restored.get_config() == net.get_config()
    np.testing.assert_array_equal(restored(features)["predictions"], net(features)["predictions"])


def test_the_noisy_ladder_path_without_noise_is_the_clean_encoder() -> None:
    net = ReconstructionNet(4, 31, 128, kind=LADDER, encoder_dropout=0.0, ladder_noise=0.0)
    features = _features((3, 4, 31, 128), seed=1)
    noisy = net(features, training=True)["predictions"]
    clean = np.mean(net.emotion_head(net.encoder(features, training=True)), axis=1)
    np.testing.assert_allclose(noisy, clean, atol=1e-5)


def _tiny_batch(data_dir: Path) -> dict[str, tf.Tensor]:
    metadata = Metadata.load(str(data_dir))
    batch = next(iter(inference_batches(str(data_dir), "train", metadata.params, 4, keys=("features", "labels"))))
    targets = metadata.label_stats.normalise(batch["labels"][:, :1], ("arousal",))
    return {"features": batch["features"], "targets": targets}


@pytest.mark.parametrize("kind", KINDS)
def test_each_loss_term_decreases_on_a_tiny_batch(tiny_features: Path, kind: str) -> None:
    keras.utils.set_random_seed(0)
    metadata = Metadata.load(str(tiny_features))
    config = TrainConfig(model=kind, encoder_lr=0.01, output_lr=0.005)
    net = ReconstructionNet.for_params(metadata.params, kind=kind)
    model = DeepEmoCluster(config, net)
    model.compile()
    # One step per epoch: Keras resets the trackers every epoch, so the history holds each step's values.
    history = model.fit(tf.data.Dataset.from_tensors(_tiny_batch(tiny_features)), epochs=10, verbose=0).history
    assert set(history) == {"loss", "ccc_loss", *net.auxiliary_loss_names}
    terms = ["ccc_loss", *net.auxiliary_loss_names]
    if kind == VAE:
        # KL starts at ~0 (the posterior starts at the prior) and grows as the latent carries
        # information: the ELBO it belongs to is what decreases.
        assert all(math.isfinite(v) and v >= 0 for v in history["kl"])
        history["elbo"] = list(np.add(history["reconstruction"], history["kl"]))
        terms = ["ccc_loss", "reconstruction", "elbo"]
    for term in terms:
        assert history[term][-1] < history[term][0], (term, history[term])


def test_ssl_trains_the_reconstruction_on_every_unlabelled_batch(tiny_features: Path, tmp_path: Path) -> None:
    job = train_job(tiny_features, tmp_path / "job", "--model", AE, "--setting", "ssl", "--epochs", "1",
                    "--batch-size", "4", "--reconstruction-weight", "0.5")
    row = _history(job)[0]
    for column in ("unlabeled_loss", "unlabeled_reconstruction", "train_reconstruction", "train_ccc_loss"):
        assert math.isfinite(float(row[column])), column
    assert "unlabeled_ccc_loss" not in row, "stage I has no emotion term"
    _assert_serving_equals_trained(job)
    config = TrainConfig.from_dict(json.loads((job / "config.json").read_text())["config"])
    assert config.reconstruction_weight == 0.5 and config.uses_unlabeled
    metadata = Metadata.load(str(tiny_features))
    trainer = Trainer(config, str(tiny_features), JobPaths.resolve(str(job), environ={}), metadata, verbose=0)
    assert trainer.restore()
    unlabeled_steps = math.ceil(metadata.splits["unlabeled"].count / 4)
    train_steps = math.ceil(metadata.splits["train"].count / 4)
    assert unlabeled_steps > 0
    # The reference's set-up: SGD steps both stages, Adam only the labelled one.
    assert int(trainer.model.optimizer_named("sgd").iterations.numpy()) == unlabeled_steps + train_steps
    assert int(trainer.model.optimizer_named("adam").iterations.numpy()) == train_steps


@pytest.mark.parametrize("kind,flags", [
    (VAE, ["--kl-weight", "0.5"]),
    (LADDER, ["--ladder-noise", "0.2", "--ladder-weights", "1,0.5,0.5,0.1,0.1,0.1,0.1,0.1"]),
])
def test_flags_reach_the_network_and_the_export_predicts_as_it(tiny_features: Path, tmp_path: Path, kind: str,
                                                            flags: list[str]) -> None:
    job = train_job(tiny_features, tmp_path / "job", "--model", kind, "--epochs", "1", "--batch-size", "4", *flags)
    assert "train_" + ("kl" if kind == VAE else "denoising") in _history(job)[0]
    trained = _assert_serving_equals_trained(job)
    expected_net = {VAE: {"kl_weight": 0.5},
                    LADDER: {"ladder_noise": 0.2, "ladder_weights": (1.0, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1)}}[kind]
    assert {name: getattr(trained.net, name) for name in expected_net} == expected_net


def _assert_serving_equals_trained(job: Path) -> TrainedJob:
    """The SavedModel's ``serving_default`` against the job's best network rebuilt by ``load_job``."""
    trained = load_job(str(job))
    features = next(iter(inference_batches(trained.data_dir, "test", trained.metadata.params, 6,
                                           keys=("features",))))["features"]
    served = tf.saved_model.load(str(job / "model")).signatures["serving_default"](features=features)
    mean, std = trained.metadata.label_stats.vectors(trained.config.attributes)
    expected = trained.net(features, training=False)["predictions"].numpy() * std + mean
    for i, attribute in enumerate(trained.config.attributes):
        np.testing.assert_allclose(served[attribute].numpy(), expected[:, i], atol=1e-4)
    return trained
