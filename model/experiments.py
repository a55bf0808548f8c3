"""``python -m model.experiments``: the command line of ``model.evaluation.experiments``."""

import sys

from model.evaluation.experiments import main

if __name__ == "__main__":
    sys.exit(main())
