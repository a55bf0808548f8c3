"""``python -m model.predict``: emotion predictions for audio files from an exported SavedModel.

    python -m model.predict --model JOB/model PATH [PATH ...] [--output preds.csv] [--batch-size N]
        [--window 11 --hop 11] [--format csv|jsonl] [--chunks] [--plot trace.png]
        [--max-seconds 3600] [--overwrite]
    python -m model.predict --model JOB/model --list files.csv ...

Each PATH is an audio file or a folder (searched recursively; every file in it is tried,
hidden ones excepted); ``--list`` names a CSV whose ``path`` column (else its first
column) lists the files, its other columns copied into every row. Files are decoded with
the pipeline's decoder (any format libsndfile reads, down-mixed to mono, resampled to the
model's rate, at most ``--max-seconds`` long); a recording longer than ``--window`` is
scored window by window (``model.serving.predictor``), a shorter one whole. The SavedModel's
in-graph front end turns each window into features, and ``serving_default`` predicts
``--batch-size`` windows at a time. The model needs only TensorFlow.

Writes ``path,duration,arousal,valence,dominance,error,start,end`` (then ``window,chunk``
with ``--chunks``, then the list's columns) as CSV or JSON lines to stdout or
``--output``: one row per window (per chunk with ``--chunks``) in input order. A file
that cannot be decoded gets one row with its reason in ``error`` and the run goes on.
``--output`` and ``--plot`` never replace an input, nor an existing file without
``--overwrite``; the output appears when complete (a failed run leaves any previous one).
Exit status: 0 when it ran (even with per-file errors), 2 on unusable arguments, 3 when
the model cannot be loaded (or lacks what ``--chunks`` needs), 4 when no file could be read.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import posixpath
import sys
import time
from contextlib import contextmanager
from typing import IO, Iterable, Iterator, Sequence

from model.serving.predictor import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_SECONDS, DEFAULT_WINDOW_SECONDS, NO_CHUNKS,
                             ModelError, Prediction, Predictor, ServedModel, decode_file, first_line,
                             import_tensorflow)
from pipeline.params import ATTRIBUTES

__all__ = ["ServedModel", "decode_file", "DEFAULT_BATCH_SIZE", "main"]

COLUMNS = ("path", "duration", *ATTRIBUTES, "error", "start", "end")
CHUNK_COLUMNS = ("window", "chunk")
FORMATS = ("csv", "jsonl")
LIST_PATH_COLUMN = "path"
LIST_PREFIX = "list_"
"""Put before a ``--list`` column named like an output column (a manifest's ``arousal`` label)."""
EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_NONE_READ = 0, 2, 3, 4
HANDFUL = 5
"""More files than this get a progress display even when stderr is not a terminal."""


class UsageError(ValueError):
    """Arguments the command cannot work with; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One file to score and the ``--list`` cells its rows carry."""

    path: str
    extra: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
    """One output row: a window's (or chunk's) predictions, or the reason a file has none."""

    path: str
    duration: float | None = None
    predictions: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""
    start: float | None = None
    end: float | None = None
    window: int | None = None
    chunk: int | None = None
    extra: tuple[str, ...] = ()

    def values(self, chunks: bool) -> list[str | float | int | None]:
        """The row's values in column order (None where empty), rounded as they are written."""
        seconds = [None if v is None else round(v, 3) for v in (self.duration, self.start, self.end)]
        scores = [round(self.predictions[a], 6) if a in self.predictions else None for a in ATTRIBUTES]
        return [self.path, seconds[0], *scores, self.error or None, *seconds[1:],
                *((self.window, self.chunk) if chunks else ()), *self.extra]

    def cells(self, chunks: bool = False) -> list[str]:
        """CSV cells: seconds with 3 decimals, predictions with 6, empty where there is nothing."""
        formats = ["{}", "{:.3f}", *["{:.6f}"] * len(ATTRIBUTES), "{}", "{:.3f}", "{:.3f}"]
        return [("" if value is None else formats[k].format(value) if k < len(formats) else str(value))
                for k, value in enumerate(self.values(chunks))]


def rows_of(source: Source, result: Prediction | str, chunks: bool) -> list[Row]:
    """A file's rows: one per window (per chunk with ``chunks``), or one carrying its error."""
    if isinstance(result, str):
        return [Row(source.path, error=result, extra=source.extra)]
    if chunks:
        return [Row(source.path, result.duration, dict(c.scores), start=c.start, end=c.end, window=w, chunk=k,
                    extra=source.extra)
                for w, window in enumerate(result.chunks) for k, c in enumerate(window)]
    return [Row(source.path, result.duration, dict(w.scores), start=w.start, end=w.end, extra=source.extra)
            for w in result.windows]


def find_files(paths: Sequence[str]) -> list[str]:
    """Files named and files under the folders named (sorted, recursive, no hidden ones)."""
    tf = import_tensorflow()  # as late as this, so that --help does not wait for TensorFlow

    files: list[str] = []
    for path in paths:
        try:
            files.extend(_files_at(path))
        except tf.errors.OpError as error:
            raise UsageError(f"cannot list {path}: {first_line(error)}") from error
    return files


def _files_at(path: str) -> list[str]:
    tf = import_tensorflow()

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


def read_list(path: str) -> tuple[list[str], list[Source]]:
    """(extra column names, sources) of a ``--list`` CSV.

    The paths are the ``path`` column, or the first column when there is none; relative
    ones are taken from the list's folder (as the pipeline's manifests). Every other column
    is kept, renamed ``list_<name>`` when it is named like an output column.
    """
    tf = import_tensorflow()

    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            reader = csv.reader(io.StringIO(handle.read().lstrip("\ufeff")))
            header, *lines = [line for line in reader if any(cell.strip() for cell in line)] or [[]]
    except (OSError, UnicodeDecodeError, csv.Error, tf.errors.OpError) as error:
        raise UsageError(f"cannot read --list {path}: {first_line(error)}") from error
    if not header or not lines:
        raise UsageError(f"--list {path} has no rows under a header (a column of paths)")
    key = header.index(LIST_PATH_COLUMN) if LIST_PATH_COLUMN in header else 0
    base = posixpath.dirname(path)
    reserved = {*COLUMNS, *CHUNK_COLUMNS}
    names = [f"{LIST_PREFIX}{name}" if name in reserved else name for k, name in enumerate(header) if k != key]
    sources = []
    for line in lines:
        cells = line + [""] * (len(header) - len(line))
        file = cells[key].strip()
        if file and not ("://" in file or posixpath.isabs(file)):
            file = posixpath.join(base, file)
        sources.append(Source(file, tuple(c for k, c in enumerate(cells[:len(header)]) if k != key)))
    return names, sources


def predict_files(predictor: Predictor, sources: Sequence[Source], chunks: bool = False,
                  progress: "Progress | None" = None) -> Iterator[list[Row]]:
    """Each file's rows, in order; windows of consecutive files share ``serving_default`` calls."""
    def decoded() -> Iterator[tuple[Source, object]]:
        for source in sources:
            if not source.path:
                yield source, "empty path in the list"
                continue
            waveform, error = predictor.decode(source.path)
            yield source, error if waveform is None else waveform

    on_window = progress.partial if progress is not None else None
    for source, result in predictor.stream(decoded(), chunks, on_window):
        rows = rows_of(source, result, chunks)
        if progress is not None:
            progress.update(errors=int(isinstance(result, str)))
        yield rows


class Progress:
    """Files done, rate and time left on stderr: redrawn on a terminal, a line per 10 % otherwise.

    On a terminal the windows of the file being scored count as a fraction of it, so one
    long recording still shows how far it is and when it will be done.
    """

    REDRAW_SECONDS = 0.1

    def __init__(self, total: int, stream: IO[str]):
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.enabled = self.tty or total > HANDFUL
        self.start = time.monotonic()
        self.done = self.errors = 0
        self._fraction = 0.0
        self._last_draw = -math.inf
        self._last_tenth = 0

    def partial(self, windows_done: int, windows: int) -> None:
        """The file being scored is ``windows_done`` of ``windows`` through (terminal only)."""
        self._fraction = windows_done / windows if windows_done < windows else 0.0
        if self.tty and time.monotonic() - self._last_draw >= self.REDRAW_SECONDS:
            self._draw(time.monotonic(), finished=False)

    def update(self, files: int = 1, errors: int = 0) -> None:
        """``files`` more files done, ``errors`` of them without predictions."""
        self.done += files
        self.errors += errors
        self._fraction = 0.0
        if not self.enabled:
            return
        now, finished, tenth = time.monotonic(), self.done == self.total, self.done * 10 // self.total
        if self.tty and (finished or now - self._last_draw >= self.REDRAW_SECONDS):
            self._draw(now, finished)
        elif not self.tty and tenth > self._last_tenth:
            self.stream.write(self._line(now) + "\n")
            self._last_tenth = tenth
        self.stream.flush()

    def _draw(self, now: float, finished: bool) -> None:
        self.stream.write("\r" + self._line(now) + ("\n" if finished else ""))
        self.stream.flush()
        self._last_draw = now

    def _line(self, now: float) -> str:
        done = self.done + self._fraction
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(30 * done // self.total)
        return (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} files, "
                f"{self.errors} errors, {rate:.1f} files/s, {left:.0f} s left")


def write_rows(batches: Iterable[list[Row]], handle: IO[str], output_format: str, columns: Sequence[str],
               chunks: bool) -> list[Row]:
    """Writes the rows file by file (flushed) and returns them."""
    written: list[Row] = []
    writer = csv.writer(handle, lineterminator="\n")
    if output_format == "csv":
        writer.writerow(columns)
    for rows in batches:
        for row in rows:
            if output_format == "csv":
                writer.writerow(row.cells(chunks))
            else:
                handle.write(json.dumps(dict(zip(columns, row.values(chunks)))) + "\n")
        handle.flush()
        written.extend(rows)
    return written


@contextmanager
def replaced_when_done(path: str, mode: str = "w") -> Iterator[IO]:
    """A handle on a hidden file beside ``path`` that becomes ``path`` only when the block ends well.

    So a run that fails (or is killed) part-way leaves any previous ``path`` as it was.
    """
    tf = import_tensorflow()

    folder, name = posixpath.split(path)
    partial = posixpath.join(folder, f".{name}.partial-{os.getpid()}")
    try:
        with tf.io.gfile.GFile(partial, mode) as handle:
            yield handle
        tf.io.gfile.rename(partial, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)


def same_file(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return posixpath.normpath(a) == posixpath.normpath(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_destination(flag: str, path: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuses a destination whose folder is missing, that is an input, or that exists (without --overwrite)."""
    tf = import_tensorflow()

    if not tf.io.gfile.isdir(posixpath.dirname(path) or "."):
        raise UsageError(f"{flag} {path}: its folder does not exist")
    clash = next((source for source in inputs if same_file(path, source)), None)
    if clash is not None:
        raise UsageError(f"{flag} {path} is one of the inputs ({clash}): it would be overwritten")
    if tf.io.gfile.exists(path) and not overwrite:
        raise UsageError(f"{flag} {path} exists: pass --overwrite to replace it")


def plot_trace(path: str, rows: Sequence[Row], attributes: Sequence[str], title: str) -> None:
    """Draws a recording's scores against time (a panel per attribute) as a PNG at ``path``.

    Windows are steps from their start to their end; chunk rows (``--chunks``) are points
    at their chunk's middle, joined per window.
    """
    from model.evaluation.plots import DPI, pyplot

    plt = pyplot()
    chunked = any(row.chunk is not None for row in rows)
    figure, axes = plt.subplots(len(attributes), 1, sharex=True, squeeze=False,
                                figsize=(10, 1.2 + 1.9 * len(attributes)))
    for axis, attribute, colour in zip(axes[:, 0], attributes, ("tab:red", "tab:blue", "tab:green")):
        if chunked:
            for window in sorted({row.window for row in rows}):
                points = [row for row in rows if row.window == window]
                axis.plot([(r.start + r.end) / 2 for r in points], [r.predictions[attribute] for r in points],
                          "o-", color=colour, markersize=3, linewidth=0.8, alpha=0.8)
        else:
            for row in rows:
                axis.hlines(row.predictions[attribute], row.start, row.end, colors=colour, linewidth=2.5)
            centres = [(row.start + row.end) / 2 for row in rows]
            axis.plot(centres, [row.predictions[attribute] for row in rows], ":", color=colour, linewidth=1)
        axis.set_ylabel(f"{attribute}\n(1..7)")
        axis.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, rows[0].duration)
    axes[0, 0].set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    with replaced_when_done(path, "wb") as handle:
        handle.write(buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict", description="Predict arousal, valence and dominance for audio files "
        "with an exported SavedModel; writes CSV path,duration,arousal,valence,dominance,error,start,end "
        "(one row per window of a long recording).")
    parser.add_argument("--model", required=True, help="SavedModel folder (JOB/model)")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="audio file or folder (searched recursively)")
    parser.add_argument("--list", metavar="FILE.csv", help="CSV of files to score: its 'path' column (else "
                        "its first); its other columns are copied into the rows (instead of PATHs)")
    parser.add_argument("--output", help="file to write (default: stdout); refused if it exists, see --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output or --plot")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or jsonl (a JSON "
                        "object per row, null where a CSV cell is empty)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="windows per serving_default call")
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW_SECONDS, metavar="SECONDS",
                        help="score longer recordings in windows of this length (default %(default)g s; "
                        "0: every file whole)")
    parser.add_argument("--hop", type=float, metavar="SECONDS",
                        help="seconds from one window's start to the next (default: the window, back to back)")
    parser.add_argument("--chunks", action="store_true",
                        help="a row per chunk of each window: the network's chunk scores before their mean")
    parser.add_argument("--plot", metavar="PNG", help="draw the emotion trace of the (one) recording")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="longest audio a file may decode to; longer ones get an error row "
                        "(default %(default)g s)")
    return parser


def _check_numbers(args: argparse.Namespace) -> None:
    limits = (("--batch-size", args.batch_size, 1, False), ("--window", args.window, 0.0, False),
              ("--hop", args.hop, 0.0, True), ("--max-seconds", args.max_seconds, 0.0, True))
    for flag, value, low, strict in limits:
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise UsageError(f"{flag} must be {'above' if strict else 'at least'} {low:g}, got {value:g}")


def _sources(args: argparse.Namespace) -> tuple[list[str], list[Source], list[str]]:
    """(extra columns, sources, input paths for the destination checks)."""
    if args.list and args.paths:
        raise UsageError("give PATHs or --list, not both")
    if args.list:
        extra, sources = read_list(args.list)
        return extra, sources, [args.list, *(s.path for s in sources if s.path)]
    if not args.paths:
        raise UsageError("no PATH given: name audio files or folders (or --list FILE.csv)")
    files = find_files(args.paths)
    return [], [Source(path) for path in files], files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        extra, sources, inputs = _sources(args)
        if args.output:
            check_destination("--output", args.output, inputs, args.overwrite)
        if args.plot:
            if len(sources) != 1:
                raise UsageError(f"--plot draws one recording: {len(sources)} files given")
            check_destination("--plot", args.plot, [*inputs, *([args.output] if args.output else [])],
                              args.overwrite)
    except UsageError as error:
        print(f"python -m model.predict: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        predictor = Predictor(args.model, window=args.window, hop=args.hop, batch_size=args.batch_size,
                              max_seconds=args.max_seconds)
        if args.chunks and not predictor.model.has_chunks:
            raise ModelError(NO_CHUNKS)
    except ModelError as error:
        print(f"python -m model.predict: error: {error}", file=sys.stderr)
        return EXIT_MODEL
    columns = [*COLUMNS, *(CHUNK_COLUMNS if args.chunks else ()), *extra]
    progress = Progress(len(sources), sys.stderr)
    batches = predict_files(predictor, sources, args.chunks, progress)
    if args.output:
        with replaced_when_done(args.output) as handle:
            rows = write_rows(batches, handle, args.format, columns, args.chunks)
    else:
        rows = write_rows(batches, sys.stdout, args.format, columns, args.chunks)
    if progress.errors:
        print(f"{progress.errors} of {len(sources)} files could not be read (see the error column)", file=sys.stderr)
    if progress.errors == len(sources):
        print("python -m model.predict: error: no file could be read", file=sys.stderr)
        return EXIT_NONE_READ
    if args.plot:
        window = "whole" if args.window <= 0 else f"{args.window:g} s windows every {predictor.hop:g} s"
        plot_trace(args.plot, rows, predictor.attributes,
                   f"{posixpath.basename(sources[0].path)}: {rows[0].duration:.1f} s, {window}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
