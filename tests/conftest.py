"""Shared fixtures; each fixtures module has one owner and one kind of fixture."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.fixtures.corpora import *  # noqa: E402,F401,F403
from tests.fixtures.edge_audio import *  # noqa: E402,F401,F403
from tests.fixtures.jobs import *  # noqa: E402,F401,F403
