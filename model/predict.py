"""``python -m model.predict``: emotion predictions for audio files from an exported SavedModel.

    python -m model.predict --model JOB/model PATH [PATH ...] [--output preds.csv] [--batch-size N]

Each PATH is an audio file or a folder (searched recursively; every file in it is tried,
hidden ones excepted). Files are decoded with the pipeline's decoder (any format
libsndfile reads, down-mixed to mono, resampled to the model's rate); the SavedModel's
in-graph front end turns each waveform into features, and ``serving_default`` predicts
``--batch-size`` files at a time. The model needs only TensorFlow: nothing of this
project is used to run it.

Writes CSV ``path,duration,arousal,valence,dominance,error`` to stdout or ``--output``,
one row per file in input order, flushed batch by batch. A file that cannot be decoded
gets its reason in ``error`` and the run goes on. Exit status: 0 when it ran (even with
per-file errors), 2 on unusable arguments, 3 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import posixpath
import sys
import time
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from model.export import SERVE_WAVEFORM, SERVING_DEFAULT, ExportError, read_contract
from pipeline.audio import AudioError, decode_audio
from pipeline.params import ATTRIBUTES, FeatureParams

COLUMNS = ("path", "duration", *ATTRIBUTES, "error")
EXIT_OK, EXIT_USAGE, EXIT_MODEL = 0, 2, 3
DEFAULT_BATCH_SIZE = 8
HANDFUL = 5
"""More files than this get a progress display even when stderr is not a terminal."""


class UsageError(ValueError):
    """Arguments the command cannot work with; the message says which and why."""


class ModelError(ValueError):
    """The model path does not hold a SavedModel that meets the serving contract."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One CSV row: a file's duration (s) and predictions, or the reason it has none."""

    path: str
    duration: float | None = None
    predictions: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""

    def cells(self) -> list[str]:
        return [self.path, "" if self.duration is None else f"{self.duration:.3f}",
                *(f"{self.predictions[a]:.6f}" if a in self.predictions else "" for a in ATTRIBUTES),
                self.error]


class ServedModel:
    """An exported SavedModel, checked against the serving contract when loaded."""

    def __init__(self, path: str):
        try:
            self._loaded = tf.saved_model.load(path)
            contract = read_contract(self._loaded)
        except (OSError, ValueError, tf.errors.OpError, ExportError) as error:
            raise ModelError(f"cannot load the model {path}: {_first_line(error)}") from error
        self.attributes = contract.attributes
        self.sample_rate = self._sample_rate()
        self._predict = self._loaded.signatures[SERVING_DEFAULT]
        waveform_fn = self._loaded.signatures[SERVE_WAVEFORM]
        # Models that only meet the two-signature contract get their features from
        # serve_waveform, which also runs the network once per file.
        self._features = getattr(self._loaded, "waveform_features", None) or (
            lambda waveform: waveform_fn(waveform=waveform)["features"])

    def _sample_rate(self) -> int:
        """The rate the model's front end expects, from its embedded metadata (16 kHz by default)."""
        metadata = getattr(self._loaded, "metadata_json", None)
        if metadata is None:
            return FeatureParams().sample_rate
        return int(json.loads(metadata.numpy())["feature_params"]["sample_rate"])

    def features(self, waveform: np.ndarray) -> np.ndarray:
        """Normalised chunks [C, m, n_mels] of a mono waveform at ``sample_rate``."""
        return self._features(tf.constant(waveform, tf.float32)).numpy()

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per-attribute predictions [batch] for features [batch, C, m, n_mels]."""
        outputs = self._predict(features=tf.constant(features, tf.float32))
        return {a: outputs[a].numpy() for a in self.attributes}


def find_files(paths: Sequence[str]) -> list[str]:
    """Files named and files under the folders named (sorted, recursive, no hidden ones)."""
    if not paths:
        raise UsageError("no PATH given: name audio files or folders")
    files: list[str] = []
    for path in paths:
        try:
            files.extend(_files_at(path))
        except tf.errors.OpError as error:
            raise UsageError(f"cannot list {path}: {_first_line(error)}") from error
    return files


def _files_at(path: str) -> list[str]:
    if tf.io.gfile.isdir(path):
        found = sorted(posixpath.join(root, name) for root, _, names in tf.io.gfile.walk(path)
                       for name in names if not _hidden(posixpath.relpath(posixpath.join(root, name), path)))
        if not found:
            raise UsageError(f"folder {path} holds no files")
        return found
    if tf.io.gfile.exists(path):
        return [path]
    raise UsageError(f"no such file or folder: {path}")


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def decode_file(path: str, sample_rate: int) -> tuple[np.ndarray | None, str]:
    """(waveform, "") or (None, reason), with the pipeline's decoder and reasons."""
    try:
        with tf.io.gfile.GFile(path, "rb") as handle:
            data = handle.read()
    except (OSError, tf.errors.OpError) as error:
        return None, f"unreadable file: {_first_line(error)}"
    try:
        return decode_audio(data, sample_rate), ""
    except AudioError as error:
        return None, str(error)


def predict_files(model: ServedModel, files: Sequence[str], batch_size: int) -> Iterator[list[Row]]:
    """Rows of ``batch_size`` files at a time, in order; one ``serving_default`` call per batch.

    Features come from the model's front end file by file (lengths differ); the network,
    which costs about seven times as much, then runs once over the batch.
    """
    for start in range(0, len(files), batch_size):
        rows: list[Row] = []
        decoded: list[int] = []
        features: list[np.ndarray] = []
        for path in files[start:start + batch_size]:
            waveform, error = decode_file(path, model.sample_rate)
            if waveform is None:
                rows.append(Row(path, error=error))
                continue
            decoded.append(len(rows))
            features.append(model.features(waveform))
            rows.append(Row(path, duration=waveform.size / model.sample_rate))
        if features:
            predictions = model.predict(np.stack(features))
            for k, position in enumerate(decoded):
                rows[position] = dataclasses.replace(
                    rows[position], predictions={a: float(v[k]) for a, v in predictions.items()})
        yield rows


class Progress:
    """Files done, rate and time left on stderr: redrawn on a terminal, a line per 10 % otherwise."""

    REDRAW_SECONDS = 0.1

    def __init__(self, total: int, stream: IO[str]):
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.enabled = self.tty or total > HANDFUL
        self.start = time.monotonic()
        self.done = self.errors = 0
        self._last_draw = -math.inf
        self._last_tenth = 0

    def update(self, rows: Sequence[Row]) -> None:
        self.done += len(rows)
        self.errors += sum(1 for row in rows if row.error)
        if not self.enabled:
            return
        now, finished, tenth = time.monotonic(), self.done == self.total, self.done * 10 // self.total
        if self.tty and (finished or now - self._last_draw >= self.REDRAW_SECONDS):
            self.stream.write("\r" + self._line(now) + ("\n" if finished else ""))
            self._last_draw = now
        elif not self.tty and tenth > self._last_tenth:
            self.stream.write(self._line(now) + "\n")
            self._last_tenth = tenth
        self.stream.flush()

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = 30 * self.done // self.total
        return (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} files, "
                f"{self.errors} errors, {rate:.1f} files/s, {left:.0f} s left")


def write_rows(batches: Iterable[list[Row]], handle: IO[str], progress: Progress) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rows in batches:
        writer.writerows(row.cells() for row in rows)
        handle.flush()
        progress.update(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict", description="Predict arousal, valence and dominance for audio files "
        "with an exported SavedModel; writes CSV path,duration,arousal,valence,dominance,error.")
    parser.add_argument("--model", required=True, help="SavedModel folder (JOB/model)")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="audio file or folder (searched recursively)")
    parser.add_argument("--output", help="CSV file to write (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="files per serving_default call")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.output and not tf.io.gfile.isdir(posixpath.dirname(args.output) or "."):
            raise UsageError(f"--output {args.output}: its folder does not exist")
        files = find_files(args.paths)
    except UsageError as error:
        print(f"python -m model.predict: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = ServedModel(args.model)
    except ModelError as error:
        print(f"python -m model.predict: error: {error}", file=sys.stderr)
        return EXIT_MODEL
    progress = Progress(len(files), sys.stderr)
    batches = predict_files(model, files, args.batch_size)
    if args.output:
        with tf.io.gfile.GFile(args.output, "w") as handle:
            write_rows(batches, handle, progress)
    else:
        write_rows(batches, sys.stdout, progress)
    if progress.errors:
        print(f"{progress.errors} of {len(files)} files could not be read (see the error column)", file=sys.stderr)
    return EXIT_OK


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
