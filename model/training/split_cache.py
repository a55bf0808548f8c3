"""A split's records as an uncompressed, random-access row store on local disk.

GZIP TFRecords can only be read front to back, so a sampler that must draw any sentence
(or chunk) of the split at any time either makes passes over the files (what made the
old samplers slow and biased) or reads from a store with random access. This module
writes that store once per split, on first use, and reads rows of it by position:

- ``features.bin``: every record's features in the records' own storage dtype
  (float16 by default, so the bytes are the records' bytes, decoded identically), row r
  at byte ``r * row_bytes``, chunk c of row r at ``r * row_bytes + c * chunk_bytes``;
- ``index.npy``, ``labels.npy``, ``has_labels.npy``: the small per-record fields;
- ``manifest.json``: the shards (name, size, mtime) and settings the store was built
  from; a store that no longer matches its records is rebuilt.

Rows follow the fixed unshuffled order of ``model.training.datasets.serialized_records``. Rows are
read with ``os.preadv`` into fresh buffers (not ``np.memmap``), so the page cache the
reads go through is never counted in the process's resident memory.

Where: ``<data_dir>/sampler-cache/<split>`` for local records (a temporary folder if
that is not writable), a local temporary folder keyed by the data's path for ``gs://``
records, or ``<cache_dir>/<split>`` when a caller names one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading

import numpy as np
import tensorflow as tf

from model.training import datasets
from model.training.datasets import SplitSource
from pipeline.params import ATTRIBUTES

CACHE_VERSION = 1
CACHE_FOLDER = "sampler-cache"
_MANIFEST = "manifest.json"
_FEATURES = "features.bin"
_BUILD_BATCH = 64

_SPEC = {
    "index": tf.io.FixedLenFeature([], tf.int64),
    "features": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([len(ATTRIBUTES)], tf.float32),
    "has_labels": tf.io.FixedLenFeature([], tf.int64),
}


def cache_directory(source: SplitSource, cache_dir: str | None = None) -> str:
    """Where the split's store lives (see the module docstring)."""
    if cache_dir is not None:
        return os.path.join(cache_dir, source.split)
    if "://" not in source.data_dir:
        local = os.path.join(source.data_dir, CACHE_FOLDER)
        try:
            os.makedirs(local, exist_ok=True)
            if os.access(local, os.W_OK):
                return os.path.join(local, source.split)
        except OSError:
            pass
    key = hashlib.sha1(os.path.abspath(source.data_dir).encode("utf-8")
                       if "://" not in source.data_dir else source.data_dir.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "deepemocluster-" + CACHE_FOLDER, key, source.split)


def _manifest(source: SplitSource) -> dict:
    files = []
    for path in source.files():
        stat = tf.io.gfile.stat(path)
        files.append([os.path.basename(path), int(stat.length), int(stat.mtime_nsec)])
    return {"version": CACHE_VERSION, "split": source.split, "params": source.params.to_dict(),
            "count": source.count, "files": files}


@dataclasses.dataclass
class SplitCache:
    """One split's store, opened for reading. ``index[r]`` is row r's record index."""

    directory: str
    feature_shape: tuple[int, int, int]
    dtype: np.dtype
    index: np.ndarray
    labels: np.ndarray
    has_labels: np.ndarray

    def __post_init__(self) -> None:
        self.row_bytes = int(np.prod(self.feature_shape)) * self.dtype.itemsize
        self.chunk_bytes = self.row_bytes // self.feature_shape[0]
        self._file = open(os.path.join(self.directory, _FEATURES), "rb", buffering=0)
        self._lock = threading.Lock()
        self.rows_read = 0
        """Sentence rows read so far (a chunk counts 1 / C), by every reader of this store."""

    @property
    def count(self) -> int:
        return len(self.index)

    @classmethod
    def open(cls, source: SplitSource, cache_dir: str | None = None) -> "SplitCache":
        """The split's store, built first if it is missing or no longer matches the records."""
        directory = cache_directory(source, cache_dir)
        manifest = _manifest(source)
        if not _matches(directory, manifest):
            _build(source, directory, manifest)
        dtype = np.dtype(source.params.storage_dtype).newbyteorder("<")

        def load(name: str) -> np.ndarray:
            return np.load(os.path.join(directory, name), allow_pickle=False)

        return cls(directory, source.params.feature_shape, dtype, load("index.npy"), load("labels.npy"),
                   load("has_labels.npy"))

    def rows_of(self, indices: np.ndarray) -> np.ndarray:
        """Rows holding the given record indices (ValueError for an index not in the split)."""
        order = np.argsort(self.index)
        indices = np.asarray(indices, np.int64)
        found = np.searchsorted(self.index, indices, sorter=order)
        found = order[np.minimum(found, len(order) - 1)]
        missing = self.index[found] != indices
        if missing.any():
            raise ValueError(f"record indices {indices[missing][:5].tolist()} are not in the split")
        return found

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Features of whole rows: [len(rows), C, m, F] in the storage dtype."""
        out = self._read(np.asarray(rows, np.int64) * self.row_bytes, self.row_bytes)
        with self._lock:
            self.rows_read += len(rows)
        return out.view(self.dtype).reshape(len(rows), *self.feature_shape)

    def read_chunks(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Features of single chunks: [len(rows), 1, m, F] in the storage dtype."""
        offsets = np.asarray(rows, np.int64) * self.row_bytes + np.asarray(positions, np.int64) * self.chunk_bytes
        out = self._read(offsets, self.chunk_bytes)
        with self._lock:
            self.rows_read += len(rows) / self.feature_shape[0]
        return out.view(self.dtype).reshape(len(rows), 1, *self.feature_shape[1:])

    def _read(self, offsets: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((len(offsets), size), np.uint8)
        descriptor = self._file.fileno()
        for buffer, offset in zip(out, offsets.tolist()):
            if os.preadv(descriptor, [buffer], offset) != size:
                raise OSError(f"short read in {self.directory}: the store is damaged; delete it to rebuild")
        return out


def _matches(directory: str, manifest: dict) -> bool:
    try:
        with open(os.path.join(directory, _MANIFEST)) as handle:
            return json.load(handle) == manifest
    except (OSError, ValueError):
        return False


def _build(source: SplitSource, directory: str, manifest: dict) -> None:
    """Writes the store into a temporary sibling and renames it into place, so a kill
    never leaves a store that looks complete."""
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(prefix=f".{source.split}-building-", dir=parent)
    os.chmod(building, 0o755)  # mkdtemp makes it private; the store is as readable as the records
    try:
        row_bytes = int(np.prod(source.params.feature_shape)) * np.dtype(source.params.storage_dtype).itemsize
        indices, labels, has_labels = [], [], []
        dataset = datasets.serialized_records(source.files()).batch(_BUILD_BATCH).map(
            lambda serialized: tf.io.parse_example(serialized, _SPEC), num_parallel_calls=datasets.AUTOTUNE)
        with open(os.path.join(building, _FEATURES), "wb") as features:
            for batch in dataset.prefetch(2).as_numpy_iterator():
                if any(len(value) != row_bytes for value in batch["features"]):
                    raise ValueError(f"split {source.split!r} holds features of another size than "
                                     f"{source.params.feature_shape} {source.params.storage_dtype}")
                features.write(b"".join(batch["features"]))
                indices.append(batch["index"])
                labels.append(batch["labels"])
                has_labels.append(batch["has_labels"] != 0)
        index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        if len(index) != source.count:
            raise ValueError(f"split {source.split!r}: {len(index)} records, metadata says {source.count}")
        if len(np.unique(index)) != len(index) or (len(index) and (index.min() < 0 or index.max() >= source.index_size)):
            raise ValueError(f"split {source.split!r}: record indices must be unique and in [0, {source.index_size})")
        np.save(os.path.join(building, "index.npy"), index)
        np.save(os.path.join(building, "labels.npy"), np.concatenate(labels).astype(np.float32))
        np.save(os.path.join(building, "has_labels.npy"), np.concatenate(has_labels))
        with open(os.path.join(building, _MANIFEST), "w") as handle:
            json.dump(manifest, handle)
        if _matches(directory, manifest):
            return  # a concurrent builder (another worker) finished first
        if os.path.exists(directory):
            shutil.rmtree(directory, ignore_errors=True)  # stale: its records changed
        try:
            os.rename(building, directory)
        except OSError:
            if not _matches(directory, manifest):  # not a concurrent builder's finished store
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
