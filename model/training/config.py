"""Every training setting of one run, resolved once and written to ``config.json``.

Defaults reproduce the paper and the reference (REFERENCE.md); options that improve on
them are named here and documented in docs/training.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from model.nets.encoder_geometry import CONV_CHANNELS
from model.nets.variants import PAPER_CLUSTERS, VARIANTS, get_variant
from pipeline.params import ATTRIBUTES

SETTINGS: tuple[str, ...] = ("fsl", "ssl")
"""fsl: labelled data only; ssl: also stage I (Algorithm 1) on the unlabeled split."""

PRECISIONS: tuple[str, ...] = ("float32", "mixed_bfloat16")
"""float32 as the reference; mixed_bfloat16 runs the encoder's conv blocks in bfloat16."""

DISTRIBUTE_MODES: tuple[str, ...] = ("none", "mirrored", "multiworker")
"""tf.distribute strategies: none, MirroredStrategy or MultiWorkerMirroredStrategy."""

CCC_LEVELS: tuple[str, ...] = ("chunk", "sentence")
"""What the CCC loss compares: chunk predictions (the reference) or sentence means."""

OPTIMIZER_MODES: tuple[str, ...] = ("reference", "paper")
"""reference: SGD + Adam over all weights as the authors' code (model.training.optimizers); paper: the
paper's wording, SGD on the encoder and Adam on the output layers."""

KMEANS_INITS: tuple[str, ...] = ("random", "k-means++")
"""random: faiss' start from randomly picked points (the reference); k-means++: greedy k-means++."""

DEFAULT_LADDER_WEIGHTS: tuple[float, ...] = (1.0,) + (0.1,) * len(CONV_CHANNELS)
"""Ladder denoising cost weights: the input level, then each of the encoder's conv blocks."""


@dataclasses.dataclass(frozen=True)
class Flag:
    """What a setting's trainer.py flag shows besides its name, type and default, which come
    from the field: ``model.training.cli.build_parser`` adds one flag per field, in field order."""

    help: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    """The flag must be given; the field's default serves code that builds a config itself."""


def _setting(default: Any, help: str | None = None, choices: tuple[str, ...] | None = None,
             required: bool = False) -> Any:
    """A field with its flag (``Flag``) in the field's metadata."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, choices, required)})


def flag_of(field: dataclasses.Field) -> Flag:
    """The flag of one ``TrainConfig`` field."""
    return field.metadata["flag"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Each attribute is a trainer.py flag (``triplet_weight`` -> ``--triplet-weight``), in this order."""

    model: str = _setting("temp-gru", choices=tuple(sorted(VARIANTS)), required=True)
    setting: str = _setting("fsl", "fsl: labelled data only; ssl: also stage I on the unlabeled split", SETTINGS)
    attributes: tuple[str, ...] = _setting(
        ("arousal",), "arousal, valence or dominance: one model per attribute as the reference; "
                      "'all': one multitask model with three outputs")
    clusters: int = _setting(PAPER_CLUSTERS, "Q of K-means")
    epochs: int = _setting(30)
    batch_size: int = _setting(64, "sentences per batch")
    patience: int = _setting(0, "stop after this many epochs without dev improvement (0: never)")
    unlabeled_count: int = _setting(0, "seeded subset of the unlabeled split used in SSL (0: all of it)")
    triplet_weight: float = _setting(1.0, "gamma of Eq. 7")
    triplet_window: int = _setting(4, "W: positives lie within +-W/2 chunks of the anchor")
    triplet_margin: float = _setting(1.0, "delta of Eq. 6")
    triplets_per_sentence: int = _setting(10)
    seed: int = _setting(0)
    jit_compile: bool = _setting(
        False, "XLA-compile the training step (for GPUs: about 6x slower on CPU, docs/performance.md)")
    precision: str = _setting(
        "float32", "mixed_bfloat16: the encoder's conv blocks in bfloat16 (float32 variables); about 2x less "
                   "CPU time per step on AVX-512 BF16 CPUs (docs/performance.md)", PRECISIONS)
    keep_activations: bool = _setting(
        False, "keep autodiff's two activation maps per encoder conv block for the backward pass instead of "
               "keeping one and recomputing the other: same gradients to float32 rounding, about 1.7x the peak "
               "memory, no faster in float32, up to 15 per cent faster or slower in mixed_bfloat16 (docs/performance.md)")
    distribute: str = _setting("none", choices=DISTRIBUTE_MODES)
    ccc_level: str = _setting("chunk", "CCC loss over chunk predictions (reference) or sentence means", CCC_LEVELS)
    optimizers: str = _setting(
        "reference", "reference: SGD and Adam both over every weight but the top cluster layer, as the authors' "
                     "code (stage I steps only the SGD); paper: the paper's wording, SGD on the encoder and Adam "
                     "on the output layers (docs/training.md)", OPTIMIZER_MODES)
    encoder_lr: float = _setting(
        0.001, "SGD learning rate (over every weight in reference mode, the encoder in paper mode)")
    output_lr: float = _setting(
        0.0005, "Adam learning rate (over every weight in reference mode, the output layers in paper mode)")
    classifier_lr: float = _setting(0.05, "reference mode: learning rate of the top cluster layer's own SGD")
    kmeans_iterations: int = _setting(20)
    kmeans_init: str = _setting(
        "random", "random: start from randomly picked points, a new seed per clustering, empty clusters repaired "
                  "by splitting a large one (faiss, as the reference); k-means++: greedy k-means++ seeding, empty "
                  "clusters re-seeded at the farthest point", KMEANS_INITS)
    reconstruction_weight: float = _setting(1.0, "ae, vae: weight of the MSE reconstruction term")
    kl_weight: float = _setting(1.0, "vae: weight of the KL term (per input element; 1 gives the ELBO)")
    ladder_noise: float = _setting(0.3, "ladder: std of the Gaussian noise on every level of the noisy encoder")
    ladder_weights: tuple[float, ...] = _setting(
        DEFAULT_LADDER_WEIGHTS, "ladder: comma-separated denoising weights per encoder level, input level first, "
                                f"then the {len(CONV_CHANNELS)} conv blocks")

    def __post_init__(self) -> None:
        get_variant(self.model)
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be fsl or ssl, got {self.setting!r}")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or not self.attributes:
            raise ValueError(f"attributes must be a non-empty subset of {ATTRIBUTES}, got {self.attributes}")
        if self.ccc_level not in CCC_LEVELS:
            raise ValueError(f"ccc_level must be chunk or sentence, got {self.ccc_level!r}")
        if self.optimizers not in OPTIMIZER_MODES:
            raise ValueError(f"optimizers must be one of {OPTIMIZER_MODES}, got {self.optimizers!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"kmeans_init must be one of {KMEANS_INITS}, got {self.kmeans_init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision != "float32" and get_variant(self.model).reconstruction:
            raise ValueError(f"precision {self.precision} is not available for the reconstruction baselines")
        if self.distribute not in DISTRIBUTE_MODES:
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
        for name in ("attributes", "ladder_weights"):  # JSON lists
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def parse_attributes(value: str) -> tuple[str, ...]:
    """``all`` or one attribute name (a comma list is accepted too)."""
    if value == "all":
        return ATTRIBUTES
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(a for a in ATTRIBUTES if a in names) if set(names) <= set(ATTRIBUTES) else names
