"""The job folder: what a training run writes where, when a folder holds *this* run, and
loading a finished job back. Nothing else names the folder's files.

    JOB/config.json           the run's record: settings, the data's digest, library versions,
                              a run id and where its output folders went (``paths``)
    JOB/train.log             every line the run logged (``model.training.job_log``)
    JOB/history.csv           one row per epoch: losses, clustering statistics, dev CCC
    JOB/metrics.json          dev and test CCC of the best epoch; written last: the run finished
    JOB/training_curves.png   history.csv drawn (``model.evaluation.plots.training_curves``)
    JOB/evaluation.json       ``model.experiments``' cached sub-set scores of the finished run
    JOB/model/                the SavedModel (``AIP_MODEL_DIR`` on Vertex AI)
    JOB/checkpoints/          stage checkpoints, state.json and owner.json (``AIP_CHECKPOINT_DIR``)
    JOB/logs/                 TensorBoard events (``AIP_TENSORBOARD_LOG_DIR``)

The same-run rule: a job folder (or a checkpoint folder) takes a run only if its recorded
settings and data digest are the run's, so a re-run of the same command resumes and any
other run is refused. On Vertex AI the ``AIP_*`` folders lie outside the job folder;
``paths`` records them, and the checkpoint folder's ``owner.json`` carries the run id, so
a checkpoint folder reused by another run (the same ``AIP_CHECKPOINT_DIR`` under a new
``--job-dir``) is refused instead of resumed.

Evaluation and analyses need more than the SavedModel exposes (cluster features, encoder
embeddings), so ``load_job`` rebuilds the network from ``config.json`` and the data's
``metadata.json`` and restores the best checkpoint the trainer kept, wherever ``paths`` says.

TensorFlow is imported on first use: ``model.experiments --help`` reads this layout without it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import posixpath
import uuid
from typing import TYPE_CHECKING, Any, Callable, Mapping

from model.training.config import TrainConfig

if TYPE_CHECKING:
    import tensorflow as tf

    from model.nets.emocluster_net import EmoClusterNet
    from pipeline.metadata import Metadata

CONFIG_FILE = "config.json"
LOG_FILE = "train.log"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
EVALUATION_FILE = "evaluation.json"
STATE_FILE = "state.json"
"""In the checkpoint folder: everything besides weights that a resumed run needs."""
OWNER_FILE = "owner.json"
"""In the checkpoint folder: the run id of the run it belongs to."""
_OUTPUT_FOLDERS = {"model_dir": ("AIP_MODEL_DIR", "model"), "checkpoint_dir": ("AIP_CHECKPOINT_DIR", "checkpoints"),
                   "tensorboard_dir": ("AIP_TENSORBOARD_LOG_DIR", "logs")}
"""Each output folder: the Vertex AI variable that takes precedence, the sub-folder otherwise."""


class JobError(ValueError):
    """The job directory does not hold a finished training run, or its folders belong to another run."""


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


@dataclasses.dataclass(frozen=True)
class JobPaths:
    """Where a run writes; Vertex AI's ``AIP_*`` variables take precedence when set."""

    root: str
    model_dir: str
    checkpoint_dir: str
    tensorboard_dir: str

    @classmethod
    def resolve(cls, job_dir: str, environ: Mapping[str, str] = os.environ) -> "JobPaths":
        return cls(root=job_dir, **{field: environ.get(variable) or posixpath.join(job_dir, folder)
                                    for field, (variable, folder) in _OUTPUT_FOLDERS.items()})

    def file(self, name: str) -> str:
        return posixpath.join(self.root, name)

    @property
    def state_file(self) -> str:
        return posixpath.join(self.checkpoint_dir, STATE_FILE)

    def to_record(self) -> dict[str, str]:
        """The output folders as config.json records them: relative to the job folder when
        inside it (so a copied job still finds its own), else as given (``AIP_*`` folders)."""
        root = self.root.rstrip("/") + "/"
        return {name: path[len(root):] if path.startswith(root) else path
                for name, path in ((field, getattr(self, field).rstrip("/")) for field in _OUTPUT_FOLDERS)}

    @classmethod
    def from_record(cls, job_dir: str, record: Mapping[str, str] | None) -> "JobPaths":
        """The folders a job recorded (``to_record``); the default layout for jobs that predate it."""
        if not record:
            return cls.resolve(job_dir, environ={})
        return cls(root=job_dir, **{field: record[field] if "://" in record[field] or record[field].startswith("/")
                                    else posixpath.join(job_dir, record[field]) for field in _OUTPUT_FOLDERS})


def write_text(path: str, text: str) -> None:
    """Writes through a temporary name and a rename, so a kill never leaves half a file."""
    gfile = _gfile()
    gfile.makedirs(posixpath.dirname(path))
    # A random name: the process id is 1 in every container of a multi-worker job.
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with gfile.GFile(temporary, "w") as handle:
        handle.write(text)
    gfile.rename(temporary, path, overwrite=True)


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file of the job, or None when it does not exist."""
    gfile = _gfile()
    if not gfile.exists(path):
        return None
    with gfile.GFile(path) as handle:
        return json.load(handle)


def history_csv(rows: list[dict[str, Any]]) -> str:
    """history.csv: one row per epoch, every column any row has, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def data_digest(metadata_json: str) -> str:
    """What identifies a run's data: the digest of its pipeline's metadata.json."""
    return hashlib.sha256(metadata_json.encode()).hexdigest()


def run_record(config: "TrainConfig", data_dir: str, metadata_json: str) -> dict[str, Any]:
    """What config.json holds: the resolved settings, the data's digest and library versions."""
    import apache_beam
    import keras
    import numpy
    import tensorflow as tf

    return {
        "config": config.to_dict(),
        "data_dir": data_dir,
        "data_metadata_sha256": data_digest(metadata_json),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": numpy.__version__,
                     "apache_beam": apache_beam.__version__},
    }


def same_run(recorded: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """The same-run rule: the same settings on the same data (versions and run ids may differ).

    A setting that an older version did not record counts as its default, which is what that
    version ran with."""
    defaults = TrainConfig().to_dict()
    return ({**defaults, **(recorded.get("config") or {})} == {**defaults, **record["config"]}
            and recorded.get("data_metadata_sha256") == record["data_metadata_sha256"])


def is_finished(job_dir: str) -> bool:
    """metrics.json is written last: the run trained, was scored and exported."""
    return _gfile().exists(posixpath.join(job_dir, METRICS_FILE))


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
    previous = read_json(config_path)
    paths = job.to_record()
    if previous is not None:
        if not same_run(previous, record):
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
    owner = read_json(owner_path)
    if owner is not None and owner.get("run_id") != run_id:
        raise JobError(f"the checkpoint folder {job.checkpoint_dir} belongs to another run (job folder "
                       f"{owner.get('job_dir')}, see {owner_path}): give this job its own AIP_CHECKPOINT_DIR "
                       f"(a new baseOutputDirectory), or resume that run with --job-dir {owner.get('job_dir')}")
    if owner is None and previous is None and _gfile().exists(job.state_file):
        raise JobError(f"the checkpoint folder {job.checkpoint_dir} holds the training state of another run "
                       f"({job.state_file}, and no {CONFIG_FILE} in {job.root}): give this job its own "
                       "AIP_CHECKPOINT_DIR (a new baseOutputDirectory)")
    # config.json first: a kill between the two writes leaves a job that still owns its folder.
    write_text(config_path, json.dumps({**record, "run_id": run_id, "paths": paths}, indent=2))
    if owner is None:
        write_text(owner_path, json.dumps({"run_id": run_id, "job_dir": job.root}, indent=2))


@dataclasses.dataclass(frozen=True)
class TrainedJob:
    job_dir: str
    config: "TrainConfig"
    metadata: "Metadata"
    data_dir: str
    net: "EmoClusterNet"
    best_epoch: int
    infer: Callable[["tf.Tensor"], dict[str, "tf.Tensor"]]
    """``net``'s compiled inference call (``model.evaluation.split_predictions.inference_function``),
    shared by every analysis of the job so that it is traced once."""


def load_job(job_dir: str, data_dir: str | None = None) -> TrainedJob:
    """Rebuilds the network of ``job_dir`` with its best weights (data_dir defaults to the run's)."""
    from model.evaluation.split_predictions import inference_function
    from model.nets.builder import build_net
    from model.training.checkpoints import CheckpointError, checkpoint_in, network_checkpoint, restore_checkpoint
    from model.training.config import TrainConfig
    from pipeline.metadata import Metadata

    config_path = posixpath.join(job_dir, CONFIG_FILE)
    record = read_json(config_path)
    if record is None:
        raise JobError(f"{job_dir} is not a training job directory (missing {config_path})")
    paths = JobPaths.from_record(job_dir, record.get("paths"))
    state = read_json(paths.state_file)
    if state is None:
        raise JobError(f"{job_dir} is not a training job directory (missing {paths.state_file}, where its "
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
    except CheckpointError as error:
        raise JobError(f"{job_dir}: {error}") from error
    return TrainedJob(job_dir, config, metadata, data_dir, net, int(state["best_epoch"]), inference_function(net))


def check_trained_on(job: TrainedJob) -> TrainedJob:
    """Refuses data other than the job's own: its features would be normalised and chunked
    as the job never saw them (log-mel records for a linear-mel model score without error)."""
    expected = (read_json(posixpath.join(job.job_dir, CONFIG_FILE)) or {}).get("data_metadata_sha256")
    if expected and data_digest(job.metadata.to_json()) != expected:
        raise JobError(f"{job.data_dir} is not the data {job.job_dir} was trained on (its metadata.json "
                       f"digest differs from the one in the job's config.json): evaluate on that data, or "
                       "retrain on this")
    return job
