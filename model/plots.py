"""Figures of the evaluation (paper Figs. 3-5 and their companions), as PNG files.

Each function draws one figure from arrays and writes it; none computes a score. Several
jobs go on one figure so they can be compared at a glance. Colours follow the paper where
it has them: vanilla DeepEmoCluster blue, the (first) temporal model red.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from model.analysis import LEVELS  # noqa: E402

VANILLA_COLOUR = "tab:blue"
TEMPORAL_COLOUR = "tab:red"
OTHER_COLOURS = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                 "tab:gray")
LEVEL_COLOURS = ("#d2b48c", "#7fbf7f", "#4b0082")
"""low tan, middle green, high dark purple: the paper's Fig. 4 colours for the levels."""
DPI = 120


@dataclasses.dataclass(frozen=True)
class Series:
    """How one job appears on a figure."""

    label: str
    colour: str


def job_colours(models: Sequence[str]) -> list[str]:
    """Vanilla blue, the first temporal model red, every other job its own further colour."""
    colours, others = [], iter(OTHER_COLOURS * (len(models) // len(OTHER_COLOURS) + 1))
    red_taken = False
    for model in models:
        if model == "vanilla" and VANILLA_COLOUR not in colours:
            colours.append(VANILLA_COLOUR)
        elif model.startswith("temp-") and not red_taken:
            colours.append(TEMPORAL_COLOUR)
            red_taken = True
        else:
            colours.append(next(others))
    return colours


def cluster_colour(k: int, count: int):
    """Distinct colours for up to 20 clusters, a continuous map beyond."""
    if count <= 10:
        return plt.get_cmap("tab10")(k)
    if count <= 20:
        return plt.get_cmap("tab20")(k)
    return plt.get_cmap("nipy_spectral")(k / (count - 1))


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def prediction_scatter(path: str, attribute: str, split: str, series: Sequence[Series],
                       truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                       cccs: Sequence[float]) -> str:
    """Predicted against true score of every sentence, one colour per job, with the identity line."""
    figure, axes = plt.subplots(figsize=(5.5, 5.5))
    for s, truth, predicted, score in zip(series, truths, predictions, cccs):
        axes.scatter(truth, predicted, s=14, alpha=0.6, color=s.colour, edgecolors="none",
                     label=f"{s.label} (CCC {score:.3f})")
    axes.plot([1, 7], [1, 7], color="black", linewidth=1, linestyle="--", label="prediction = truth")
    axes.set(xlim=(1, 7), ylim=(1, 7), aspect="equal", xlabel=f"true {attribute} (1..7)",
             ylabel=f"predicted {attribute} (1..7)",
             title=f"{attribute.capitalize()}: predicted vs. true ({split} split)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def transition_histogram(path: str, split: str, series: Sequence[Series],
                         distributions: Sequence[Mapping[str, list]], means: Sequence[float]) -> str:
    """Paper Fig. 3: share of sentences per transition ratio, jobs as side-by-side bars."""
    bins = np.asarray(distributions[0]["bins"])
    width = (bins[1] - bins[0]) * 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for i, (s, distribution, mean) in enumerate(zip(series, distributions, means)):
        offset = (i - (len(series) - 1) / 2) * width
        axes.bar(bins + offset, distribution["fractions"], width=width, color=s.colour, alpha=0.85,
                 label=f"{s.label} (mean {mean:.3f})")
    axes.set_xticks(bins, [f"{b:.2f}" for b in bins], rotation=45 if len(bins) > 8 else 0)
    axes.set(xlabel="transition ratio (cluster changes between consecutive chunks / (C - 1))",
             ylabel="share of sentences", title=f"Temporal consistency of cluster assignments ({split} split)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def tsne_grid(path: str, attribute: str, labels: Sequence[str], coordinates: Sequence[np.ndarray],
              clusters: Sequence[np.ndarray], levels: Sequence[np.ndarray]) -> str:
    """Paper Figs. 4-5: one row per job, t-SNE coloured by cluster (left) and emotion level (right)."""
    figure, axes = plt.subplots(len(labels), 2, figsize=(11, 5 * len(labels)), squeeze=False)
    for row, (label, xy, cluster, level) in enumerate(zip(labels, coordinates, clusters, levels)):
        left, right = axes[row]
        count = int(cluster.max()) + 1
        for k in np.unique(cluster):
            keep = cluster == k
            left.scatter(xy[keep, 0], xy[keep, 1], s=6, alpha=0.7, color=cluster_colour(int(k), count),
                         label=f"cluster {k}")
        for i, name in enumerate(LEVELS):
            keep = level == i
            right.scatter(xy[keep, 0], xy[keep, 1], s=6, alpha=0.7, color=LEVEL_COLOURS[i],
                          label=f"{name} ({np.count_nonzero(keep)})")
        left.set_title(f"{label}: cluster assignment")
        right.set_title(f"{label}: {attribute} level")
        for axis in (left, right):
            axis.set(xlabel="t-SNE 1", ylabel="t-SNE 2")
        left.legend(fontsize=7, markerscale=2, ncol=2 if len(np.unique(cluster)) > 10 else 1, loc="best")
        right.legend(fontsize=8, markerscale=2, title="level (low < 3 <= middle < 5 <= high)", title_fontsize=7)
    return _save(figure, path)


def probe_bars(path: str, split: str, series: Sequence[Series], scores: Sequence[Mapping[str, float | None]]) -> str:
    """Linear-probe macro-F1 per attribute, one bar per job (missing scores are left out)."""
    attributes = list(scores[0])
    positions = np.arange(len(attributes))
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for i, (s, score) in enumerate(zip(series, scores)):
        values = [np.nan if score[a] is None else score[a] for a in attributes]
        bars = axes.bar(positions + (i - (len(series) - 1) / 2) * width, values, width=width, color=s.colour,
                        label=s.label)
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(positions, attributes)
    axes.set(ylim=(0, 1), ylabel="macro-F1 (low / middle / high)",
             title=f"Linear probe on frozen sentence embeddings ({split} split)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def ccc_boxplot(path: str, title: str, rows: Sequence[str], attributes: Sequence[str],
                values: Mapping[tuple[str, str], Sequence[float]]) -> str:
    """Spread of the sub-set x trial CCCs: one panel per attribute, one box per row."""
    figure, axes = plt.subplots(1, len(attributes), figsize=(3.2 * len(attributes) + 2.5, 0.45 * len(rows) + 2.2),
                                squeeze=False, sharey=True)
    for axis, attribute in zip(axes[0], attributes):
        data = [np.asarray(values.get((row, attribute), []), np.float64) for row in rows]
        axis.boxplot([d if len(d) else [np.nan] for d in data], orientation="horizontal", tick_labels=list(rows))
        axis.set(xlabel="CCC", title=attribute)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()
    figure.suptitle(title)
    return _save(figure, path)
