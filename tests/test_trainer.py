"""trainer.py end to end on the tiny corpus: outputs, every variant, resume, data checks."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import trainer
from model.nets.variants import VARIANTS
from model.training.config import TrainConfig
from model.training.job_folder import same_run
from pipeline.params import ATTRIBUTES
from tests.fixtures.jobs import train_job

ROOT = Path(__file__).resolve().parent.parent


def history(job: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((job / "history.csv").open()))


def test_a_finished_job_writes_every_output(trained_job: Path) -> None:
    for name in ("config.json", "history.csv", "metrics.json", "model/saved_model.pb", "checkpoints/state.json"):
        assert (trained_job / name).exists(), name
    assert list((trained_job / "logs").rglob("events.out.tfevents.*"))
    metrics = json.loads((trained_job / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2)
    for split in ("dev", "test"):
        assert sorted(metrics[split]["ccc"]) == sorted(ATTRIBUTES)
        assert all(-1.0 <= v <= 1.0 for v in metrics[split]["ccc"].values())
    rows = history(trained_job)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("unlabeled_cluster_ce", "train_cluster_ce", "train_ccc_loss", "dev_ccc_arousal",
                   "train_cluster_entropy", "train_smallest_cluster", "train_nmi", "train_acceptance", "train_seconds",
                   "unlabeled_seconds_kmeans"):
        assert column in rows[0], column
    assert rows[0]["train_nmi"] == "nan" and 0.0 <= float(rows[1]["train_nmi"]) <= 1.0
    config = json.loads((trained_job / "config.json").read_text())
    assert config["config"]["model"] == "temp-gru" and config["versions"]["tensorflow"].startswith("2.21")


@pytest.mark.parametrize("model", sorted(VARIANTS))
@pytest.mark.parametrize("setting", ["fsl", "ssl"])
def test_every_model_and_setting_trains_and_exports(tmp_path: Path, tiny_features: Path, model: str,
                                                    setting: str) -> None:
    job = train_job(tiny_features, tmp_path / "job", "--model", model, "--setting", setting,
                    "--epochs", "1", "--batch-size", "6", "--attributes", "valence")
    metrics = json.loads((job / "metrics.json").read_text())
    assert list(metrics["dev"]["ccc"]) == ["valence"] and np.isfinite(metrics["test"]["ccc"]["valence"])
    row = history(job)[0]
    assert float(row["train_ccc_loss"]) > 0
    assert ("train_cluster_ce" in row) == VARIANTS[model].clustering
    assert ("train_triplet" in row) == VARIANTS[model].triplet
    unsupervised_task = VARIANTS[model].clustering or VARIANTS[model].reconstruction is not None
    assert ("unlabeled_loss" in row) == (setting == "ssl" and unsupervised_task)
    loaded = tf.saved_model.load(str(job / "model"))
    assert set(loaded.signatures["serving_default"].structured_outputs) == {"valence"}


def test_loss_goes_down_over_a_few_epochs_on_the_demo_corpus(tmp_path: Path, demo_root: Path) -> None:
    from pipeline.__main__ import main as pipeline_main
    from tests.fixtures.corpora import make_msp_subset
    from tests.fixtures.jobs import SMALL_GEOMETRY

    corpus = make_msp_subset(tmp_path / "corpus", 48, 12, 6, 0, seed=1, source=demo_root)
    assert pipeline_main(["--corpus", "msp-podcast", "--data-root", str(corpus), "--output",
                          str(tmp_path / "features"), *SMALL_GEOMETRY]) == 0
    # Ten times the paper's learning rates: 24 steps are far fewer than the paper's ~20K.
    job = train_job(tmp_path / "features", tmp_path / "job", "--model", "temp-gru", "--attributes", "all",
                    "--epochs", "4", "--batch-size", "8", "--encoder-lr", "0.01", "--output-lr", "0.005")
    losses = [float(row["train_ccc_loss"]) for row in history(job)]
    assert losses[-1] < losses[0] - 0.05, losses


def _trainer_command(data: Path, job: Path, epochs: int) -> list[str]:
    return [sys.executable, str(ROOT / "trainer.py"), "--data-dir", str(data), "--job-dir", str(job),
            "--model", "temp-triplet", "--setting", "ssl", "--attributes", "all", "--epochs", str(epochs),
            "--batch-size", "6", "--quiet"]


def _environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def test_a_killed_run_resumes_from_its_last_stage_and_finishes_like_an_uninterrupted_one(
        tmp_path: Path, tiny_features: Path) -> None:
    reference = tmp_path / "reference"
    subprocess.run(_trainer_command(tiny_features, reference, 3), env=_environment(), check=True,
                   capture_output=True)

    job = tmp_path / "killed"
    process = subprocess.Popen(_trainer_command(tiny_features, job, 3), env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = job / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())
    assert not (job / "metrics.json").exists()

    resumed = subprocess.run(_trainer_command(tiny_features, job, 3), env=_environment(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from epoch {killed_at['epoch'] + 1}" in resumed.stdout
    got, expected = history(job), history(reference)
    assert [r["epoch"] for r in got] == ["1", "2", "3"]
    for column in ("train_loss", "dev_ccc_mean", "train_triplet"):
        np.testing.assert_allclose([float(r[column]) for r in got], [float(r[column]) for r in expected],
                                   rtol=1e-4, atol=1e-5, err_msg=column)
    assert json.loads((job / "metrics.json").read_text())["test"]["ccc"] == pytest.approx(
        json.loads((reference / "metrics.json").read_text())["test"]["ccc"], rel=1e-4, abs=1e-5)


def _copy_data(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def _edit_metadata(data: Path, edit) -> None:
    path = data / "metadata.json"
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(schema_version=99), "schema version 99"),
    (lambda m: m.update(num_chunks=11), "num_chunks is 11"),
    (lambda m: m["splits"]["dev"].update(count=0), "split 'dev' is empty"),
    (lambda m: m["splits"].pop("unlabeled"), "split 'unlabeled' is missing"),
])
def test_metadata_mismatch_is_a_clear_error(tmp_path: Path, tiny_features: Path, capsys, edit, message) -> None:
    data = _copy_data(tiny_features, tmp_path / "data")
    _edit_metadata(data, edit)
    status = trainer.main(["--data-dir", str(data), "--job-dir", str(tmp_path / "job"), "--model", "temp-cnn",
                           "--setting", "ssl", "--epochs", "1", "--quiet"])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_a_job_dir_of_another_run_is_refused(tmp_path: Path, trained_job: Path, tiny_features: Path,
                                             capsys) -> None:
    job = tmp_path / "job"
    shutil.copytree(trained_job, job)
    status = trainer.main(["--data-dir", str(tiny_features), "--job-dir", str(job), "--model", "vanilla",
                           "--quiet"])
    assert status == 2 and "holds a run with other settings" in capsys.readouterr().err


def test_a_run_recorded_before_a_setting_existed_is_the_same_run() -> None:
    """A config.json written before a setting was added ran with its default: resuming that job
    is the same run; a recorded value other than the default is not."""
    config = TrainConfig(model="vanilla").to_dict()
    record = {"config": config, "data_metadata_sha256": "abc"}
    older = {key: value for key, value in config.items() if key != "keep_activations"}
    assert same_run({"config": older, "data_metadata_sha256": "abc"}, record)
    assert not same_run({"config": {**older, "keep_activations": True}, "data_metadata_sha256": "abc"}, record)
    assert not same_run({"config": {**older, "epochs": 3}, "data_metadata_sha256": "abc"}, record)
    assert not same_run({"config": older, "data_metadata_sha256": "other"}, record)


def _poison_labels(data: Path) -> None:
    """Rewrites the train records with non-finite labels, as a diverging run would produce."""
    for shard in data.glob("train-*.tfrecord.gz"):
        examples = []
        for record in tf.data.TFRecordDataset(str(shard), compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            example.features.feature["labels"].float_list.value[:] = [float("nan")] * len(ATTRIBUTES)
            examples.append(example.SerializeToString())
        with tf.io.TFRecordWriter(str(shard), "GZIP") as writer:
            for example in examples:
                writer.write(example)


def test_a_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
        tmp_path: Path, tiny_features: Path, capsys) -> None:
    data = _copy_data(tiny_features, tmp_path / "data")
    _poison_labels(data)
    job = tmp_path / "job"
    status = trainer.main(["--data-dir", str(data), "--job-dir", str(job), "--model", "temp-gru", "--setting",
                           "ssl", "--epochs", "2", "--batch-size", "6", "--quiet"])
    assert status == 1
    error = capsys.readouterr().err
    assert "non-finite loss in epoch 1, stage train" in error
    state = json.loads((job / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["stage"]) == (0, 1), "only stage I (unlabeled) completed"
    assert Path(state["checkpoint"]).name in error
    reader = tf.train.load_checkpoint(state["checkpoint"])
    assert all(np.all(np.isfinite(reader.get_tensor(name))) for name, dtype in
               reader.get_variable_to_dtype_map().items() if dtype.is_floating)
