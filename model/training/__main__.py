"""``python -m model.training``: the trainer, as ``python trainer.py``."""

import sys

from model.training.allocator import use_fast_allocator

use_fast_allocator()  # before TensorFlow: glibc malloc's page faults halve the CPU step (docs/performance.md)

from model.training.cli import main  # noqa: E402

sys.exit(main())
