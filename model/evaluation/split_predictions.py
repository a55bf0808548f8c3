"""Sentence-level predictions over a whole split, on the 1..7 scale, and their CCCs.

Model selection, the final report and ``model.evaluate`` all score with these, so dev
and test numbers are computed one way: over every sentence of the split (CCC is not an
average of per-batch values), with predictions de-normalised by the train statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from model.training.datasets import inference_batches
from model.nets.losses import ccc
from model.progress import Progress
from pipeline.metadata import Metadata
from pipeline.params import ATTRIBUTES

PREDICT_KEYS = ("features", "labels", "has_labels", "index", "utt_id")


def inference_function(net: keras.Model, jit_compile: bool = False) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """``net``'s inference-mode call, compiled once per net.

    One function serves every output (predictions for scoring, cluster features for
    K-means), and ``reduce_retracing`` makes the smaller last batch of a split give one
    batch-size-generic graph rather than a graph per size. A named function rather than a
    lambda: autograph re-parses a lambda's source line and warns when it cannot isolate it.
    """

    def infer(features: tf.Tensor) -> dict[str, tf.Tensor]:
        return net(features, training=False)

    return tf.function(infer, jit_compile=jit_compile, reduce_retracing=True)


def output_of(infer: Callable[[tf.Tensor], dict[str, tf.Tensor]], output: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """One output of an ``inference_function``."""

    def select(features: tf.Tensor) -> tf.Tensor:
        return infer(features)[output]

    return select


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """Per sentence of a split: ids, true labels [N, 3] and predictions [N, A] (1..7)."""

    attributes: tuple[str, ...]
    utt_ids: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray

    def truth(self, attribute: str) -> np.ndarray:
        return self.labels[:, ATTRIBUTES.index(attribute)]

    def predicted(self, attribute: str) -> np.ndarray:
        return self.predictions[:, self.attributes.index(attribute)]

    def ccc(self) -> dict[str, float]:
        """CCC per trained attribute over every sentence (population statistics)."""
        return {a: float(ccc(tf.constant(self.truth(a), tf.float64), tf.constant(self.predicted(a), tf.float64)))
                for a in self.attributes}


def predict_split(
    predict_fn: Callable[[tf.Tensor], tf.Tensor],
    data_dir: str,
    split: str,
    metadata: Metadata,
    attributes: Sequence[str],
    batch_size: int = 64,
    progress: Progress | None = None,
) -> SplitPredictions:
    """Runs ``predict_fn`` (features [B, C, m, F] -> normalised predictions [B, A]) over a split."""
    utt_ids, indices, labels, outputs = [], [], [], []
    for batch in inference_batches(data_dir, split, metadata.params, batch_size, keys=PREDICT_KEYS):
        outputs.append(np.asarray(predict_fn(batch["features"])))
        labels.append(batch["labels"].numpy())
        indices.append(batch["index"].numpy())
        utt_ids.append(batch["utt_id"].numpy().astype(str))
        if progress is not None:
            progress.update(len(indices[-1]))
    normalised = np.concatenate(outputs).astype(np.float64)
    return SplitPredictions(
        attributes=tuple(attributes),
        utt_ids=np.concatenate(utt_ids),
        indices=np.concatenate(indices),
        labels=np.concatenate(labels).astype(np.float64),
        predictions=metadata.label_stats.denormalise(normalised, attributes),
    )
