"""Output folders whose names hold glob characters (``out[1]``) work (issue 17).

Beam's file sinks, sources and deletes, and TensorFlow's checkpoint and SavedModel
readers, all take a path as a glob pattern: such a folder ended in tracebacks, and a
pattern like ``out[1]`` matches a sibling ``out1`` instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from model.training.datasets import split_files
from model.tf_paths import load_saved_model
from model.training.checkpoints import network_checkpoint, restore_checkpoint
from tests.test_checkpoint_faults import _TinyNet


def test_a_pipeline_run_into_a_folder_named_like_a_pattern_writes_every_split_and_spares_its_sibling(
        tmp_path: Path, synthetic_msp: Path) -> None:
    from pipeline.__main__ import main

    sibling = tmp_path / "out1"  # what out[1] matches as a pattern
    sibling.mkdir()
    (sibling / "train-00000-of-00001.tfrecord.gz").write_bytes(b"another run's shard")
    output = tmp_path / "out[1]"
    status = main(["--corpus", "msp-podcast", "--data-root", str(synthetic_msp), "--output", str(output),
                   "--max-seconds", "2", "--chunk-seconds", "0.5"])
    assert status == 0
    splits = json.loads((output / "metadata.json").read_text())["splits"]
    assert {name: (info["count"], info["rejected"]) for name, info in splits.items()} == {
        "train": (4, 0), "dev": (2, 0), "test": (1, 0)}
    assert sorted(p.name for p in output.iterdir()) == [
        "dev-00000-of-00001.tfrecord.gz", "errors-00000-of-00001.jsonl", "inputs.jsonl", "metadata.json",
        "probes.npz", "test-00000-of-00001.tfrecord.gz", "train-00000-of-00001.tfrecord.gz"]
    assert (sibling / "train-00000-of-00001.tfrecord.gz").read_bytes() == b"another run's shard"
    assert split_files(str(output), "train") == [str(output / "train-00000-of-00001.tfrecord.gz")]


def test_a_checkpoint_in_a_folder_named_like_a_pattern_restores(tmp_path: Path) -> None:
    saved, restored = _TinyNet(), _TinyNet()
    for variable in saved.variables:
        variable.assign(tf.random.normal(variable.shape))
    prefix = network_checkpoint(saved).write(str(tmp_path / "job[1]" / "checkpoints" / "ckpt"))
    restore_checkpoint(network_checkpoint(restored), prefix)
    for mine, theirs in zip(saved.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(theirs.numpy(), mine.numpy())


def test_a_saved_model_in_a_folder_named_like_a_pattern_loads(tmp_path: Path) -> None:
    module = tf.Module()
    module.weight = tf.Variable([1.0, 2.0])
    module.scale = tf.function(lambda x: x * module.weight, input_signature=[tf.TensorSpec([2], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    shutil.copytree(tmp_path / "model", tmp_path / "job[1]" / "model")
    loaded = load_saved_model(str(tmp_path / "job[1]" / "model"))
    np.testing.assert_array_equal(loaded.scale(tf.constant([3.0, 4.0])).numpy(), [3.0, 8.0])
