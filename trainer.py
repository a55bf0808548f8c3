"""Training entry point: ``python trainer.py --data-dir OUT --job-dir JOB --model temp-gru ...``

The command line is ``model.training.cli`` (flags generated from ``TrainConfig``); the run is
``model.training.algorithm`` (paper Algorithm 1). Runs locally or as a Vertex AI custom job
(``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and ``AIP_TENSORBOARD_LOG_DIR`` take precedence over
``--job-dir`` subfolders). Re-running the same command on the same ``--job-dir`` resumes from
the last completed stage.
"""

import sys

from model.training.cli import build_parser, config_from_args, main

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    from model.training.allocator import use_fast_allocator
    use_fast_allocator()  # before TensorFlow: glibc malloc's page faults halve the CPU step (docs/performance.md)
    sys.exit(main())
