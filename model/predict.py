"""``python -m model.predict``: the command line of ``model.serving.predict``."""

import sys

from model.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
