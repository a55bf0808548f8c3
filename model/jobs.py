"""A training job's record: claiming its folders for one run, and loading a finished job back.

``config.json`` in the job folder records the run's settings, its data's digest, a run id
and where the run's checkpoints, SavedModel and TensorBoard events went (``paths``: on
Vertex AI the ``AIP_*`` folders, which lie outside the job folder). The checkpoint folder
holds ``owner.json`` with the same run id, so a checkpoint folder reused by another run
(the same ``AIP_CHECKPOINT_DIR`` under a new ``--job-dir``) is refused instead of resumed.

Evaluation and analyses need more than the SavedModel exposes (cluster features, encoder
embeddings), so they rebuild the network from ``config.json`` and the data's
``metadata.json`` and restore the best checkpoint the trainer kept, wherever ``paths`` says.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import uuid
from typing import Any, Callable

import tensorflow as tf

from model.network import EmoClusterNet
from model.predictions import inference_function
from model.train_config import TrainConfig
from model.training import (STATE_FILE, JobPaths, TrainingError, build_net, checkpoint_in, network_checkpoint,
                            restore_checkpoint, write_text)
from pipeline.metadata import Metadata


CONFIG_FILE = "config.json"
OWNER_FILE = "owner.json"


class JobError(ValueError):
    """The job directory does not hold a finished training run, or its folders belong to another run."""


def start_job(job: JobPaths, record: dict[str, Any], write: bool = True) -> None:
    """Checks that ``job``'s folders may take the run ``record`` describes, then records it.

    Refused (JobError): a job folder holding a run with other settings or data; a job whose
    outputs went to other folders than this run's (another ``baseOutputDirectory``); a
    checkpoint folder owned by another run, or holding training state of a run that left no
    owner record and is not this job's. ``write`` is False on the non-chief replicas of a
    multi-worker job: they check the settings only, as the chief writes the records (its
    new run id would not be theirs).
    """
    config_path = job.file(CONFIG_FILE)
    previous = _read_json(config_path)
    paths = job.to_record()
    if previous is not None:
        if (previous["config"], previous["data_metadata_sha256"]) != (record["config"], record["data_metadata_sha256"]):
            raise JobError(f"{job.root} holds a run with other settings or data (see {config_path}); "
                           "use a new --job-dir")
        if previous.get("paths", paths) != paths:
            raise JobError(f"{job.root} holds a run whose outputs went to {previous['paths']} (see {config_path}); "
                           f"this run would write to {paths}: resume it with the same AIP_* folders (the same "
                           "baseOutputDirectory), or use a new --job-dir")
    if not write:
        return
    run_id = (previous or {}).get("run_id") or uuid.uuid4().hex
    owner_path = posixpath.join(job.checkpoint_dir, OWNER_FILE)
    owner = _read_json(owner_path)
    if owner is not None and owner.get("run_id") != run_id:
        raise JobError(f"the checkpoint folder {job.checkpoint_dir} belongs to another run (job folder "
                       f"{owner.get('job_dir')}, see {owner_path}): give this job its own AIP_CHECKPOINT_DIR "
                       f"(a new baseOutputDirectory), or resume that run with --job-dir {owner.get('job_dir')}")
    state_path = posixpath.join(job.checkpoint_dir, STATE_FILE)
    if owner is None and previous is None and tf.io.gfile.exists(state_path):
        raise JobError(f"the checkpoint folder {job.checkpoint_dir} holds the training state of another run "
                       f"({state_path}, and no {CONFIG_FILE} in {job.root}): give this job its own "
                       "AIP_CHECKPOINT_DIR (a new baseOutputDirectory)")
    # config.json first: a kill between the two writes leaves a job that still owns its folder.
    write_text(config_path, json.dumps({**record, "run_id": run_id, "paths": paths}, indent=2))
    if owner is None:
        write_text(owner_path, json.dumps({"run_id": run_id, "job_dir": job.root}, indent=2))


def _read_json(path: str) -> dict[str, Any] | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


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
    config_path = posixpath.join(job_dir, CONFIG_FILE)
    record = _read_json(config_path)
    if record is None:
        raise JobError(f"{job_dir} is not a training job directory (missing {config_path})")
    paths = JobPaths.from_record(job_dir, record.get("paths"))
    state_path = posixpath.join(paths.checkpoint_dir, STATE_FILE)
    state = _read_json(state_path)
    if state is None:
        raise JobError(f"{job_dir} is not a training job directory (missing {state_path}, where its "
                       f"{CONFIG_FILE} puts the checkpoints)")
    if not state.get("best_checkpoint"):
        raise JobError(f"{job_dir} has no best checkpoint yet: training has not finished an epoch")
    config = TrainConfig.from_dict(record["config"])
    data_dir = data_dir or record["data_dir"]
    metadata = Metadata.load(data_dir)
    net = build_net(config, metadata.params)
    try:
        restore_checkpoint(network_checkpoint(net), checkpoint_in(paths.checkpoint_dir, state["best_checkpoint"]),
                           partial=True)
    except TrainingError as error:
        raise JobError(f"{job_dir}: {error}") from error
    return TrainedJob(job_dir, config, metadata, data_dir, net, int(state["best_epoch"]), inference_function(net))
