"""Every training setting of one run, resolved once and written to ``config.json``.

Defaults reproduce the paper and the reference (REFERENCE.md); options that improve on
them are named here and documented in docs/training.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from model.variants import get_variant
from pipeline.params import ATTRIBUTES

PRECISIONS: tuple[str, ...] = ("float32", "mixed_bfloat16")
"""float32 as the reference; mixed_bfloat16 runs the encoder's conv blocks in bfloat16."""

OPTIMIZER_MODES: tuple[str, ...] = ("reference", "paper")
"""reference: SGD + Adam over all weights as the authors' code (model.optimizers); paper: the
paper's wording, SGD on the encoder and Adam on the output layers."""

KMEANS_INITS: tuple[str, ...] = ("random", "k-means++")
"""random: faiss' start from randomly picked points (the reference); k-means++: greedy k-means++."""

DEFAULT_LADDER_WEIGHTS: tuple[float, ...] = (1.0,) + (0.1,) * 7
"""Ladder denoising cost weights: the input level, then the encoder's seven conv blocks."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Attributes mirror trainer.py's flags (``--triplet-weight`` -> ``triplet_weight``)."""

    model: str = "temp-gru"
    setting: str = "fsl"
    attributes: tuple[str, ...] = ("arousal",)
    clusters: int = 10
    epochs: int = 30
    batch_size: int = 64
    patience: int = 0
    unlabeled_count: int = 0
    triplet_weight: float = 1.0
    triplet_window: int = 4
    triplet_margin: float = 1.0
    triplets_per_sentence: int = 10
    seed: int = 0
    jit_compile: bool = False
    precision: str = "float32"
    distribute: str = "none"
    optimizers: str = "reference"
    encoder_lr: float = 0.001
    output_lr: float = 0.0005
    classifier_lr: float = 0.05
    kmeans_iterations: int = 20
    kmeans_init: str = "random"
    ccc_level: str = "chunk"
    reconstruction_weight: float = 1.0
    kl_weight: float = 1.0
    ladder_noise: float = 0.3
    ladder_weights: tuple[float, ...] = DEFAULT_LADDER_WEIGHTS

    def __post_init__(self) -> None:
        get_variant(self.model)
        if self.setting not in ("fsl", "ssl"):
            raise ValueError(f"setting must be fsl or ssl, got {self.setting!r}")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or not self.attributes:
            raise ValueError(f"attributes must be a non-empty subset of {ATTRIBUTES}, got {self.attributes}")
        if self.ccc_level not in ("chunk", "sentence"):
            raise ValueError(f"ccc_level must be chunk or sentence, got {self.ccc_level!r}")
        if self.optimizers not in OPTIMIZER_MODES:
            raise ValueError(f"optimizers must be one of {OPTIMIZER_MODES}, got {self.optimizers!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"kmeans_init must be one of {KMEANS_INITS}, got {self.kmeans_init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision != "float32" and get_variant(self.model).reconstruction:
            raise ValueError(f"precision {self.precision} is not available for the reconstruction baselines")
        if self.distribute not in ("none", "mirrored", "multiworker"):
            raise ValueError(f"distribute must be none, mirrored or multiworker, got {self.distribute!r}")
        for name in ("clusters", "epochs", "batch_size", "triplet_window", "triplets_per_sentence",
                     "kmeans_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.clusters < 2 and get_variant(self.model).clustering:
            raise ValueError("clusters must be >= 2 for a clustering model")
        for name in ("encoder_lr", "output_lr", "classifier_lr", "reconstruction_weight", "kl_weight",
                     "ladder_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if len(self.ladder_weights) != len(DEFAULT_LADDER_WEIGHTS) or min(self.ladder_weights) < 0:
            raise ValueError(f"ladder_weights must be {len(DEFAULT_LADDER_WEIGHTS)} non-negative weights "
                             f"(input level first), got {self.ladder_weights}")

    @property
    def variant(self):
        return get_variant(self.model)

    @property
    def uses_unlabeled(self) -> bool:
        """Stage I (Algorithm 1) runs in the SSL setting for models with an unsupervised task:
        clustering, or reconstruction for the AE, VAE and ladder baselines."""
        return self.setting == "ssl" and (self.variant.clustering or self.variant.reconstruction is not None)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["attributes"] = list(self.attributes)
        values["ladder_weights"] = list(self.ladder_weights)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["attributes"] = tuple(kwargs.get("attributes", ("arousal",)))
        kwargs["ladder_weights"] = tuple(kwargs.get("ladder_weights", DEFAULT_LADDER_WEIGHTS))
        return cls(**kwargs)


def parse_attributes(value: str) -> tuple[str, ...]:
    """``all`` or one attribute name (a comma list is accepted too)."""
    if value == "all":
        return ATTRIBUTES
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(a for a in ATTRIBUTES if a in names) if set(names) <= set(ATTRIBUTES) else names
