"""Checkpoints survive a kill at any moment and restore completely or not at all (issue 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer
from model.training.job_folder import JobError, load_job
from model.training.train_step import DeepEmoCluster
from model.training.config import TrainConfig
from model.nets.builder import build_net
from model.training.checkpoints import CheckpointError, network_checkpoint, restore_checkpoint, training_checkpoint
from pipeline.params import FeatureParams
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
    """Two layers of one shape: weights restored into each other's places would fit."""

    def __init__(self, units: tuple[int, int] = (2, 2), third: bool = False):
        super().__init__()
        self.first = keras.layers.Dense(units[0])
        self.second = keras.layers.Dense(units[1])
        if third:
            self.third = keras.layers.Dense(2)
        self.build((None, 2))

    def build(self, input_shape):
        self.first.build(input_shape)
        self.second.build((None, self.first.units))
        if hasattr(self, "third"):
            self.third.build((None, self.second.units))


class _TinyNetBuiltTheOtherWay(_TinyNet):
    """The same attributes, created and built second layer first, as a Keras upgrade or a
    refactor may: ``variables`` and every optimizer slot list come in another order."""

    def __init__(self):
        keras.Model.__init__(self)
        self.second = keras.layers.Dense(2)
        self.first = keras.layers.Dense(2)
        self.second.build((None, 2))
        self.first.build((None, 2))
        self.built = True


def _adam(net: keras.Model) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.Adam(name="adam")
    optimizer.build(net.trainable_variables)
    return optimizer


def _randomise(net: keras.Model, optimizer: keras.optimizers.Optimizer, seed: int) -> None:
    """Distinct values in every weight and every slot (one step on random gradients)."""
    generator = tf.random.Generator.from_seed(seed)
    for variable in net.variables:
        variable.assign(generator.normal(variable.shape))
    optimizer.apply([generator.normal(v.shape) for v in net.trainable_variables], net.trainable_variables)


def _state(net: keras.Model, optimizer: keras.optimizers.Optimizer) -> dict[str, np.ndarray]:
    """Every weight and slot, keyed by what it is (layer attribute, weight, slot)."""
    state = {}
    for layer in ("first", "second"):
        for weight in ("kernel", "bias"):
            variable = getattr(getattr(net, layer), weight)
            index = optimizer._get_variable_index(variable)
            state[f"{layer}.{weight}"] = variable.numpy()
            state[f"{layer}.{weight}.momentum"] = optimizer._momentums[index].numpy()
            state[f"{layer}.{weight}.velocity"] = optimizer._velocities[index].numpy()
    state["iterations"] = optimizer.iterations.numpy()
    return state


def test_a_network_whose_variables_come_in_another_order_restores_every_weight_in_place(tmp_path: Path) -> None:
    """Checkpoints kept variables by position: a network listing them in another order got
    the second layer's weights in the first and each slot on another weight, silently."""
    saved, reordered = _TinyNet(), _TinyNetBuiltTheOtherWay()
    assert [v.shape for v in saved.variables] == [v.shape for v in reordered.variables]
    assert [id(v) for v in saved.variables].index(id(saved.first.kernel)) != \
        [id(v) for v in reordered.variables].index(id(reordered.first.kernel))
    saved_adam, reordered_adam = _adam(saved), _adam(reordered)
    _randomise(saved, saved_adam, seed=1)
    _randomise(reordered, reordered_adam, seed=2)
    prefix = network_checkpoint(saved, {"adam": saved_adam}).write(str(tmp_path / "ckpt"))

    restore_checkpoint(network_checkpoint(reordered, {"adam": reordered_adam}), prefix)

    expected, got = _state(saved, saved_adam), _state(reordered, reordered_adam)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_network_rebuilt_in_the_same_process_restores(tmp_path: Path) -> None:
    """Keras numbers layer and SeedGenerator names per process (``dense_3``,
    ``seed_generator_7``): names taken from there fail on a second build in one process."""
    config = TrainConfig(model="temp-trans")
    saved, rebuilt = (build_net(config, FeatureParams()) for _ in range(2))
    saved_model, rebuilt_model = DeepEmoCluster(config, saved), DeepEmoCluster(config, rebuilt)

    def optimizers(model: DeepEmoCluster) -> dict[str, keras.optimizers.Optimizer]:
        return {group.name: group.optimizer for group in model.optimizer_groups}

    generator = tf.random.Generator.from_seed(3)
    for variable in [*saved.variables, *(v for o in optimizers(saved_model).values() for v in o.variables)]:
        variable.assign(tf.cast(generator.uniform(variable.shape, maxval=100, dtype=tf.int32), variable.dtype))
    prefix = network_checkpoint(saved, optimizers(saved_model)).write(str(tmp_path / "ckpt"))

    restore_checkpoint(network_checkpoint(rebuilt, optimizers(rebuilt_model)), prefix)

    for mine, theirs in zip(saved.variables, rebuilt.variables, strict=True):
        np.testing.assert_array_equal(theirs.numpy(), mine.numpy(), err_msg=mine.path)
    for name, optimizer in optimizers(saved_model).items():
        for mine, theirs in zip(optimizer.variables, optimizers(rebuilt_model)[name].variables, strict=True):
            np.testing.assert_array_equal(theirs.numpy(), mine.numpy(), err_msg=mine.path)


@pytest.mark.parametrize("other, refusal", [
    (lambda: _TinyNet(third=True), r"missing third/_kernel, third/bias"),
    (lambda: _TinyNet(units=(3, 2)), r"other shapes: first/_kernel \[2, 2\] \(here \[2, 3\]\)"),
])
def test_a_checkpoint_of_another_network_is_refused_naming_the_variables(tmp_path: Path, other, refusal) -> None:
    prefix = network_checkpoint(_TinyNet()).write(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="does not match this network.*" + refusal):
        restore_checkpoint(network_checkpoint(other()), prefix)
    prefix = network_checkpoint(other()).write(str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="does not match this network"):
        restore_checkpoint(network_checkpoint(_TinyNet()), prefix)


def test_a_checkpoint_with_an_extra_variable_is_refused_naming_it(tmp_path: Path) -> None:
    prefix = network_checkpoint(_TinyNet(third=True)).write(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="not in this network third/_kernel, third/bias"):
        restore_checkpoint(network_checkpoint(_TinyNet()), prefix)


def test_a_checkpoint_keyed_by_position_is_refused_with_the_reason(tmp_path: Path) -> None:
    net = _TinyNet()
    old = training_checkpoint(net=tf.train.Checkpoint(**{f"v{i:04d}": v for i, v in enumerate(net.variables)}))
    prefix = old.write(str(tmp_path / "old"))
    with pytest.raises(CheckpointError, match="by position.*train again"):
        restore_checkpoint(network_checkpoint(net), prefix)


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
