"""The paper's analyses of what a trained model learned (Sec. 5.2-5.3).

- Temporal consistency (Fig. 3): how often the cluster assignment (K-means on the chunk
  embeddings h, Eq. 4) changes between consecutive chunks of a sentence.
- Cluster representation (Figs. 4-5): a t-SNE map of the chunk embeddings h (Eq. 4),
  coloured by cluster and by emotion level.
- Linear probe: how linearly separable the three emotion levels are in the frozen
  encoder's sentence embeddings (macro-F1).

Functions here take arrays and return arrays or JSON-ready dicts; ``model.evaluate``
wires them to a job and ``model.evaluation.plots`` draws them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from model.nets.variants import PAPER_CLUSTERS
from model.progress import Progress
from pipeline.params import FeatureParams

if TYPE_CHECKING:  # TensorFlow and scikit-learn where used: model.evaluate --help needs the constants only
    import tensorflow as tf

LEVELS: tuple[str, ...] = ("low", "middle", "high")
LEVEL_EDGES: tuple[float, float] = (3.0, 5.0)
"""low [1, 3), middle [3, 5), high [5, 7]: the paper's three levels of a 1..7 score."""

EMBEDDINGS = "embeddings"
CLUSTER_FEATURES = "cluster_features"
NO_HEAD_CLUSTERS = PAPER_CLUSTERS
"""Q for models without a cluster head (CNN-regressor, reconstruction baselines): the paper's Q."""
TRANSITION_FEATURES = {"embeddings": EMBEDDINGS, "cluster-features": CLUSTER_FEATURES}
"""``--transition-features`` choice -> network output clustered for Fig. 3. ``embeddings``: the
encoder's h_i, as the paper (Sec. 5.2, Eq. 4); ``cluster-features``: the cluster head's
pre-activation input after the temporal net, what training clusters (the reference code)."""
DEFAULT_TRANSITION_FEATURES = "embeddings"


@dataclasses.dataclass(frozen=True)
class ChunkOutputs:
    """Per sentence of a split, ordered by record index: labels [N, 3] and outputs [N, C, D]."""

    indices: np.ndarray
    utt_ids: np.ndarray
    labels: np.ndarray
    outputs: dict[str, np.ndarray]


def chunk_outputs(infer: Callable[[tf.Tensor], dict[str, tf.Tensor]], data_dir: str, split: str,
                  params: FeatureParams, names: Sequence[str], batch_size: int = 64,
                  progress: Progress | None = None) -> ChunkOutputs:
    """Runs a network's ``inference_function`` over a split and keeps the per-chunk outputs ``names``."""
    from model.training.datasets import inference_batches

    indices, utt_ids, labels = [], [], []
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in inference_batches(data_dir, split, params, batch_size, keys=("features", "labels", "index", "utt_id")):
        outputs = infer(batch["features"])
        for name in names:
            collected[name].append(outputs[name].numpy())
        indices.append(batch["index"].numpy())
        utt_ids.append(batch["utt_id"].numpy().astype(str))
        labels.append(batch["labels"].numpy())
        if progress is not None:
            progress.update(len(indices[-1]))
    if not indices:
        raise ValueError(f"split {split!r} of {data_dir} holds no records")
    index = np.concatenate(indices)
    order = np.argsort(index, kind="stable")
    return ChunkOutputs(index[order], np.concatenate(utt_ids)[order], np.concatenate(labels)[order].astype(np.float64),
                        {name: np.concatenate(values)[order] for name, values in collected.items()})


def cluster_chunks(features: np.ndarray, num_clusters: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """K-means over every chunk of every sentence, as training clusters: [N, C, D] -> [N, C] ids."""
    from model.training.kmeans import kmeans

    num, chunks, dim = features.shape
    if num * chunks < num_clusters:
        raise ValueError(f"{num * chunks} chunks cannot form {num_clusters} clusters")
    assignments, _, _ = kmeans(features.reshape(num * chunks, dim).astype(np.float32), num_clusters,
                               iterations=iterations, seed=seed)
    return np.asarray(assignments).reshape(num, chunks)


def transition_ratios(assignments: np.ndarray) -> np.ndarray:
    """Per sentence: changes of cluster between consecutive chunks / (C - 1) (Sec. 5.2)."""
    assignments = np.asarray(assignments)
    if assignments.ndim != 2 or assignments.shape[1] < 2:
        raise ValueError(f"need [sentences, chunks >= 2] assignments, got shape {assignments.shape}")
    changes = np.count_nonzero(assignments[:, 1:] != assignments[:, :-1], axis=1)
    return changes / (assignments.shape[1] - 1)


def ratio_distribution(ratios: np.ndarray, num_chunks: int) -> dict[str, list]:
    """Histogram over the C possible ratios k / (C - 1), k = 0..C-1: exact, no binning choice."""
    steps = num_chunks - 1
    counts = np.bincount(np.rint(np.asarray(ratios) * steps).astype(np.int64), minlength=num_chunks)
    return {"bins": [k / steps for k in range(num_chunks)], "counts": counts.tolist(),
            "fractions": (counts / max(len(ratios), 1)).tolist()}


def emotion_levels(values: np.ndarray) -> np.ndarray:
    """0 low (< 3), 1 middle (3 to < 5), 2 high (>= 5) for scores on the 1..7 scale."""
    return np.digitize(np.asarray(values), LEVEL_EDGES)


def subsample(count: int, max_count: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_count`` of ``count`` items, drawn without replacement."""
    if count <= max_count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=max_count, replace=False))


def tsne_map(points: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of [n, D] points (scikit-learn, PCA initialisation).

    t-SNE needs perplexity < n; small sets get (n - 1) / 3 instead, the usual bound.
    """
    from sklearn.manifold import TSNE

    points = np.asarray(points, np.float64)
    if len(points) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(points)}")
    perplexity = min(perplexity, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def linear_probe(train_x: np.ndarray, train_levels: np.ndarray, test_x: np.ndarray, test_levels: np.ndarray,
                 seed: int = 0) -> dict:
    """Logistic regression on frozen embeddings -> emotion levels; macro-F1 and accuracy on test.

    Macro-F1 averages over the levels present in the test truth or predictions
    (scikit-learn's default), so a level absent from both does not count as F1 = 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = {name: {level: int(np.count_nonzero(levels == i)) for i, level in enumerate(LEVELS)}
              for name, levels in (("train_counts", train_levels), ("test_counts", test_levels))}
    if len(np.unique(train_levels)) < 2:
        return {"macro_f1": None, "accuracy": None, **counts,
                "skipped": "the train split holds a single emotion level: nothing to separate"}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_levels)
    predicted = probe.predict(test_x)
    return {"macro_f1": float(f1_score(test_levels, predicted, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(test_levels, predicted)), **counts}
