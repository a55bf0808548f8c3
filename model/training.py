"""One training run: Algorithm 1's epoch loop, checkpoints, model selection and outputs.

Per epoch: (SSL) stage I on the unlabelled split, then stage II on train; each clustering
stage starts with a re-assignment (``model.reclustering``) and trains through its split's
sampler (``model.sampling``). After every stage the run is checkpointed, so a killed job
re-run with the same command resumes from the last completed stage. After stage II the
sentence-level dev CCC selects the best weights. At the end the best weights are scored
on dev and test and exported as a SavedModel.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import posixpath
import time
import uuid
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from model.checkpoints import POSITIONAL_NAME, NamedVariables, network_variables, optimizer_variables, saved_names
from model.data import SplitSource, inference_batches
from model.deep_cluster import SUPERVISED, UNSUPERVISED, DeepEmoCluster
from model.export import export_saved_model
from model.multiworker import data_sharding, in_multi_worker_mode, is_chief, scratch_folder, work_around_keras_fit
from model.joblog import FILENAME as LOG_FILE, JobLog
from model.network import EmoClusterNet
from model.predictions import inference_function, output_of, predict_split
from model.progress import Reporter
from model.reclustering import ReclusterCallback, Reclusterer
from model.reconstruction import ReconstructionNet
from model.sampling import ChunkSampler, PlainSampler, SentenceSampler
from model.split_cache import SplitCache
from model.tf_paths import readable_checkpoint
from model.train_config import TrainConfig
from pipeline.metadata import Metadata
from pipeline.paths import literal_pattern
from pipeline.params import ATTRIBUTES, FeatureParams

TRAIN, DEV, TEST, UNLABELED = "train", "dev", "test", "unlabeled"
STATE_FILE = "state.json"
CURVES_FILE = "training_curves.png"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what is left intact."""


@dataclasses.dataclass(frozen=True)
class JobPaths:
    """Where a run writes; Vertex AI's ``AIP_*`` variables take precedence when set."""

    root: str
    model_dir: str
    checkpoint_dir: str
    tensorboard_dir: str

    @classmethod
    def resolve(cls, job_dir: str, environ: Mapping[str, str] = os.environ) -> "JobPaths":
        return cls(
            root=job_dir,
            model_dir=environ.get("AIP_MODEL_DIR") or posixpath.join(job_dir, "model"),
            checkpoint_dir=environ.get("AIP_CHECKPOINT_DIR") or posixpath.join(job_dir, "checkpoints"),
            tensorboard_dir=environ.get("AIP_TENSORBOARD_LOG_DIR") or posixpath.join(job_dir, "logs"),
        )

    def file(self, name: str) -> str:
        return posixpath.join(self.root, name)

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


_OUTPUT_FOLDERS = ("model_dir", "checkpoint_dir", "tensorboard_dir")


@dataclasses.dataclass
class Stage:
    """One stage of an epoch: which split, which loss terms, how its batches are drawn."""

    name: str
    supervised: bool
    sampler: PlainSampler | SentenceSampler | ChunkSampler
    reclusterer: Reclusterer | None


@dataclasses.dataclass
class Progress:
    """Everything besides weights that a resumed run needs; saved next to each checkpoint."""

    epoch: int = 0
    stage: int = 0
    row: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    best_checkpoint: str = ""
    epochs_without_improvement: int = 0
    checkpoint: str = ""
    finished: bool = False


def write_text(path: str, text: str) -> None:
    """Writes through a temporary name and a rename, so a kill never leaves half a file."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    # A random name: the process id is 1 in every container of a multi-worker job.
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def history_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_training_curves(path: str, config: TrainConfig, progress: Progress, loss_terms: list[str]) -> None:
    """training_curves.png from the history rows (through a buffer: matplotlib cannot write gs://)."""
    from model import plots

    buffer = io.BytesIO()
    title = (f"{config.variant.paper_name or config.model} ({config.setting.upper()}), "
             f"{', '.join(config.attributes)}: {posixpath.basename(posixpath.dirname(path))}")
    plots.training_curves(buffer, progress.history, config.attributes, loss_terms, title, progress.best_epoch)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops a stage at the first non-finite loss, before anything is checkpointed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_step: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.failed_step = batch
            self.model.stop_training = True


class StageProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without its "Epoch e/e" header: each stage is one ``fit`` over one
    epoch, and the trainer prints its own "epoch e/E stage S" line."""

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.epochs = 1


class Trainer:
    """Builds the model from the data's metadata and the config, then runs or resumes it."""

    def __init__(self, config: TrainConfig, data_dir: str, job: JobPaths, metadata: Metadata,
                 log: Callable[[str], None] = print, verbose: int = 1,
                 report_metric: Callable[[float, int], None] | None = None, init_from: str | None = None):
        self.config = config
        self.report_metric = report_metric  # (dev CCC mean, epoch) to hyperparameter tuning
        self.data_dir = data_dir
        self.job = job
        # Every replica reads the job's folders; only the chief writes there (model.multiworker).
        self.chief = is_chief(config.distribute)
        self.out = job if self.chief else JobPaths.resolve(scratch_folder(), environ={})
        self.metadata = metadata
        self.log = log
        self.verbose = verbose
        # Embedding, K-means and dev scoring: a live line on a terminal unless --quiet; logged lines always.
        self.reporter = Reporter(log=lambda text: self.log(text), live=None if verbose else False)
        self.attributes = tuple(config.attributes)
        self.strategy = _strategy(config.distribute)
        keras.utils.set_random_seed(config.seed)
        # TF's own global seed must not be 0: tf.data's get_seed compares (global, op) seeds
        # with (0, 0), which fails for the per-epoch tensor seeds of model.sampling.
        tf.random.set_seed(config.seed + 1)
        with self.strategy.scope():
            net = build_net(config, metadata.params)
            if init_from:  # a converted release (pretrained/); a resumed run then restores its own checkpoint
                from model.convert_reference import load_release_weights

                load_release_weights(net, init_from, self.attributes[0], metadata.params)
            self.model = DeepEmoCluster(config, net)
            self.model.compile(jit_compile=config.jit_compile)
        if in_multi_worker_mode(self.strategy):
            work_around_keras_fit(self.model)
        self._infer = inference_function(net, config.jit_compile)
        self._predict = output_of(self._infer, "predictions")
        self.stages = self._build_stages()
        self.progress = Progress()
        self._state_names: tuple[str, ...] = ()
        """The checkpoints the state file on disk names: never rewritten (``_fresh_prefix``)."""
        self.checkpoint = network_checkpoint(
            net, {group.name: group.optimizer for group in self.model.optimizer_groups},
            triplet_rng=self.model.triplet_rng,
            **{f"{stage.name}_sampler_epochs": stage.sampler.epochs_started for stage in self.stages},
            **{f"{stage.name}_assignments": stage.sampler.assignments.labels
               for stage in self.stages if stage.reclusterer is not None})

    def _build_stages(self) -> list[Stage]:
        stages = []
        if self.config.uses_unlabeled:
            stages.append(self._stage(UNLABELED, supervised=False))
        stages.append(self._stage(TRAIN, supervised=True))
        return stages

    def _stage(self, split: str, supervised: bool) -> Stage:
        source = SplitSource.from_metadata(self.data_dir, split, self.metadata)
        subset = None
        if split == UNLABELED and self.config.unlabeled_count:
            subset = _sample_indices(source, self.config.unlabeled_count, self.config.seed)
        variant = self.config.variant
        sampler_class = {"sentence": SentenceSampler, "chunk": ChunkSampler, "plain": PlainSampler}[variant.sampler]
        sampler = sampler_class(source, subset=subset)
        reclusterer = None
        if variant.clustering:
            embed = output_of(self._infer, "cluster_features")
            reclusterer = Reclusterer(
                name=split, embed_fn=embed, batches=lambda: self._embedding_batches(sampler),
                sampler=sampler, num_clusters=self.config.clusters,
                iterations=self.config.kmeans_iterations, seed=self.config.seed, init=self.config.kmeans_init,
                progress=self.reporter)
        return Stage(split, supervised, sampler, reclusterer)

    def _embedding_batches(self, sampler: PlainSampler | SentenceSampler | ChunkSampler) -> tf.data.Dataset:
        """The sentences the stage trains on (the SSL subset, when there is one), each once,
        read from the sampler's random-access store."""
        return sampler.ordered_batches(self.config.batch_size)

    def _batches(self, stage: Stage, epoch: int) -> tf.data.Dataset:
        columns = [ATTRIBUTES.index(a) for a in self.attributes]
        label_stats = self.metadata.label_stats
        attributes = self.attributes

        def to_model_batch(batch):
            targets = label_stats.normalise(tf.gather(batch["labels"], columns, axis=-1), attributes)
            model_batch = {"features": batch["features"], "targets": targets}
            if "cluster_labels" in batch:
                model_batch["cluster_labels"] = batch["cluster_labels"]
            return model_batch

        batch_size = self.config.batch_size
        if stage.sampler.__class__ is ChunkSampler:
            batch_size *= self.metadata.params.num_chunks
        seed = self.config.seed * 1000 + len(self.stages) * epoch + self.stages.index(stage)
        return stage.sampler.dataset(batch_size, seed).map(to_model_batch).with_options(data_sharding())

    def restore(self) -> bool:
        """Restores the last completed stage, if the job directory holds one."""
        state_path = posixpath.join(self.job.checkpoint_dir, STATE_FILE)
        if not tf.io.gfile.exists(state_path):
            return False
        with tf.io.gfile.GFile(state_path) as handle:
            self.progress = Progress(**json.load(handle))
        self._state_names = (self.progress.checkpoint, self.progress.best_checkpoint)
        if self.progress.checkpoint:
            restore_checkpoint(self.checkpoint, self._local(self.progress.checkpoint))
        if self.progress.finished:
            self.log(f"resuming from epoch {self.progress.epoch}: training finished, finalising "
                     f"(checkpoint {self.progress.checkpoint})")
        else:
            self.log(f"resuming from epoch {self.progress.epoch + 1}, stage "
                     f"{self.stages[self.progress.stage].name} (checkpoint {self.progress.checkpoint or 'none'})")
        return True

    def _local(self, prefix: str) -> str:
        """A saved checkpoint prefix inside this job's checkpoint folder (the job may have moved);
        a non-chief replica reads its own copy when it wrote one."""
        own = checkpoint_in(self.out.checkpoint_dir, prefix)
        if self.chief or tf.io.gfile.exists(own + ".index"):
            return own
        return checkpoint_in(self.job.checkpoint_dir, prefix)

    def _remove(self, prefix: str) -> None:
        """Removes a checkpoint this replica wrote (never the chief's, from another replica)."""
        _remove_checkpoint(checkpoint_in(self.out.checkpoint_dir, prefix))

    def _fresh_prefix(self, stem: str) -> str:
        """``stem`` in this replica's checkpoint folder, suffixed ``-1``, ``-2``... while a
        checkpoint the state names (on disk, or about to) has that name: TensorFlow rewrites an
        existing checkpoint in place, and a kill during the rewrite would leave the state
        naming half a file, which no later run could restore."""
        named = {posixpath.basename(p) for p in (self.progress.checkpoint, self.progress.best_checkpoint,
                                                 *self._state_names) if p}
        name, suffix = stem, 0
        while name in named:
            suffix += 1
            name = f"{stem}-{suffix}"
        return posixpath.join(self.out.checkpoint_dir, name)

    def _save(self) -> None:
        """A new checkpoint first, then the state that points at it, then the old one goes: a
        kill at any moment leaves the state naming complete checkpoints."""
        prefix = self._fresh_prefix(f"ckpt-e{self.progress.epoch:03d}-s{self.progress.stage}")
        previous = self.progress.checkpoint
        self.progress.checkpoint = self.checkpoint.write(prefix)
        write_text(posixpath.join(self.out.checkpoint_dir, STATE_FILE), json.dumps(dataclasses.asdict(self.progress)))
        self._state_names = (self.progress.checkpoint, self.progress.best_checkpoint)
        if previous and previous not in (self.progress.checkpoint, self.progress.best_checkpoint):
            self._remove(previous)

    def run(self) -> dict[str, Any]:
        """Trains (or resumes) and finalises; what it logs, and an error that stops it, also go to JOB/train.log."""
        try:
            with JobLog(self.out.file(LOG_FILE)) as job_log:
                log, self.log = self.log, job_log.tee(self.log)
                try:
                    return self._train()
                finally:
                    self.log = log
        finally:
            if not self.chief:
                tf.io.gfile.rmtree(self.out.root)

    def _train(self) -> dict[str, Any]:
        self.restore()
        writer = tf.summary.create_file_writer(self.out.tensorboard_dir)
        while not self.progress.finished and self.progress.epoch < self.config.epochs:
            epoch = self.progress.epoch
            while self.progress.stage < len(self.stages):
                self.progress.row.update(self._run_stage(self.stages[self.progress.stage], epoch))
                self.progress.stage += 1
                if self.progress.stage < len(self.stages):
                    self._save()
            self._end_epoch(epoch, writer)
        if not self.progress.finished:
            self.progress.finished = True
            self._save()
        return self._finalise()

    def _run_stage(self, stage: Stage, epoch: int) -> dict[str, float]:
        self.model.set_stage(SUPERVISED if stage.supervised else UNSUPERVISED)
        stats: dict[str, float] = {}
        guard = NonFiniteLossGuard()
        callbacks: list[keras.callbacks.Callback] = [guard, keras.callbacks.TensorBoard(
            posixpath.join(self.out.tensorboard_dir, stage.name), update_freq="epoch")]
        if stage.reclusterer is not None:
            callbacks.insert(0, ReclusterCallback(stage.reclusterer, len(self.stages) * epoch + self.stages.index(stage), stats))
        if self.verbose:
            callbacks.append(StageProgressBar())
            terms = [name for name in self.model.trackers
                     if name != "loss" and (stage.supervised or name != "ccc_loss")]
            self.log(f"epoch {epoch + 1}/{self.config.epochs} stage {stage.name} "
                     f"({' + '.join(terms)} on {stage.sampler.source.count} sentences)")
        start = time.perf_counter()
        history = self.model.fit(self._batches(stage, epoch), epochs=epoch + 1, initial_epoch=epoch,
                                 callbacks=callbacks, verbose=self.verbose, shuffle=False)
        if guard.failed_step is not None:
            raise TrainingError(
                f"non-finite loss in epoch {epoch + 1}, stage {stage.name}, step {guard.failed_step + 1}; "
                f"training stopped; the last good checkpoint is {self.progress.checkpoint or 'none yet'}")
        stats.update({f"{stage.name}_{name}": float(values[-1]) for name, values in history.history.items()})
        stats[f"{stage.name}_seconds"] = time.perf_counter() - start
        if isinstance(stage.sampler, SentenceSampler):
            stats[f"{stage.name}_acceptance_achieved"] = stage.sampler.acceptance_stats()["rate"]
        return stats

    def _end_epoch(self, epoch: int, writer) -> None:
        start = time.perf_counter()
        dev = predict_split(self._predict, self.data_dir, DEV, self.metadata, self.attributes,
                            self.config.batch_size).ccc()
        row = self.progress.row
        row.update({f"dev_ccc_{a}": v for a, v in dev.items()})
        score = float(np.mean(list(dev.values())))
        row["dev_ccc_mean"] = score
        row["seconds_dev"] = time.perf_counter() - start
        if self.report_metric is not None:
            self.report_metric(score, epoch + 1)
        improved = score > self.progress.best_score
        if improved:
            self.progress.best_score, self.progress.best_epoch = score, epoch + 1
            self.progress.epochs_without_improvement = 0
        else:
            self.progress.epochs_without_improvement += 1
        self.progress.history.append({"epoch": epoch + 1, **row})
        with writer.as_default(step=epoch + 1):
            for key, value in row.items():
                if isinstance(value, float) and math.isfinite(value):
                    tf.summary.scalar(key, value)
        write_text(self.out.file("history.csv"), history_csv(self.progress.history))
        self.log(_epoch_line(epoch + 1, self.config.epochs, row, improved, list(self.model.trackers)))
        stop = bool(self.config.patience) and self.progress.epochs_without_improvement >= self.config.patience
        self.progress.epoch, self.progress.stage, self.progress.row = epoch + 1, 0, {}
        old_best = self.progress.best_checkpoint
        if improved:
            self.progress.best_checkpoint = self.checkpoint.write(self._fresh_prefix(f"best-e{epoch + 1:03d}"))
        if stop:
            self.log(f"early stopping: no dev improvement for {self.config.patience} epochs")
            self.progress.finished = True
        self._save()
        if improved and old_best and old_best != self.progress.best_checkpoint:
            self._remove(old_best)

    def _finalise(self) -> dict[str, Any]:
        if self.progress.best_checkpoint:
            restore_checkpoint(self.checkpoint, self._local(self.progress.best_checkpoint))
        metrics: dict[str, Any] = {"best_epoch": self.progress.best_epoch, "model": self.config.model,
                                   "setting": self.config.setting, "attributes": list(self.attributes)}
        probe = None
        for split in (DEV, TEST):
            if split not in self.metadata.splits or not self.metadata.splits[split].count \
                    or not self.metadata.splits[split].labelled:
                continue
            predictions = predict_split(self._predict, self.data_dir, split, self.metadata, self.attributes,
                                        self.config.batch_size)
            scores = predictions.ccc()
            metrics[split] = {"ccc": scores, "ccc_mean": float(np.mean(list(scores.values()))),
                              "sentences": int(len(predictions.indices))}
        for batch in inference_batches(self.data_dir, DEV, self.metadata.params, 4, keys=("features",)):
            probe = batch["features"].numpy()
            break
        metrics["export"] = export_saved_model(self.model.net, self.metadata, self.attributes,
                                               self.out.model_dir, probe, self.data_dir)
        write_text(self.out.file("metrics.json"), json.dumps(metrics, indent=2))
        write_training_curves(self.out.file(CURVES_FILE), self.config, self.progress, list(self.model.trackers))
        self.log(f"best epoch {metrics['best_epoch']}: " + "; ".join(
            f"{split} CCC " + ", ".join(f"{a} {v:.3f}" for a, v in metrics[split]["ccc"].items())
            for split in (DEV, TEST) if split in metrics))
        self.log(f"SavedModel: {self.job.model_dir}")
        return metrics


def training_checkpoint(**children: Any) -> tf.train.Checkpoint:
    """A root checkpoint whose ``save_counter`` exists before it is written: ``restore``
    creates it otherwise, and then it is the one unmatched object ``restore_checkpoint``'s
    strict check finds."""
    checkpoint = tf.train.Checkpoint(**children)
    checkpoint.save_counter  # noqa: B018 (creates the variable)
    return checkpoint


def network_checkpoint(net: keras.Layer, optimizers: Mapping[str, keras.optimizers.Optimizer] | None = None,
                       **children: Any) -> tf.train.Checkpoint:
    """``net``'s variables (child ``net``) and those of its ``optimizers`` (``optimizers``)
    under their names (``model.checkpoints``), with any other ``children``."""
    names = network_variables(net)
    if optimizers is not None:
        children["optimizers"] = NamedVariables(optimizer_variables(optimizers, names))
    return training_checkpoint(net=NamedVariables(names), **children)


def restore_checkpoint(checkpoint: tf.train.Checkpoint, prefix: str, partial: bool = False) -> None:
    """Restores ``prefix`` into ``checkpoint``, or raises TrainingError saying why.

    Variables are matched by name (``model.checkpoints``): every ``NamedVariables`` child
    must find exactly its names, with their shapes, in the file, so a checkpoint of another
    architecture or Keras version is refused naming what differs, rather than leaving
    weights at their initial values or in each other's places. Unless ``partial``, every
    other value in the file must find its object too.
    """
    with readable_checkpoint(prefix) as readable:
        _restore(checkpoint, readable, prefix, partial)


def _restore(checkpoint: tf.train.Checkpoint, readable: str, prefix: str, partial: bool) -> None:
    try:
        # The reader takes the prefix itself: list_variables would treat a ram:// or gs://
        # prefix that looks like a folder as one and look for a 'checkpoint' file in it.
        shapes = tf.compat.v1.train.NewCheckpointReader(readable).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise TrainingError(f"checkpoint {prefix} cannot be read: {_first_line(error)}") from error
    problems = []
    for child, named in vars(checkpoint).items():
        if isinstance(named, NamedVariables):
            saved = saved_names(shapes, child)
            if saved and all(POSITIONAL_NAME.fullmatch(name) for name in saved):
                raise TrainingError(f"checkpoint {prefix} keeps its variables by position (written before "
                                    f"checkpoints named them); it cannot be restored by name: train again "
                                    f"into a new --job-dir")
            problems.extend(f"{child}: {problem}" for problem in named.mismatches(saved))
    if problems:
        raise TrainingError(f"checkpoint {prefix} does not match this network (another architecture or "
                            f"Keras version?): {'; '.join(problems)}")
    try:
        status = checkpoint.restore(readable)
    except (ValueError, tf.errors.OpError) as error:  # a variable of another shape or dtype
        raise TrainingError(f"checkpoint {prefix} does not match this network: {_first_line(error)}") from error
    status.expect_partial()  # no warnings at exit: a mismatch is raised here instead
    try:
        status.assert_existing_objects_matched() if partial else status.assert_consumed()
    except AssertionError as error:
        raise TrainingError(f"checkpoint {prefix} does not match this network (another architecture or "
                            f"Keras version?): {_first_line(error)[:500]}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def build_net(config: TrainConfig, params: FeatureParams) -> EmoClusterNet | ReconstructionNet:
    """The network a run trains: its variant's parts, shaped by the data's feature settings."""
    if config.variant.reconstruction:
        return ReconstructionNet.for_params(
            params, kind=config.variant.reconstruction, num_attributes=len(config.attributes),
            encoder_dropout=config.variant.encoder_dropout, reconstruction_weight=config.reconstruction_weight,
            kl_weight=config.kl_weight, ladder_noise=config.ladder_noise, ladder_weights=config.ladder_weights,
            seed=config.seed)
    return EmoClusterNet.for_params(
        params, temporal=config.variant.temporal,
        num_clusters=config.clusters if config.variant.clustering else None,
        num_attributes=len(config.attributes), encoder_dropout=config.variant.encoder_dropout,
        precision=config.precision)


def _epoch_line(epoch: int, epochs: int, row: Mapping[str, Any], improved: bool, metrics: list[str]) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("unlabeled_loss", *(f"train_{name}" for name in metrics), "train_cluster_entropy", "train_nmi"):
        if key in row and math.isfinite(row[key]):
            parts.append(f"{key} {row[key]:.4f}")
    parts.append("dev CCC " + " ".join(f"{k[8:]} {v:.3f}" for k, v in row.items()
                                        if k.startswith("dev_ccc_") and k != "dev_ccc_mean"))
    parts.append(f"mean {row['dev_ccc_mean']:.3f}" + (" *best*" if improved else ""))
    return " | ".join(parts)


def _sample_indices(source: SplitSource, count: int, seed: int) -> np.ndarray:
    """A seeded subset of ``count`` record indices of a split (the paper's 15K of the pool),
    drawn once per run: the same seed always keeps the same sentences."""
    indices = SplitCache.open(source).index  # in the records' fixed order, as they were read
    if count >= len(indices):
        return np.sort(indices)
    return np.sort(np.random.default_rng(seed).choice(indices, size=count, replace=False))


def checkpoint_in(checkpoint_dir: str, prefix: str) -> str:
    return posixpath.join(checkpoint_dir, posixpath.basename(prefix))


def _remove_checkpoint(prefix: str) -> None:
    for path in tf.io.gfile.glob(literal_pattern(prefix) + ".*"):  # a job folder named run[2] is no pattern
        tf.io.gfile.remove(path)


def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
