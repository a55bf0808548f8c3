"""Every model variant as a composition of parts (DESIGN.md, "Variants as composition").

A variant is data, not code: the trainer reads these knobs and builds the one model
class from the shared parts, so adding a variant never copies a model file.
"""

from __future__ import annotations

import dataclasses

PAPER_CLUSTERS = 10
"""Q, the number of K-means clusters of the paper and the reference: the default of training, of
the cluster head and of the Fig. 3 analyses of models without one."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """Knobs of one model variant.

    Attributes:
      name: command-line name (``--model``).
      temporal: temporal net over the chunk embeddings: none, gru, cnn or trans.
      clustering: trains a cluster head on per-stage K-means pseudo-labels.
      sampler: ``sentence`` (Sec. 3.3 rejection sampler), ``chunk`` (vanilla,
        per-cluster balanced chunks) or ``plain`` (shuffled sentences).
      triplet: adds the temporal triplet loss on the encoder embeddings (Eq. 7).
      encoder_dropout: dropout after the encoder's Dense (the reference's Temp-Triplet
        model has none; its other models use 0.5).
      paper_name: how the paper's tables name it.
      reconstruction: reconstruction-based SSL baseline (paper Sec. 4.3) trained with a
        decoder instead of clustering: ``ae``, ``vae`` or ``ladder``; None for the
        other models.
      proposed: one of the paper's proposed temporal models (Temp-*), which its tables mark
        as significantly better than the baselines, and its figures draw in red.
    """

    name: str
    temporal: str
    clustering: bool
    sampler: str
    triplet: bool = False
    encoder_dropout: float = 0.5
    paper_name: str = ""
    reconstruction: str | None = None
    proposed: bool = False


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("regressor", "none", False, "plain", paper_name="CNN-regressor"),
    Variant("ae", "none", False, "plain", paper_name="CNN-AE", reconstruction="ae"),
    Variant("vae", "none", False, "plain", paper_name="CNN-VAE", reconstruction="vae"),
    Variant("ladder", "none", False, "plain", paper_name="CNN-LadderNet", reconstruction="ladder"),
    Variant("vanilla", "none", True, "chunk", paper_name="vanilla DeepEmoCluster"),
    Variant("temp-gru", "gru", True, "sentence", paper_name="Temp-GRU", proposed=True),
    Variant("temp-cnn", "cnn", True, "sentence", paper_name="Temp-CNN", proposed=True),
    Variant("temp-trans", "trans", True, "sentence", paper_name="Temp-Trans", proposed=True),
    Variant("temp-triplet", "none", True, "sentence", triplet=True, encoder_dropout=0.0,
            paper_name="Temp-Triplet", proposed=True),
)}
"""In the paper's row order (Tables 2-3): baselines first, then the proposed models."""
VANILLA = "vanilla"
"""The paper's main baseline, which its figures draw in blue beside a temporal model."""


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(VARIANTS)}") from None


def is_proposed(model: str) -> bool:
    """One of the paper's proposed (Temp-*) models; a name the table does not know is not."""
    variant = VARIANTS.get(model)
    return variant is not None and variant.proposed
