"""Multi-worker training: which replica writes the job's files, and how the replicas split data.

Every replica of a ``MultiWorkerMirroredStrategy`` job runs the whole trainer with the same
arguments. Saving checkpoints and the SavedModel may run collective ops, so every replica
must take part, but only the chief may write to the job's real paths: the others write to a
folder of their own that is removed afterwards (TensorFlow's multi-worker guide,
"Model saving and loading").
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping

import keras
import tensorflow as tf


def is_chief(distribute: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process writes the job's outputs.

    Only a ``multiworker`` run has other replicas. Its chief is the ``chief`` task of
    ``TF_CONFIG`` (Vertex AI's first worker pool), or worker 0 in a cluster without one;
    without ``TF_CONFIG`` the run is a single local worker, which is its own chief.
    """
    if distribute != "multiworker":
        return True
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task, cluster = tf_config.get("task") or {}, tf_config.get("cluster") or {}
    task_type = task.get("type")
    if not task_type:
        return True
    return task_type == "chief" or (task_type == "worker" and int(task.get("index", 0)) == 0
                                    and "chief" not in cluster)


def scratch_folder() -> str:
    """A fresh local folder for a non-chief replica's throw-away writes (unique per process)."""
    return tempfile.mkdtemp(prefix="deepemocluster-worker-")


def data_sharding() -> tf.data.Options:
    """Shard the training batches by element, not by file.

    With the default AUTO policy tf.data tries to give each worker its own record files
    and fails at the first step when a split has fewer shards than there are workers
    ("Could not apply FILE based sharding"); the samplers also draw every batch from the
    whole split. DATA sharding keeps one global order (the samplers are seeded the same on
    every replica) and gives each worker its part of every global batch.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans more than one task (``TF_CONFIG`` names a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1


def work_around_keras_fit(model: keras.Model) -> None:
    """Bypasses two Keras 3 bugs that stop ``fit`` in multi-worker mode, on ``model`` only.

    1. Before the first step Keras builds the model symbolically from a batch it averages
       over the workers with ``strategy.reduce``, which fails on dict batches
       (keras-team/keras#20329). The model is built when it is made, so that build is skipped.
    2. Keras reduces each step's logs with ``strategy.reduce(MEAN, axis=0)``, which fails on
       scalars (tensorflow/tensorflow#72388). The step returns each log as a [1] vector,
       which that reduction turns into the scalar mean over the replicas.
    """
    train_step = model.train_step

    def vector_logs(data):
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    model.train_step = vector_logs
