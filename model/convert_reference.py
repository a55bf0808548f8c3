"""``python -m model.convert_reference``: the command line of ``model.serving.convert_reference``."""

import sys

from model.serving.convert_reference import main

if __name__ == "__main__":
    sys.exit(main())
