"""Folder names as glob patterns match only themselves.

Beam's sources and ``FileSystems.match``, and TensorFlow's ``gfile.glob``, take every
path as a pattern, where ``[``, ``*`` and ``?`` are wildcards: an output folder named
``run[2]`` would then match ``run2`` and never itself. Each such character goes in a
one-character class here (``run[[]2]``, as Python's ``glob.escape`` does), which all
three read as that character. Beam lists from the folder above the first wildcard: a match in such a
local folder lists everything under its parent folder (a cost, not a wrong match).

``FileSystems.delete`` also takes patterns, and a local pattern matches files only:
``remove_folder`` deletes a folder whatever its name.
"""

from __future__ import annotations

import re
import shutil
import warnings

# Beam turns ``[[]`` into the regular expression ``[[]``, which is exact but makes Python's
# ``re`` warn of a possible nested set on every such folder name.
warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning,
                        module="apache_beam.io.filesystem")


def literal_pattern(path: str) -> str:
    """``path`` as a pattern that matches ``path`` only (append wildcards after it)."""
    return re.sub(r"([*?[])", r"[\1]", path)


def remove_folder(path: str) -> None:
    """Deletes the folder ``path`` and what it holds, if it exists (object stores have no
    folders: there it is its objects, deleted by pattern)."""
    from apache_beam.io.filesystems import FileSystems  # Beam only where the pipeline runs, not in model code
    from apache_beam.io.localfilesystem import LocalFileSystem

    if isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
        shutil.rmtree(path, ignore_errors=True)
    else:
        pattern = FileSystems.join(literal_pattern(path), "**")
        if FileSystems.match([pattern])[0].metadata_list:
            FileSystems.delete([pattern])
