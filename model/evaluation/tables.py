"""Results tables laid out like the paper's: Tables 2-3 (models) and Tables 4-6 (sweeps).

A table is rendered from samples only (``{(row, attribute): {(trial, sub-set): CCC}}``),
so it can be rebuilt from ``results.csv`` at any time. Significance follows the paper
(Sec. 4.3): a two-tailed t-test, p < 0.05, by default over the 4 x trials values as
independent samples; ``model.evaluation.metrics.TESTS`` lists the paired and per-trial alternatives.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from model.evaluation.metrics import (DEFAULT_TEST, SIGNIFICANCE_LEVEL, Keyed, SampleMismatch, sample_std,
                           significantly_better)
from model.nets.variants import VARIANTS, is_proposed
from pipeline.params import ATTRIBUTES

PAPER_ORDER: tuple[str, ...] = tuple(VARIANTS)
"""The paper's row order: the variant table's."""
BASELINES: tuple[str, ...] = tuple(name for name, variant in VARIANTS.items() if not variant.proposed)
RECONSTRUCTION_BASELINES: tuple[str, ...] = tuple(name for name, variant in VARIANTS.items() if variant.reconstruction)
COLUMNS = {"arousal": "Aro.-CCC", "valence": "Val.-CCC", "dominance": "Dom.-CCC"}
SWEEP_SYMBOLS = {"clusters": "Q", "triplet-weight": "γ", "unlabeled-count": "|U|"}
"""How the paper's Tables 4-6 name the swept setting."""

Samples = Mapping[tuple[str, str], Keyed]


def paper_name(model: str) -> str:
    """How the paper's tables name ``model``; a name the variant table does not know stays as it is."""
    variant = VARIANTS.get(model)
    return variant.paper_name if variant is not None and variant.paper_name else model


def paper_order(models: Sequence[str]) -> list[str]:
    """The paper's row order (baselines first); models it does not know keep their order, last."""
    known = [m for m in PAPER_ORDER if m in models]
    return known + [m for m in models if m not in PAPER_ORDER]


def markers(model: str, attribute: str, samples: Samples, level: float = SIGNIFICANCE_LEVEL,
            test: str = DEFAULT_TEST) -> str:
    """'†*', '*', '†' or '' for a proposed (temp-*) model, as the paper's Tables 2-3.

    ``*``: significantly better than every reconstruction baseline present; ``†``: than
    every baseline present (reconstruction baselines, CNN-regressor and vanilla). A
    marker needs at least one such baseline with values. ``test`` names the t-test
    (``model.evaluation.metrics.TESTS``); a paired or per-trial test raises ``SampleMismatch`` when
    the values of two models cannot be matched.
    """
    if not is_proposed(model) or not samples.get((model, attribute)):
        return ""

    def better(baseline: str) -> bool:
        try:
            return significantly_better(samples[(model, attribute)], samples[(baseline, attribute)], level, test)
        except SampleMismatch as error:
            raise SampleMismatch(f"{paper_name(model)} (first) against {paper_name(baseline)} (second), "
                                 f"{attribute}: {error}") from error

    def beats_all(baselines: Sequence[str]) -> bool:
        present = [b for b in baselines if samples.get((b, attribute))]
        return bool(present) and all(better(b) for b in present)

    return ("†" if beats_all(BASELINES) else "") + ("*" if beats_all(RECONSTRUCTION_BASELINES) else "")


def _means(rows: Sequence[str], attributes: Sequence[str], samples: Samples) -> dict[tuple[str, str], float]:
    """Means rounded to the 4 digits shown (+ 0.0 turns -0.0 into 0.0), so ties in print tie in bold too."""
    return {(r, a): round(float(np.mean(list(samples[(r, a)].values()))), 4) + 0.0
            for r in rows for a in attributes if samples.get((r, a))}


def _best(means: Mapping[tuple[str, str], float], attribute: str) -> float | None:
    values = [v for (_, a), v in means.items() if a == attribute]
    return max(values) if values else None


def _table(header: str, rows: Sequence[str], names: Sequence[str], attributes: Sequence[str], samples: Samples,
           test: str | None) -> list[str]:
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
            mark = markers(row, attribute, samples, test=test) if test else ""
            cells.append(value + (f"<sup>{mark}</sup>" if mark else ""))
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    return lines


def model_table(setting_label: str, models: Sequence[str], attributes: Sequence[str], samples: Samples,
                test: str | None = DEFAULT_TEST) -> list[str]:
    """Tables 2-3: one row per model (paper names, paper order), mean CCC, best bold, markers by ``test``.

    ``test=None`` leaves the markers out (for values that the test cannot match).
    """
    rows = paper_order(models)
    return _table(f"Approach ({setting_label})", rows, [paper_name(m) for m in rows], attributes, samples, test)


def sweep_table(model: str, sweep: str, values: Sequence[str], attributes: Sequence[str],
                samples: Samples) -> list[str]:
    """Tables 4-6: one row per swept value of one model; ``samples`` keyed by (value, attribute)."""
    symbol = SWEEP_SYMBOLS.get(sweep, sweep)
    return _table(paper_name(model), list(values), [f"{symbol}={v}" for v in values], attributes, samples, None)


def spread_table(header: str, rows: Sequence[str], names: Sequence[str], attributes: Sequence[str],
                 samples: Samples) -> list[str]:
    """Mean ± standard deviation and number of values behind every cell of a results table."""
    lines = [f"| {header} | " + " | ".join(COLUMNS[a] for a in attributes) + " |",
             "|---|" + "---:|" * len(attributes)]
    for row, name in zip(rows, names):
        cells = [f"{round(float(np.mean(v)), 4) + 0.0:.4f} ± {sample_std(v):.4f} (n={len(v)})"
                 if (v := list(samples.get((row, a), {}).values())) else "—" for a in attributes]
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    return lines


def present_attributes(samples: Samples) -> list[str]:
    """The attributes with any value, in the paper's column order."""
    return [a for a in ATTRIBUTES if any(attribute == a and values for (_, attribute), values in samples.items())]
