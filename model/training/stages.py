"""The two stages of an epoch of paper Algorithm 1, as one type.

Stage I (SSL only) trains on the unlabelled split with the unsupervised terms (cluster
cross-entropy, the triplet loss, a baseline's reconstruction terms) and leaves the emotion
head untouched; stage II trains on the labelled train split and adds the CCC loss. Which
split a stage reads and whether it is supervised is all the train step and the epoch loop
need to know about it.
"""

from __future__ import annotations

import dataclasses

TRAIN, DEV, TEST, UNLABELED = "train", "dev", "test", "unlabeled"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: the split it trains on and whether the emotion labels drive it."""

    split: str
    supervised: bool

    @property
    def name(self) -> str:
        """How logs, history columns and checkpoints name the stage: its split."""
        return self.split


STAGE_I = Stage(UNLABELED, supervised=False)
"""Unsupervised, on the unlabelled split (the SSL setting)."""
STAGE_II = Stage(TRAIN, supervised=True)
"""Supervised, on the labelled train split."""
