"""Corpus manifests -> the list of utterances the pipeline processes.

Runs in the driver, before the Beam graph exists: it reads the MSP-Podcast label file
or a CSV manifest, lists the unlabelled pool, and gives every utterance its record
``index`` (its position in its split sorted by id), so indices are unique within a
split and stable across runs, whatever the runner later does in parallel. Paths go
through Beam ``FileSystems``, so ``gs://`` works as well as local folders. In both
manifest kinds a row whose three labels are all empty is unlabelled (a release may
list a split whose labels are withheld).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.flags import CORPUS_KINDS, CSV, MSP_PODCAST  # the --corpus values, defined with the flag
from pipeline.params import ATTRIBUTES

TRAIN = "train"
UNLABELED = "unlabeled"
UNKNOWN_SPEAKER = "unknown"

LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")
"""Label file names of MSP-Podcast releases (older ones misspell it), in order of preference."""

MSP_COLUMNS = {"file": "FileName", "split": "Split_Set", "speaker": "SpkrID",
               "arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
CSV_COLUMNS = ("path", "split") + ATTRIBUTES

_SPLIT_NAMES = {"train": "train", "validation": "dev", "development": "dev",
                "test1": "test", "test": "test", "test2": "test2"}
_SPLIT_PATTERN = re.compile(r"[a-z0-9_]+")
_RESERVED_SPLITS = ("errors", "inputs", "metadata")
"""Names of the pipeline's other outputs; a split with one of them would collide."""


_LOG = logging.getLogger(__name__)


class CorpusError(ValueError):
    """A manifest or corpus folder the pipeline cannot read; the message names the cause."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One input of the pipeline: where its audio is and what it is labelled.

    ``labels`` are (arousal, valence, dominance) on the 1..7 scale, or None for an
    unlabelled utterance; values are checked by the pipeline, which rejects a NaN or
    an out-of-range label with a reason instead of failing here.
    """

    utt_id: str
    path: str
    split: str
    speaker: str
    labels: tuple[float, float, float] | None
    index: int = -1

    def to_json(self) -> str:
        """One line of ``inputs.jsonl`` (NaN labels stay NaN: Python's json writes them)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Utterance":
        values = json.loads(line)
        labels = values.pop("labels")
        return cls(labels=None if labels is None else tuple(float(v) for v in labels), **values)


def split_name(value: str) -> str:
    """Maps an MSP-Podcast ``Split_Set`` (or a manifest's split) to the project's name."""
    name = value.strip().lower()
    return _SPLIT_NAMES.get(name, name)


def utt_id_of(path: str) -> str:
    """The audio file's name without its extension, e.g. ``MSP-PODCAST_0001_0008``."""
    return posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0]


def read_msp_podcast(data_root: str, labels_path: str | None = None) -> list[Utterance]:
    """Utterances of an MSP-Podcast release: ``Labels/labels_consensus.csv`` + ``Audios/``."""
    labels_path = labels_path or find_label_file(data_root)
    rows = _read_csv(labels_path, required=(MSP_COLUMNS["file"], MSP_COLUMNS["split"])
                     + tuple(MSP_COLUMNS[a] for a in ATTRIBUTES))
    audio_dir = FileSystems.join(data_root, "Audios")
    utterances = []
    for line, row in rows:
        file_name = row[MSP_COLUMNS["file"]].strip()
        if not file_name or posixpath.basename(file_name.replace("\\", "/")) != file_name:
            raise CorpusError(f"{labels_path} line {line}: FileName {file_name!r} is not a file name in "
                              f"{audio_dir}")
        utterances.append(Utterance(
            utt_id=utt_id_of(file_name),
            path=FileSystems.join(audio_dir, file_name),
            split=_checked_split(row[MSP_COLUMNS["split"]], labels_path, line),
            speaker=_speaker(row.get(MSP_COLUMNS["speaker"])),
            labels=_labels([row[MSP_COLUMNS[a]] for a in ATTRIBUTES]),
        ))
    return utterances


def read_csv_manifest(manifest: str) -> list[Utterance]:
    """Utterances of a ``path,split,arousal,valence,dominance[,speaker]`` manifest.

    Relative paths are resolved against the manifest's folder.
    """
    base = FileSystems.split(_absolute(manifest))[0]
    utterances = []
    for line, row in _read_csv(manifest, required=CSV_COLUMNS):
        path = row["path"].strip()
        if not path:
            raise CorpusError(f"{manifest} line {line}: empty path")
        if not _is_absolute(path) and posixpath.normpath(path.replace("\\", "/")).startswith("../"):
            raise CorpusError(f"{manifest} line {line}: relative path {path!r} leads outside the manifest's "
                              "folder; give it as an absolute path if that is meant")
        utterances.append(Utterance(
            utt_id=utt_id_of(path),
            path=path if _is_absolute(path) else FileSystems.join(base, path),
            split=_checked_split(row["split"], manifest, line),
            speaker=_speaker(row.get("speaker")),
            labels=_labels([row[a] for a in ATTRIBUTES]),
        ))
    return utterances


def list_unlabeled(pattern: str, count: int | None = None, seed: int = 0) -> list[Utterance]:
    """Audio files matching ``pattern`` as the ``unlabeled`` split, optionally a seeded sample.

    The match is sorted before sampling, so the same pool, count and seed always give
    the same files, on any file system.
    """
    matches = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in matches)
    if not paths:
        raise CorpusError(f"--unlabeled {pattern!r} matches no files")
    if count is not None:
        if count > len(paths):
            raise CorpusError(f"--unlabeled-count {count} but {pattern!r} matches only {len(paths)} files")
        chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return [Utterance(utt_id=utt_id_of(p), path=p, split=UNLABELED, speaker=UNKNOWN_SPEAKER, labels=None)
            for p in paths]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Every input of one run, indexed, and where they came from (``metadata.json`` source)."""

    utterances: list[Utterance]
    source: dict[str, Any]


def read_corpus(
    kind: str,
    *,
    data_root: str | None = None,
    labels: str | None = None,
    manifest: str | None = None,
    unlabeled: str | None = None,
    unlabeled_count: int | None = None,
    seed: int = 0,
) -> Corpus:
    """The labelled manifest plus the unlabelled pool, with record indices assigned."""
    source: dict[str, Any] = {"corpus": kind}
    if kind == MSP_PODCAST:
        labels = labels or find_label_file(data_root)
        utterances = read_msp_podcast(data_root, labels)
        source.update(data_root=data_root, labels=labels)
    elif kind == CSV:
        utterances = read_csv_manifest(manifest)
        source.update(manifest=manifest)
    else:
        raise CorpusError(f"unknown corpus kind {kind!r}; known: {CORPUS_KINDS}")
    if unlabeled:
        pool = list_unlabeled(unlabeled, unlabeled_count, seed)
        utterances += pool
        source.update(unlabeled=unlabeled, unlabeled_count=len(pool), seed=seed)
    check_unique(utterances)
    return Corpus(assign_indices(mark_missing_labels(utterances)), source)


MISSING_LABELS = (math.nan, math.nan, math.nan)
"""Labels of a row without any in a labelled split: the pipeline rejects it (``check_labels``)."""


def mark_missing_labels(utterances: Sequence[Utterance]) -> list[Utterance]:
    """Rows without labels in a split whose other rows have them get ``MISSING_LABELS``.

    A split with no labels at all stays unlabelled (the pool, or a release's hidden test
    set); a row with three empty cells among labelled rows is a broken row, and must reach
    neither a loss nor a score, so it goes to the dead letters instead of being written.
    """
    labelled = {u.split for u in utterances if u.labels is not None}
    return [dataclasses.replace(u, labels=MISSING_LABELS) if u.labels is None and u.split in labelled else u
            for u in utterances]


def check_unique(utterances: Sequence[Utterance]) -> None:
    """Refuses an audio file listed twice, or two files with one id (the id names a record).

    A file in two splits is a leak (a test sentence trained on) and a file twice in one
    split counts twice; neither is what a manifest means, so the run stops before it starts.
    """
    seen: dict[str, Utterance] = {}
    by_id: dict[str, Utterance] = {}
    for utterance in utterances:
        path = posixpath.normpath(utterance.path) if "://" not in utterance.path else utterance.path
        for key, index, what in ((path, seen, "audio file"), (utterance.utt_id, by_id, "utterance id")):
            other = index.setdefault(key, utterance)
            if other is not utterance:
                where = (f"in splits {other.split!r} and {utterance.split!r} (a leak between splits)"
                         if other.split != utterance.split else f"twice in split {utterance.split!r}")
                raise CorpusError(f"{what} {key!r} is listed {where}: list each file once")


def assign_indices(utterances: Iterable[Utterance]) -> list[Utterance]:
    """Numbers each split's utterances 0.. in (utt_id, path) order."""
    by_split: dict[str, list[Utterance]] = {}
    for utterance in utterances:
        by_split.setdefault(utterance.split, []).append(utterance)
    indexed = []
    for split in sorted(by_split):
        ordered = sorted(by_split[split], key=lambda u: (u.utt_id, u.path))
        indexed.extend(dataclasses.replace(u, index=i) for i, u in enumerate(ordered))
    return indexed


def split_sizes(utterances: Sequence[Utterance]) -> dict[str, int]:
    """Number of inputs per split (``SplitInfo.index_size``)."""
    sizes: dict[str, int] = {}
    for utterance in utterances:
        sizes[utterance.split] = sizes.get(utterance.split, 0) + 1
    return dict(sorted(sizes.items()))


def labelled_splits(utterances: Sequence[Utterance]) -> dict[str, bool]:
    """Whether every input of a split carries labels (``SplitInfo.labelled``)."""
    labelled: dict[str, bool] = {}
    for utterance in utterances:
        labelled[utterance.split] = labelled.get(utterance.split, True) and utterance.labels is not None
    return labelled


def find_label_file(data_root: str) -> str:
    """``Labels/labels_consensus.csv`` of a release, else the older ``labels_concensus.csv``."""
    for name in LABEL_FILES:
        path = FileSystems.join(data_root, "Labels", name)
        if FileSystems.exists(path):
            return path
    raise CorpusError(f"no Labels/{LABEL_FILES[0]} (or {LABEL_FILES[1]}) under {data_root}; "
                      "pass --labels PATH")


def _read_csv(path: str, required: Sequence[str]) -> list[tuple[int, Mapping[str, Any]]]:
    """(line number, row) pairs of a CSV file read through Beam FileSystems."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            text = _decoded(raw.read(), path)
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error}") from error
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
        raise CorpusError(f"{path} lacks column(s) {missing}; it has {reader.fieldnames}")
    return [(reader.line_num, row) for row in reader]


def _decoded(data: bytes, path: str) -> str:
    """A CSV file's text: UTF-16 when it starts with a byte-order mark (Excel's "Unicode
    text"), else UTF-8 (with or without BOM), else Windows-1252 / Latin-1 with a warning."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        _LOG.warning("%s is not UTF-8: read as Windows-1252 (Latin-1)", path)
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
        return data.decode("latin-1")


def _checked_split(value: str | None, source: str, line: int) -> str:
    name = split_name(value or "")
    if not _SPLIT_PATTERN.fullmatch(name) or name in _RESERVED_SPLITS:
        raise CorpusError(f"{source} line {line}: split {value!r} is not usable as a file name "
                          f"(lower-case letters, digits, '_'; not one of {_RESERVED_SPLITS})")
    return name


def _labels(texts: Sequence[str | None]) -> tuple[float, float, float] | None:
    """Label values, or None (unlabelled) when all three cells are empty."""
    if all(not (t or "").strip() for t in texts):
        return None
    return tuple(_label(t) for t in texts)  # type: ignore[return-value]


def _label(text: str | None) -> float:
    """A label value; empty or non-numeric text becomes NaN, which the pipeline rejects."""
    try:
        return float((text or "").strip())
    except ValueError:
        return math.nan


def _speaker(value: str | None) -> str:
    return (value or "").strip() or UNKNOWN_SPEAKER


def _is_absolute(path: str) -> bool:
    return "://" in path or posixpath.isabs(path)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
