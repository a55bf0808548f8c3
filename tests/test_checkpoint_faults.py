"""Checkpoints survive a kill at any moment and restore completely or not at all (issue 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import trainer
from model.jobs import JobError, load_job
from model.training import TrainingError, restore_checkpoint, training_checkpoint, variables_checkpoint
from tests.fixtures.jobs import train_job

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ARGS = ("--model", "temp-triplet", "--setting", "ssl", "--attributes", "all", "--epochs", "1",
              "--batch-size", "6")

KILLED_IN_A_WRITE = """
import os, signal, sys
import tensorflow as tf
import trainer

write, calls = tf.train.Checkpoint.write, 0

def write_then_die(self, file_prefix, options=None):
    # SIGKILL as if it came while TensorFlow wrote the index: the checkpoint files are
    # there, the index is cut in half, and nothing after it runs.
    global calls
    calls += 1
    path = write(self, file_prefix, options)
    if calls == int(os.environ["KILL_AT_WRITE"]):
        index = path + ".index"
        with open(index, "r+b") as handle:
            handle.truncate(os.path.getsize(index) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return path

tf.train.Checkpoint.write = write_then_die
sys.exit(trainer.main(sys.argv[1:]))
"""


def _count_writes(monkeypatch) -> list[str]:
    written: list[str] = []
    write = tf.train.Checkpoint.write

    def counted(self, file_prefix, options=None):
        written.append(Path(file_prefix).name)
        return write(self, file_prefix, options)

    monkeypatch.setattr(tf.train.Checkpoint, "write", counted)
    return written


def test_a_kill_during_the_last_checkpoint_write_leaves_a_resumable_job(tmp_path: Path, tiny_features: Path,
                                                                        monkeypatch) -> None:
    """The run's last save once rewrote the checkpoint state.json named: killed there, no later
    run could restore it ("not an sstable")."""
    written = _count_writes(monkeypatch)
    reference = train_job(tiny_features, tmp_path / "reference", *TRAIN_ARGS)
    monkeypatch.undo()
    assert len(written) == len(set(written)), f"a checkpoint was written twice: {written}"

    job = tmp_path / "killed"
    args = ["--data-dir", str(tiny_features), "--job-dir", str(job), "--quiet", *TRAIN_ARGS]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_A_WRITE, *args], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
                                     KILL_AT_WRITE=str(len(written))), timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (job / "metrics.json").exists()

    assert trainer.main(args) == 0
    got = json.loads((job / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert got["best_epoch"] == expected["best_epoch"]
    assert got["test"]["ccc"] == pytest.approx(expected["test"]["ccc"], rel=1e-4, abs=1e-5)
    state = json.loads((job / "checkpoints" / "state.json").read_text())
    kept = sorted(p.name for p in (job / "checkpoints").glob("*.index"))
    assert {Path(state["checkpoint"]).name + ".index", Path(state["best_checkpoint"]).name + ".index"} <= set(kept)


class _TinyNet(keras.Model):
    def __init__(self, name: str):
        super().__init__(name=name)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, inputs):
        return self.second(self.first(inputs))


def _tiny_model(name: str, order: tuple[str, ...]) -> tuple[keras.Model, list]:
    model = _TinyNet(name)
    model(tf.zeros((1, 3)))
    return model, [v for layer in order for v in getattr(model, layer).variables]


def test_a_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    model, variables = _tiny_model("net", ("first", "second"))
    prefix = training_checkpoint(net=variables_checkpoint(variables[:2])).write(str(tmp_path / "half"))
    with pytest.raises(TrainingError, match="does not match this network"):
        restore_checkpoint(training_checkpoint(net=variables_checkpoint(variables)), prefix)
    restore_checkpoint(training_checkpoint(net=variables_checkpoint(variables[:2])), prefix)


def test_evaluating_a_job_with_a_network_its_checkpoint_does_not_fit_is_refused(tmp_path: Path,
                                                                               trained_job: Path) -> None:
    """A job whose config.json names another architecture used to load whatever matched by position."""
    job = tmp_path / "job"
    shutil.copytree(trained_job, job)
    record = json.loads((job / "config.json").read_text())
    record["config"]["model"] = "temp-cnn"
    (job / "config.json").write_text(json.dumps(record))
    with pytest.raises(JobError, match="does not match this network"):
        load_job(str(job))
