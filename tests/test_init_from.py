"""``trainer.py --init-from pretrained/<release>``: fine-tuning starts from the release's network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import trainer
from model.training.config import TrainConfig
from model.training.algorithm import Trainer
from model.training.job_folder import JobPaths
from pipeline.metadata import Metadata

RELEASE = Path(__file__).resolve().parent.parent / "pretrained" / "msp-podcast-v1.8-temp-cnn"


@pytest.fixture(scope="module")
def reference_geometry_features(tmp_path_factory: pytest.TempPathFactory, tiny_msp_corpus: Path) -> Path:
    """The tiny corpus through the pipeline with the default (reference, i.e. the release's) settings."""
    from pipeline.__main__ import main

    output = tmp_path_factory.mktemp("reference_geometry") / "out"
    assert main(["--corpus", "msp-podcast", "--data-root", str(tiny_msp_corpus), "--output", str(output)]) == 0
    return output


def test_a_fine_tune_starts_from_the_release_network_of_its_attribute(
        tmp_path: Path, reference_geometry_features: Path) -> None:
    config = TrainConfig(model="temp-cnn", attributes=("valence",), epochs=1, batch_size=4)
    metadata = Metadata.load(str(reference_geometry_features))
    run = Trainer(config, str(reference_geometry_features), JobPaths.resolve(str(tmp_path / "job")), metadata,
                  verbose=0, init_from=str(RELEASE))
    saved = tf.saved_model.load(str(RELEASE)).net.weights
    net = run.model.net
    parts = {"encoder": net.encoder, "temporal": net.temporal, "cluster_hidden": net.cluster_head.hidden,
             "cluster_classifier": net.cluster_head.classifier, "emotion_head": net.emotion_head}
    for part, layer in parts.items():
        for i, variable in enumerate(layer.weights):
            np.testing.assert_array_equal(variable.numpy(), getattr(getattr(saved["valence"], part), f"v{i:04d}"))
    # the valence network, not another attribute's
    (index,) = [i for i, v in enumerate(net.encoder.weights) if v is net.encoder.dense.kernel]
    assert not np.array_equal(net.encoder.dense.kernel.numpy(), getattr(saved["arousal"].encoder, f"v{index:04d}"))


def test_data_with_other_feature_settings_is_a_clear_error(tmp_path: Path, tiny_features: Path, capsys) -> None:
    status = trainer.main(["--data-dir", str(tiny_features), "--job-dir", str(tmp_path / "job"), "--model",
                           "temp-cnn", "--attributes", "arousal", "--init-from", str(RELEASE)])
    error = capsys.readouterr().err
    assert status == 2 and "feature settings differ" in error and "max_seconds: data 2.0, release 11.0" in error


def test_a_model_with_another_temporal_net_is_a_clear_error(tmp_path: Path, reference_geometry_features: Path,
                                                            capsys) -> None:
    status = trainer.main(["--data-dir", str(reference_geometry_features), "--job-dir", str(tmp_path / "job"),
                           "--model", "temp-gru", "--attributes", "arousal", "--init-from", str(RELEASE)])
    assert status == 2 and "temporal net" in capsys.readouterr().err


def test_a_multitask_run_cannot_start_from_a_release_of_single_attribute_networks(
        tmp_path: Path, reference_geometry_features: Path, capsys) -> None:
    status = trainer.main(["--data-dir", str(reference_geometry_features), "--job-dir", str(tmp_path / "job"),
                           "--model", "temp-cnn", "--attributes", "all", "--init-from", str(RELEASE)])
    assert status == 2 and "one attribute per model" in capsys.readouterr().err
