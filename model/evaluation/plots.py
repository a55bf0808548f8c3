"""Figures of the evaluation (paper Figs. 3-5 and their companions), as PNG files.

Each function draws one figure from arrays and writes it; none computes a score. Several
jobs go on one figure so they can be compared at a glance. Colours follow the paper where
it has them: vanilla DeepEmoCluster blue, the (first) temporal model red.
"""

from __future__ import annotations

import dataclasses
from typing import IO, TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from model.nets.variants import VANILLA, is_proposed

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
        if model == VANILLA and VANILLA_COLOUR not in colours:
            colours.append(VANILLA_COLOUR)
        elif is_proposed(model) and not red_taken:
            colours.append(TEMPORAL_COLOUR)
            red_taken = True
        else:
            colours.append(next(others))
    return colours


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use.

    Imported here rather than at the top so that importing this module (and the
    trainer, the predictor and the evaluator that import it) costs no start-up time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cluster_colour(k: int, count: int):
    """Distinct colours for up to 20 clusters, a continuous map beyond."""
    plt = pyplot()
    if count <= 10:
        return plt.get_cmap("tab10")(k)
    if count <= 20:
        return plt.get_cmap("tab20")(k)
    return plt.get_cmap("nipy_spectral")(k / (count - 1))


def _save(figure: "Figure", path: str | IO[bytes]) -> str | IO[bytes]:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    pyplot().close(figure)
    return path


def prediction_scatter(path: str, attribute: str, split: str, series: Sequence[Series],
                       truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                       cccs: Sequence[float]) -> str:
    """Predicted against true score of every sentence, one colour per job, with the identity line."""
    figure, axes = pyplot().subplots(figsize=(5.5, 5.5))
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
    figure, axes = pyplot().subplots(figsize=(7.5, 4.5))
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
    from model.evaluation.analyses import LEVELS

    figure, axes = pyplot().subplots(len(labels), 2, figsize=(11, 5 * len(labels)), squeeze=False)
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
    figure, axes = pyplot().subplots(figsize=(6.5, 4.2))
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
    figure, axes = pyplot().subplots(1, len(attributes), figsize=(3.2 * len(attributes) + 2.5, 0.45 * len(rows) + 2.2),
                                squeeze=False, sharey=True)
    for axis, attribute in zip(axes[0], attributes):
        data = [np.asarray(values.get((row, attribute), []), np.float64) for row in rows]
        axis.boxplot([d if len(d) else [np.nan] for d in data], orientation="horizontal", tick_labels=list(rows))
        axis.set(xlabel="CCC", title=attribute)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()
    figure.suptitle(title)
    return _save(figure, path)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One history column as floats, NaN where a row lacks it (matplotlib leaves NaN undrawn)."""
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, "nan")))
        except (TypeError, ValueError):
            values.append(float("nan"))
    return np.asarray(values, np.float64)


def _has(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def training_curves(path: str | IO[bytes], history: Sequence[Mapping[str, Any]], attributes: Sequence[str],
                    loss_terms: Sequence[str], title: str, best_epoch: int | None = None) -> str | IO[bytes]:
    """A job's history per epoch: dev CCC per attribute, the loss terms, cluster entropy and NMI.

    ``history`` holds the rows of history.csv (``epoch``, ``dev_ccc_<attribute>``,
    ``<stage>_<term>``, ``<stage>_cluster_entropy``, ``<stage>_nmi``); the stages are
    ``train`` (solid lines) and, in SSL, ``unlabeled`` (dashed). A single epoch draws points.
    """
    epochs = _column(history, "epoch")
    marker = "o" if len(history) < 30 else None
    figure, (ccc_axes, loss_axes, cluster_axes) = pyplot().subplots(1, 3, figsize=(16, 4.8))
    for i, attribute in enumerate(attributes):
        ccc_axes.plot(epochs, _column(history, f"dev_ccc_{attribute}"), marker=marker, color=OTHER_COLOURS[i],
                      label=attribute)
    if len(attributes) > 1:
        ccc_axes.plot(epochs, _column(history, "dev_ccc_mean"), marker=marker, color="black", linestyle="--",
                      label="mean")
    if best_epoch:
        ccc_axes.axvline(best_epoch, color="grey", linewidth=1, linestyle=":", label=f"best epoch ({best_epoch})")
    ccc_axes.set(xlabel="epoch", ylabel="CCC (sentence level)", title="Dev CCC per attribute")
    stage_styles = {"train": "-", "unlabeled": "--"}
    for i, term in enumerate(loss_terms):
        for stage, style in stage_styles.items():
            values = _column(history, f"{stage}_{term}")
            # Stage I has no CCC term; a stage with a single term draws it, not an identical total.
            terms = [t for t in loss_terms if t not in ("loss", "ccc_loss" if stage == "unlabeled" else "")
                     and _has(_column(history, f"{stage}_{t}"))]
            if _has(values) and (stage == "train" or term != "ccc_loss") and (term != "loss" or len(terms) > 1):
                loss_axes.plot(epochs, values, marker=marker, linestyle=style,
                               color="black" if term == "loss" else OTHER_COLOURS[(i - 1) % len(OTHER_COLOURS)],
                               label=f"{stage} {'total' if term == 'loss' else term}")
    loss_axes.set(xlabel="epoch", ylabel="mean over the stage's steps", title="Loss terms (train solid, "
                  "unlabelled dashed)" if _has(_column(history, "unlabeled_loss")) else "Loss terms")
    drawn = False
    for stage, style in stage_styles.items():
        for name, colour in (("cluster_entropy", "tab:purple"), ("nmi", "tab:olive")):
            values = _column(history, f"{stage}_{name}")
            if _has(values):
                label = "size entropy / log Q" if name == "cluster_entropy" else "NMI with previous epoch"
                cluster_axes.plot(epochs, values, marker=marker, linestyle=style, color=colour,
                                  label=f"{stage}: {label}")
                drawn = True
    if not drawn:
        cluster_axes.text(0.5, 0.5, "no clustering in this model", ha="center", va="center",
                          transform=cluster_axes.transAxes, color="grey")
    cluster_axes.set(xlabel="epoch", ylim=(0, 1.05), title="Clusters (1 = balanced sizes; NMI: stability)")
    for axes in (ccc_axes, loss_axes, cluster_axes):
        axes.grid(alpha=0.3)
        if len(epochs):
            axes.set_xticks(_epoch_ticks(epochs))
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def _epoch_ticks(epochs: np.ndarray) -> np.ndarray:
    """Whole epochs only, at most about 12 ticks."""
    first, last = int(np.nanmin(epochs)), int(np.nanmax(epochs))
    return np.arange(first, last + 1, max(1, (last - first + 1) // 12))


def level_confusion(path: str, attribute: str, split: str, labels: Sequence[str],
                    matrices: Sequence[np.ndarray]) -> str:
    """Low / middle / high of the true score (rows) against the predicted score's level (columns).

    One panel per job. Cells give the count and the share of the row, so a skewed split
    (most sentences in the middle) still shows how each true level is recognised.
    """
    from model.evaluation.analyses import LEVEL_EDGES, LEVELS

    low, high = (f"{edge:g}" for edge in LEVEL_EDGES)
    names = [f"{name}\n({edges})" for name, edges in zip(LEVELS, (f"< {low}", f"{low} to < {high}", f">= {high}"))]
    figure, axes_row = pyplot().subplots(1, len(labels), figsize=(4.6 * len(labels) + 0.6, 4.6), squeeze=False)
    for axes, label, matrix in zip(axes_row[0], labels, matrices):
        matrix = np.asarray(matrix)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for row in range(len(LEVELS)):
            for column in range(len(LEVELS)):
                axes.text(column, row, f"{matrix[row, column]}\n{100 * shares[row, column]:.0f} %", ha="center",
                          va="center", fontsize=9, color="white" if shares[row, column] > 0.6 else "black")
        ticks = range(len(LEVELS))
        axes.set_xticks(ticks, names)
        axes.set_yticks(ticks, names)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        axes.set(xlabel=f"predicted {attribute} level", ylabel=f"true {attribute} level",
                 title=f"{label}\n{attribute}, {split} split: {100 * accuracy:.0f} % on the diagonal")
    return _save(figure, path)
