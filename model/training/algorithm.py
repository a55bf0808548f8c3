"""One training run: paper Algorithm 1 read top to bottom in ``Trainer._train``.

Per epoch, per stage (stage I on the unlabelled split in SSL, then stage II on train): a
clustering model first re-assigns (DeepCluster's step: embed the split, K-means, new
pseudo-labels for the split's sampler, a fresh top cluster layer; ``model.training.reassignment``),
then trains one pass of the split's sampler (``model.training.samplers``) through the
train step of ``model.training.train_step``. After every stage the run is checkpointed, so a
killed job re-run with the same command resumes from the last completed stage. After stage
II the sentence-level dev CCC selects the best weights. At the end the best weights are
scored on dev and test and exported as a SavedModel. Where each file goes is
``model.training.job_folder``'s business.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import posixpath
import time
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from model.evaluation.split_predictions import inference_function, output_of, predict_split
from model.nets.builder import build_net
from model.progress import Reporter
from model.serving.export import export_saved_model
from model.training.checkpoints import (CheckpointError, checkpoint_in, network_checkpoint, remove_checkpoint,
                                        restore_checkpoint)
from model.training.config import TrainConfig
from model.training.datasets import SplitSource, inference_batches
from model.training.job_folder import (CURVES_FILE, HISTORY_FILE, LOG_FILE, METRICS_FILE, JobPaths, history_csv,
                                       write_text)
from model.training.job_log import JobLog
from model.training.multiworker import (data_sharding, in_multi_worker_mode, is_chief, scratch_folder,
                                        work_around_keras_fit)
from model.training.reassignment import Reclusterer
from model.training.samplers import ChunkSampler, PlainSampler, SentenceSampler
from model.training.split_cache import SplitCache
from model.training.stages import DEV, STAGE_I, STAGE_II, TEST, UNLABELED, Stage
from model.training.train_step import DeepEmoCluster
from pipeline.metadata import Metadata
from pipeline.params import ATTRIBUTES

Sampler = PlainSampler | SentenceSampler | ChunkSampler
SAMPLERS: dict[str, type[Sampler]] = {"sentence": SentenceSampler, "chunk": ChunkSampler, "plain": PlainSampler}
"""``Variant.sampler`` -> the sampler class that draws a stage's batches."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what is left intact."""


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


def write_training_curves(path: str, config: TrainConfig, progress: Progress, loss_terms: list[str]) -> None:
    """training_curves.png from the history rows (through a buffer: matplotlib cannot write gs://)."""
    from model.evaluation import plots

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
        # Every replica reads the job's folders; only the chief writes there (model.training.multiworker).
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
        # with (0, 0), which fails for the per-epoch tensor seeds of model.training.samplers.
        tf.random.set_seed(config.seed + 1)
        with self.strategy.scope():
            net = build_net(config, metadata.params)
            if init_from:  # a converted release (pretrained/); a resumed run then restores its own checkpoint
                from model.serving.convert_reference import load_release_weights

                load_release_weights(net, init_from, self.attributes[0], metadata.params)
            self.model = DeepEmoCluster(config, net)
            self.model.compile(jit_compile=config.jit_compile)
        if in_multi_worker_mode(self.strategy):
            work_around_keras_fit(self.model)
        self._infer = inference_function(net, config.jit_compile)
        self._predict = output_of(self._infer, "predictions")
        self.stages: list[Stage] = [STAGE_I, STAGE_II] if config.uses_unlabeled else [STAGE_II]
        self.samplers = {stage: self._sampler(stage) for stage in self.stages}
        self.reclusterers = ({stage: self._reclusterer(stage) for stage in self.stages}
                             if config.variant.clustering else {})
        self.progress = Progress()
        self._state_names: tuple[str, ...] = ()
        """The checkpoints the state file on disk names: never rewritten (``_fresh_prefix``)."""
        self.checkpoint = network_checkpoint(
            net, {group.name: group.optimizer for group in self.model.optimizer_groups},
            triplet_rng=self.model.triplet_rng,
            **{f"{stage.name}_sampler_epochs": self.samplers[stage].epochs_started for stage in self.stages},
            **{f"{stage.name}_assignments": self.samplers[stage].assignments.labels for stage in self.reclusterers})

    def _sampler(self, stage: Stage) -> Sampler:
        source = SplitSource.from_metadata(self.data_dir, stage.split, self.metadata)
        subset = None
        if stage.split == UNLABELED and self.config.unlabeled_count:
            subset = _sample_indices(source, self.config.unlabeled_count, self.config.seed)
        return SAMPLERS[self.config.variant.sampler](source, subset=subset)

    def _reclusterer(self, stage: Stage) -> Reclusterer:
        sampler = self.samplers[stage]
        return Reclusterer(
            name=stage.name, embed_fn=output_of(self._infer, "cluster_features"),
            # The sentences the stage trains on (the SSL subset, when there is one), each once.
            batches=lambda: sampler.ordered_batches(self.config.batch_size),
            sampler=sampler, num_clusters=self.config.clusters, iterations=self.config.kmeans_iterations,
            seed=self.config.seed, init=self.config.kmeans_init, progress=self.reporter)

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
        """Paper Algorithm 1: per epoch, per stage, re-assign then train; then select on dev."""
        self.restore()
        writer = tf.summary.create_file_writer(self.out.tensorboard_dir)
        while not self.progress.finished and self.progress.epoch < self.config.epochs:
            epoch = self.progress.epoch
            while self.progress.stage < len(self.stages):
                stage = self.stages[self.progress.stage]
                start = time.perf_counter()
                self._announce(stage, epoch)
                if stage in self.reclusterers:
                    self.progress.row.update(self._reassign(stage, epoch))
                self.progress.row.update(self._train_stage(stage, epoch, start))
                self.progress.stage += 1
                if self.progress.stage < len(self.stages):
                    self._save()
            self._end_epoch(epoch, writer)
        if not self.progress.finished:
            self.progress.finished = True
            self._save()
        return self._finalise()

    def _announce(self, stage: Stage, epoch: int) -> None:
        if self.verbose:
            terms = [name for name in self.model.trackers
                     if name != "loss" and (stage.supervised or name != "ccc_loss")]
            self.log(f"epoch {epoch + 1}/{self.config.epochs} stage {stage.name} "
                     f"({' + '.join(terms)} on {self.samplers[stage].source.count} sentences)")

    def _reassign(self, stage: Stage, epoch: int) -> dict[str, float]:
        """DeepCluster's re-assignment: pseudo-labels of the current features for the stage's
        sampler, and a fresh top cluster layer, since cluster ids change meaning between stages."""
        stats = self.reclusterers[stage].run(len(self.stages) * epoch + self.stages.index(stage))
        self.model.reset_cluster_classifier()
        return stats

    def _train_stage(self, stage: Stage, epoch: int, start: float) -> dict[str, float]:
        """One pass of the stage's sampler through the train step (Eq. 3, Eq. 7); ``start``:
        when the stage began, its re-assignment included."""
        self.model.set_stage(stage)
        guard = NonFiniteLossGuard()
        callbacks: list[keras.callbacks.Callback] = [guard, keras.callbacks.TensorBoard(
            posixpath.join(self.out.tensorboard_dir, stage.name), update_freq="epoch")]
        if self.verbose:
            callbacks.append(StageProgressBar())
        history = self.model.fit(self._batches(stage, epoch), epochs=epoch + 1, initial_epoch=epoch,
                                 callbacks=callbacks, verbose=self.verbose, shuffle=False)
        if guard.failed_step is not None:
            raise TrainingError(
                f"non-finite loss in epoch {epoch + 1}, stage {stage.name}, step {guard.failed_step + 1}; "
                f"training stopped; the last good checkpoint is {self.progress.checkpoint or 'none yet'}")
        stats = {f"{stage.name}_{name}": float(values[-1]) for name, values in history.history.items()}
        stats[f"{stage.name}_seconds"] = time.perf_counter() - start
        sampler = self.samplers[stage]
        if isinstance(sampler, SentenceSampler):
            stats[f"{stage.name}_acceptance_achieved"] = sampler.acceptance_stats()["rate"]
        return stats

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

        sampler = self.samplers[stage]
        batch_size = self.config.batch_size
        if sampler.__class__ is ChunkSampler:
            batch_size *= self.metadata.params.num_chunks
        seed = self.config.seed * 1000 + len(self.stages) * epoch + self.stages.index(stage)
        return sampler.dataset(batch_size, seed).map(to_model_batch).with_options(data_sharding())

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
        write_text(self.out.file(HISTORY_FILE), history_csv(self.progress.history))
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
            self._restore(self._local(self.progress.best_checkpoint))
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
        write_text(self.out.file(METRICS_FILE), json.dumps(metrics, indent=2))
        write_training_curves(self.out.file(CURVES_FILE), self.config, self.progress, list(self.model.trackers))
        self.log(f"best epoch {metrics['best_epoch']}: " + "; ".join(
            f"{split} CCC " + ", ".join(f"{a} {v:.3f}" for a, v in metrics[split]["ccc"].items())
            for split in (DEV, TEST) if split in metrics))
        self.log(f"SavedModel: {self.job.model_dir}")
        return metrics

    # Checkpoints: a kill at any moment leaves a state naming complete checkpoints.

    def restore(self) -> bool:
        """Restores the last completed stage, if the job directory holds one."""
        if not tf.io.gfile.exists(self.job.state_file):
            return False
        with tf.io.gfile.GFile(self.job.state_file) as handle:
            self.progress = Progress(**json.load(handle))
        self._state_names = (self.progress.checkpoint, self.progress.best_checkpoint)
        if self.progress.checkpoint:
            self._restore(self._local(self.progress.checkpoint))
        if self.progress.finished:
            self.log(f"resuming from epoch {self.progress.epoch}: training finished, finalising "
                     f"(checkpoint {self.progress.checkpoint})")
        else:
            self.log(f"resuming from epoch {self.progress.epoch + 1}, stage "
                     f"{self.stages[self.progress.stage].name} (checkpoint {self.progress.checkpoint or 'none'})")
        return True

    def _restore(self, prefix: str) -> None:
        try:
            restore_checkpoint(self.checkpoint, prefix)
        except CheckpointError as error:
            raise TrainingError(str(error)) from error

    def _local(self, prefix: str) -> str:
        """A saved checkpoint prefix inside this job's checkpoint folder (the job may have moved);
        a non-chief replica reads its own copy when it wrote one."""
        own = checkpoint_in(self.out.checkpoint_dir, prefix)
        if self.chief or tf.io.gfile.exists(own + ".index"):
            return own
        return checkpoint_in(self.job.checkpoint_dir, prefix)

    def _remove(self, prefix: str) -> None:
        """Removes a checkpoint this replica wrote (never the chief's, from another replica)."""
        remove_checkpoint(checkpoint_in(self.out.checkpoint_dir, prefix))

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
        """A new checkpoint first, then the state that points at it, then the old one goes."""
        prefix = self._fresh_prefix(f"ckpt-e{self.progress.epoch:03d}-s{self.progress.stage}")
        previous = self.progress.checkpoint
        self.progress.checkpoint = self.checkpoint.write(prefix)
        write_text(self.out.state_file, json.dumps(dataclasses.asdict(self.progress)))
        self._state_names = (self.progress.checkpoint, self.progress.best_checkpoint)
        if previous and previous not in (self.progress.checkpoint, self.progress.best_checkpoint):
            self._remove(previous)


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


def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
