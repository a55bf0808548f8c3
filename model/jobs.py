"""Loading a finished training job back: its settings, its data's metadata and its best network.

Evaluation and analyses need more than the SavedModel exposes (cluster features, encoder
embeddings), so they rebuild the network from ``config.json`` and the data's
``metadata.json`` and restore the best checkpoint the trainer kept.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Callable

import tensorflow as tf

from model.network import EmoClusterNet
from model.predictions import inference_function
from model.train_config import TrainConfig
from model.training import STATE_FILE, JobPaths, build_net, checkpoint_in, variables_checkpoint
from pipeline.metadata import Metadata


class JobError(ValueError):
    """The job directory does not hold a finished training run."""


@dataclasses.dataclass(frozen=True)
class TrainedJob:
    job_dir: str
    config: TrainConfig
    metadata: Metadata
    data_dir: str
    net: EmoClusterNet
    best_epoch: int
    infer: Callable[[tf.Tensor], dict[str, tf.Tensor]]
    """``net``'s compiled inference call (``model.predictions.inference_function``), shared by
    every analysis of the job so that it is traced once."""


def load_job(job_dir: str, data_dir: str | None = None) -> TrainedJob:
    """Rebuilds the network of ``job_dir`` with its best weights (data_dir defaults to the run's)."""
    paths = JobPaths.resolve(job_dir, environ={})
    config_path = paths.file("config.json")
    state_path = posixpath.join(paths.checkpoint_dir, STATE_FILE)
    for path in (config_path, state_path):
        if not tf.io.gfile.exists(path):
            raise JobError(f"{job_dir} is not a training job directory (missing {path})")
    with tf.io.gfile.GFile(config_path) as handle:
        record = json.load(handle)
    with tf.io.gfile.GFile(state_path) as handle:
        state = json.load(handle)
    if not state.get("best_checkpoint"):
        raise JobError(f"{job_dir} has no best checkpoint yet: training has not finished an epoch")
    config = TrainConfig.from_dict(record["config"])
    data_dir = data_dir or record["data_dir"]
    metadata = Metadata.load(data_dir)
    net = build_net(config, metadata.params)
    tf.train.Checkpoint(net=variables_checkpoint(net.variables)).restore(checkpoint_in(paths.checkpoint_dir, state["best_checkpoint"])).expect_partial()
    return TrainedJob(job_dir, config, metadata, data_dir, net, int(state["best_epoch"]), inference_function(net))
