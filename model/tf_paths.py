"""TensorFlow reads checkpoints and SavedModels from folders whose names hold glob characters.

TensorFlow's checkpoint reader (which ``tf.saved_model.load`` uses for the variables)
finds files by glob: in a job folder named ``run[2]`` the name is read as a pattern, which
does not match the folder, and an escaped pattern then fails to open the file by that
name. Such a path is read through a copy in TensorFlow's in-memory file system.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from typing import Any, Iterator

import tensorflow as tf

GLOB_CHARACTERS = "[*?\\"
"""What TensorFlow's file matching (``GetMatchingPaths``) takes for a wildcard or escape."""


@contextlib.contextmanager
def readable_checkpoint(prefix: str) -> Iterator[str]:
    """``prefix``, or an in-memory copy of its index and data files when its path holds glob characters."""
    if not any(character in prefix for character in GLOB_CHARACTERS):
        yield prefix
        return
    folder, name = posixpath.split(prefix)
    copy = f"ram://checkpoint-{uuid.uuid4().hex}"
    files = [f for f in (tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(folder) else ())
             if f == f"{name}.index" or f.startswith(f"{name}.data-")]
    with _copies({posixpath.join(folder, f): copy + f[len(name):] for f in files}):
        yield copy


def load_saved_model(path: str) -> Any:
    """``tf.saved_model.load(path)``, through an in-memory copy when the path holds glob characters."""
    if not any(character in path for character in GLOB_CHARACTERS):
        return tf.saved_model.load(path)
    copy = f"ram://saved-model-{uuid.uuid4().hex}"
    files = {}
    for folder, _, names in tf.io.gfile.walk(path):
        for name in names:
            source = posixpath.join(folder, name)
            files[source] = copy + source[len(path.rstrip("/")):]
    with _copies(files):
        return tf.saved_model.load(copy)


@contextlib.contextmanager
def _copies(files: dict[str, str]) -> Iterator[None]:
    copied = []
    try:
        for source, target in files.items():
            tf.io.gfile.makedirs(posixpath.dirname(target))
            tf.io.gfile.copy(source, target)
            copied.append(target)
        yield
    finally:
        for target in copied:
            tf.io.gfile.remove(target)
