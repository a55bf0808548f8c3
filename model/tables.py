"""Results tables laid out like the paper's: Tables 2-3 (models) and Tables 4-6 (sweeps).

A table is rendered from samples only (``{(row, attribute): [CCC, ...]}``, one value per
sub-set and trial), so it can be rebuilt from ``results.csv`` at any time. Significance
follows the paper (Sec. 4.3): two-tailed t-test over the 4 x trials values, p < 0.05.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from model.metrics import SIGNIFICANCE_LEVEL, sample_std, significantly_better
from model.variants import VARIANTS
from pipeline.params import ATTRIBUTES

RECONSTRUCTION_BASELINES: tuple[str, ...] = ("ae", "vae", "ladder")
BASELINES: tuple[str, ...] = (*RECONSTRUCTION_BASELINES, "regressor", "vanilla")
PROPOSED_PREFIX = "temp-"
PAPER_ORDER: tuple[str, ...] = ("regressor", "ae", "vae", "ladder", "vanilla", "temp-gru", "temp-cnn", "temp-trans",
                                "temp-triplet")
PAPER_NAMES = {"ae": "CNN-AE", "vae": "CNN-VAE", "ladder": "CNN-LadderNet"}
"""Fallback names of the reconstruction baselines while ``model.variants`` does not list them."""
COLUMNS = {"arousal": "Aro.-CCC", "valence": "Val.-CCC", "dominance": "Dom.-CCC"}
SWEEP_SYMBOLS = {"clusters": "Q", "triplet-weight": "γ", "unlabeled-count": "|U|"}
"""How the paper's Tables 4-6 name the swept setting."""

Samples = Mapping[tuple[str, str], Sequence[float]]


def paper_name(model: str) -> str:
    variant = VARIANTS.get(model)
    return (variant.paper_name if variant is not None and variant.paper_name else None) or PAPER_NAMES.get(model, model)


def paper_order(models: Sequence[str]) -> list[str]:
    """The paper's row order (baselines first); models it does not know keep their order, last."""
    known = [m for m in PAPER_ORDER if m in models]
    return known + [m for m in models if m not in PAPER_ORDER]


def markers(model: str, attribute: str, samples: Samples, level: float = SIGNIFICANCE_LEVEL) -> str:
    """'†*', '*', '†' or '' for a proposed (temp-*) model, as the paper's Tables 2-3.

    ``*``: significantly better than every reconstruction baseline present; ``†``: than
    every baseline present (reconstruction baselines, CNN-regressor and vanilla). A
    marker needs at least one such baseline with values.
    """
    if not model.startswith(PROPOSED_PREFIX) or not samples.get((model, attribute)):
        return ""

    def beats_all(baselines: Sequence[str]) -> bool:
        present = [b for b in baselines if samples.get((b, attribute))]
        return bool(present) and all(
            significantly_better(samples[(model, attribute)], samples[(b, attribute)], level) for b in present)

    return ("†" if beats_all(BASELINES) else "") + ("*" if beats_all(RECONSTRUCTION_BASELINES) else "")


def _means(rows: Sequence[str], attributes: Sequence[str], samples: Samples) -> dict[tuple[str, str], float]:
    """Means rounded to the 4 digits shown (+ 0.0 turns -0.0 into 0.0), so ties in print tie in bold too."""
    return {(r, a): round(float(np.mean(samples[(r, a)])), 4) + 0.0
            for r in rows for a in attributes if samples.get((r, a))}


def _best(means: Mapping[tuple[str, str], float], attribute: str) -> float | None:
    values = [v for (_, a), v in means.items() if a == attribute]
    return max(values) if values else None


def _table(header: str, rows: Sequence[str], names: Sequence[str], attributes: Sequence[str], samples: Samples,
           with_markers: bool) -> list[str]:
    means = _means(rows, attributes, samples)
    lines = [f"| {header} | " + " | ".join(COLUMNS[a] for a in attributes) + " |",
             "|---|" + "---:|" * len(attributes)]
    for row, name in zip(rows, names):
        cells = []
        for attribute in attributes:
            if (row, attribute) not in means:
                cells.append("—")
                continue
            value = f"{means[(row, attribute)]:.4f}"
            if means[(row, attribute)] == _best(means, attribute):
                value = f"**{value}**"
            mark = markers(row, attribute, samples) if with_markers else ""
            cells.append(value + (f"<sup>{mark}</sup>" if mark else ""))
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    return lines


def model_table(setting_label: str, models: Sequence[str], attributes: Sequence[str], samples: Samples) -> list[str]:
    """Tables 2-3: one row per model (paper names, paper order), mean CCC, best bold, markers."""
    rows = paper_order(models)
    return _table(f"Approach ({setting_label})", rows, [paper_name(m) for m in rows], attributes, samples, True)


def sweep_table(model: str, sweep: str, values: Sequence[str], attributes: Sequence[str],
                samples: Samples) -> list[str]:
    """Tables 4-6: one row per swept value of one model; ``samples`` keyed by (value, attribute)."""
    symbol = SWEEP_SYMBOLS.get(sweep, sweep)
    return _table(paper_name(model), list(values), [f"{symbol}={v}" for v in values], attributes, samples, False)


def spread_table(header: str, rows: Sequence[str], names: Sequence[str], attributes: Sequence[str],
                 samples: Samples) -> list[str]:
    """Mean ± standard deviation and number of values behind every cell of a results table."""
    lines = [f"| {header} | " + " | ".join(COLUMNS[a] for a in attributes) + " |",
             "|---|" + "---:|" * len(attributes)]
    for row, name in zip(rows, names):
        cells = [f"{round(float(np.mean(v)), 4) + 0.0:.4f} ± {sample_std(v):.4f} (n={len(v)})"
                 if (v := samples.get((row, a))) else "—" for a in attributes]
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    return lines


def present_attributes(samples: Samples) -> list[str]:
    """The attributes with any value, in the paper's column order."""
    return [a for a in ATTRIBUTES if any(attribute == a and values for (_, attribute), values in samples.items())]
