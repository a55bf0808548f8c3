"""``metadata.json``: what the pipeline wrote, read back and checked by every consumer.

It carries the feature settings, the train-split normalisation statistics, the label
statistics (the one place label normalisation is defined), per-split counts and the
record schema version. Consumers call ``Metadata.load(...).validate(...)`` before they
build anything, and get a ``MetadataError`` naming the mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.params import ATTRIBUTES, FeatureParams
from pipeline.records import SCHEMA_VERSION

FILENAME = "metadata.json"


class MetadataError(ValueError):
    """The data directory does not hold what the consumer needs."""


@dataclasses.dataclass(frozen=True)
class LabelStats:
    """Train-split mean and std (ddof 0) of each attribute on the 1..7 scale."""

    mean: Mapping[str, float]
    std: Mapping[str, float]

    def vectors(self, attributes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([self.mean[a] for a in attributes], np.float32)
        std = np.array([self.std[a] if self.std[a] > 0 else 1.0 for a in attributes], np.float32)
        return mean, std

    def normalise(self, labels: Any, attributes: Sequence[str]) -> Any:
        """(labels - mean) / std over the last axis; numpy arrays and tensors alike."""
        mean, std = self.vectors(attributes)
        return (labels - mean) / std

    def denormalise(self, values: Any, attributes: Sequence[str]) -> Any:
        """Back to the 1..7 scale: values * std + mean over the last axis."""
        mean, std = self.vectors(attributes)
        return values * std + mean


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """``count`` records written; indices lie in [0, index_size); ``rejected`` listed in errors."""

    count: int
    index_size: int
    rejected: int = 0
    labelled: bool = True


@dataclasses.dataclass(frozen=True)
class Metadata:
    params: FeatureParams
    feature_mean: np.ndarray
    feature_std: np.ndarray
    label_stats: LabelStats
    splits: Mapping[str, SplitInfo]
    error_count: int
    schema_version: int = SCHEMA_VERSION
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c, m, f = self.params.feature_shape
        return {
            "schema_version": self.schema_version,
            "feature_params": self.params.to_dict(),
            "num_chunks": c,
            "chunk_frames": m,
            "n_mels": f,
            "attributes": list(ATTRIBUTES),
            "feature_mean": [float(v) for v in self.feature_mean],
            "feature_std": [float(v) for v in self.feature_std],
            "label_mean": {a: float(self.label_stats.mean[a]) for a in ATTRIBUTES},
            "label_std": {a: float(self.label_stats.std[a]) for a in ATTRIBUTES},
            "splits": {name: dataclasses.asdict(info) for name, info in sorted(self.splits.items())},
            "error_count": int(self.error_count),
            "source": dict(self.source),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Metadata":
        try:
            params = FeatureParams.from_dict(values["feature_params"])
            metadata = cls(
                params=params,
                feature_mean=np.asarray(values["feature_mean"], np.float64),
                feature_std=np.asarray(values["feature_std"], np.float64),
                label_stats=LabelStats(dict(values["label_mean"]), dict(values["label_std"])),
                splits={k: SplitInfo(**v) for k, v in values["splits"].items()},
                error_count=int(values["error_count"]),
                schema_version=int(values["schema_version"]),
                source=dict(values.get("source", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MetadataError(f"malformed {FILENAME}: {error!r}") from error
        for key, derived in (("num_chunks", params.num_chunks), ("chunk_frames", params.chunk_frames),
                             ("n_mels", params.n_mels)):
            if key in values and int(values[key]) != derived:
                raise MetadataError(
                    f"{FILENAME}: {key} is {values[key]} but feature_params give {derived}; "
                    "the file was edited or written by another version")
        return metadata

    @classmethod
    def from_json(cls, text: str) -> "Metadata":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise MetadataError(f"{FILENAME} is not valid JSON: {error}") from error

    def write(self, directory: str) -> str:
        import tensorflow as tf

        path = posixpath.join(directory, FILENAME)
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(self.to_json())
        return path

    @classmethod
    def load(cls, directory: str) -> "Metadata":
        import tensorflow as tf

        path = posixpath.join(directory, FILENAME)
        if not tf.io.gfile.exists(path):
            raise MetadataError(f"no {FILENAME} in {directory}: run the pipeline first (python -m pipeline ...)")
        with tf.io.gfile.GFile(path, "r") as handle:
            return cls.from_json(handle.read())

    def validate(
        self,
        required_splits: Sequence[str] = (),
        expected_shape: tuple[int, int, int] | None = None,
        labelled_splits: Sequence[str] = (),
    ) -> None:
        """Raises MetadataError naming the first mismatch with what the consumer needs."""
        if self.schema_version != SCHEMA_VERSION:
            raise MetadataError(
                f"record schema version {self.schema_version} but this code reads version "
                f"{SCHEMA_VERSION}; re-run the pipeline with this version")
        n_mels = self.params.n_mels
        for name, stat in (("feature_mean", self.feature_mean), ("feature_std", self.feature_std)):
            if stat.shape != (n_mels,):
                raise MetadataError(f"{name} has shape {stat.shape}, expected ({n_mels},)")
            if not np.all(np.isfinite(stat)):
                raise MetadataError(f"{name} has non-finite values")
        if expected_shape is not None and tuple(expected_shape) != self.params.feature_shape:
            names = ("C (num_chunks)", "m (chunk_frames)", "mel bins")
            diffs = [f"{n}: data {d}, expected {e}" for n, d, e in
                     zip(names, self.params.feature_shape, expected_shape) if d != e]
            raise MetadataError("feature geometry mismatch: " + "; ".join(diffs))
        for split in required_splits:
            if split not in self.splits:
                raise MetadataError(
                    f"split {split!r} is missing from the data (present: {sorted(self.splits)})")
            if self.splits[split].count == 0:
                raise MetadataError(f"split {split!r} is empty: every one of its inputs was rejected "
                                    "(see errors-*.jsonl) or none was given")
        for split in labelled_splits:
            if split in self.splits and not self.splits[split].labelled:
                raise MetadataError(f"split {split!r} holds records without labels: it cannot be trained "
                                    "on or scored (re-run the pipeline: rows without labels in a labelled "
                                    "split now go to the dead letters)")
