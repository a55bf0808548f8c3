"""The VGG chunk encoder's conv blocks (paper Table 1), without Keras.

``model.nets.encoder`` builds its blocks from these; the training settings size the ladder
baseline's per-level denoising weights from them (``model.training.config``), which must
not import Keras for ``trainer.py --help`` to answer at once.
"""

from __future__ import annotations

CONV_CHANNELS: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 128)
CONV_STRIDES: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 2)
