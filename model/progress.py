"""Progress of long work: counts, rate and time left on a terminal, short logged lines elsewhere.

Embedding a split before each clustering stage, K-means, evaluation, local pipeline runs and
prediction each take minutes at paper scale. On a terminal one line is redrawn in place (at
most ten times a second). Anywhere else (CI, Vertex AI, a file) nothing is redrawn: a plain
line goes to ``log`` every ``every_seconds`` while the work lasts and one when it ends, so
logs stay short yet say where a long run is.

Standard library only, so every entry point can import it without slowing its start.

    reporter = Reporter(log=print)
    with reporter.counting("embedding train", total=5000, unit="sentences") as progress:
        for batch in batches:
            progress.update(len(batch))
    with reporter.phase("k-means", expected_seconds=12.0):
        run_kmeans()   # no counts inside: elapsed time against the expected duration
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import IO, Callable

REDRAW_SECONDS = 0.1
"""Shortest interval between two redraws of the live line."""
TICK_SECONDS = 0.5
"""How often a ``phase`` (or a ``watch``ed tally) refreshes its line from its own thread."""


def duration(seconds: float) -> str:
    """'4.2 s', '42 s', '3 min 05 s', '2 h 03 min': readable at a glance, never '0:03:05.123'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _rate(per_second: float) -> str:
    return f"{per_second:,.1f}/s" if per_second < 100 else f"{per_second:,.0f}/s"


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Work of ``what``: ``done`` of ``total`` (if known), or elapsed time against ``expected_seconds``.

    Thread-safe: a background thread may redraw while the owner updates. ``finish`` logs
    the closing line once; leaving the ``with`` block through an exception only clears the
    live line, so a failed step does not report itself done.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "items", *,
                 expected_seconds: float | None = None, stream: IO[str] | None = None,
                 log: Callable[[str], None] | None = None, live: bool | None = None,
                 every_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self.expected_seconds = expected_seconds
        self.stream = sys.stderr if stream is None else stream
        self.live = is_terminal(self.stream) if live is None else live
        self.every_seconds = every_seconds
        self._log = log if log is not None else self._write_line
        self._clock = clock
        self._lock = threading.Lock()
        self.start = clock()
        self.done = 0
        self.note = ""
        self.finished = False
        self._last_draw = self._last_log = self.start
        self._drawn = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.finish()
        else:
            with self._lock:
                self._clear()
                self.finished = True

    def update(self, count: int = 1, note: str | None = None) -> None:
        """``count`` more units done; ``note`` replaces the free text after the counts (e.g. '3 errors')."""
        with self._lock:
            self.done += count
            if note is not None:
                self.note = note
            self._show(force=False)

    def set(self, done: int, note: str | None = None) -> None:
        """The absolute count, for callers that read a running total (``watch``)."""
        self.update(done - self.done, note)

    def refresh(self) -> None:
        """Redraws (or logs, when due) without new counts: elapsed time still moves."""
        with self._lock:
            self._show(force=False)

    def finish(self, note: str | None = None) -> str:
        """Logs the closing line (counts, time taken, rate) and returns it; later calls do nothing."""
        with self._lock:
            if self.finished:
                return ""
            self.finished = True
            if note is not None:
                self.note = note
            self._clear()
            line = self.summary()
        self._log(line)
        return line

    def elapsed(self) -> float:
        return self._clock() - self.start

    def line(self) -> str:
        """The running line: '{what}: 1,200/5,000 sentences (24 %), 410/s, 2.9 s so far, about 9.3 s left'."""
        elapsed = self.elapsed()
        parts = [self._counts()] if self.total is not None or self.done else []
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.done and elapsed > 0:
            parts.append(_rate(rate))
        parts.append(f"{duration(elapsed)} so far")
        left = self._left(elapsed, rate)
        if left is not None:
            parts.append(f"about {duration(left)} left")
        if self.note:
            parts.append(self.note)
        return f"{self.what}: " + ", ".join(parts)

    def summary(self) -> str:
        """The closing line: '{what}: 5,000 sentences in 12 s (410/s)'."""
        elapsed = self.elapsed()
        counts = ""
        if self.total is not None or self.done:
            whole = self.total is None or self.done == self.total
            done = f"{self.done:,}" if whole else f"{self.done:,}/{self.total:,}"
            counts = f"{done} {self.unit} "
            rate = f" ({_rate(self.done / elapsed)})" if self.done and elapsed > 0 else ""
        else:
            rate = ""
        return (f"{self.what}: {counts or 'done '}in {duration(elapsed)}{rate}"
                + (f", {self.note}" if self.note else ""))

    def _counts(self) -> str:
        if self.total is None:
            return f"{self.done:,} {self.unit}"
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return f"{self.done:,}/{self.total:,} {self.unit}{share}"

    def _left(self, elapsed: float, rate: float) -> float | None:
        if self.total is not None and rate > 0:
            return max(self.total - self.done, 0) / rate
        if self.expected_seconds is not None:
            return max(self.expected_seconds - elapsed, 0.0)
        return None

    def _show(self, force: bool) -> None:
        if self.finished:
            return
        now = self._clock()
        if self.live:
            if force or now - self._last_draw >= REDRAW_SECONDS:
                text = self.line()
                self.stream.write("\r" + text + " " * max(self._drawn - len(text), 0))
                self.stream.flush()
                self._drawn, self._last_draw = len(text), now
        elif now - self._last_log >= self.every_seconds and self.done != self.total:
            self._last_log = now
            self._log(self.line())

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class Tally:
    """A running count that worker threads add to and a ``watch`` thread reads (one process).

    ``watched`` is true while a ``Reporter.watch`` shows it, so workers can leave out
    progress lines of their own that would only repeat it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        self.watched = False

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._value += count

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class _Ticker:
    """Refreshes a ``Progress`` from a daemon thread every ``TICK_SECONDS`` until stopped."""

    def __init__(self, progress: Progress, before_refresh: Callable[[], None] | None = None,
                 tally: Tally | None = None):
        self.progress = progress
        self._before = before_refresh
        self._tally = tally
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress: {progress.what}", daemon=True)

    def __enter__(self) -> Progress:
        if self._tally is not None:
            self._tally.watched = True
        self._thread.start()
        return self.progress

    def __exit__(self, kind, error, trace) -> None:
        self._stop.set()
        self._thread.join()
        if self._tally is not None:
            self._tally.watched = False
        if self._before is not None and kind is None:
            self._before()
        self.progress.__exit__(kind, error, trace)

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            if self._before is not None:
                self._before()
            self.progress.refresh()


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Where progress goes: one of these is handed to every step that reports progress.

    ``log`` receives the logged lines (default: written to ``stream``); ``live`` forces
    or forbids the redrawn line (default: on when ``stream`` is a terminal); ``enabled``
    False reports nothing at all.
    """

    stream: IO[str] | None = None
    log: Callable[[str], None] | None = None
    live: bool | None = None
    every_seconds: float = 30.0
    enabled: bool = True

    def counting(self, what: str, total: int | None = None, unit: str = "items") -> Progress:
        """Counted work: ``update`` it as units finish (use as a context manager)."""
        return self._progress(what, total, unit, None)

    def phase(self, what: str, expected_seconds: float | None = None) -> _Ticker:
        """Work with no counts inside (a compiled graph, a library call): a thread keeps its line moving."""
        return _Ticker(self._progress(what, None, "items", expected_seconds))

    def watch(self, tally: Tally, what: str, total: int | None = None, unit: str = "items") -> _Ticker:
        """Work counted by others into ``tally`` (e.g. DoFns in this process): a thread reads and shows it."""
        progress = self._progress(what, total, unit, None)
        start = tally.value
        return _Ticker(progress, lambda: progress.set(tally.value - start), tally)

    def _progress(self, what: str, total: int | None, unit: str, expected: float | None) -> Progress:
        if not self.enabled:
            return Progress(what, total, unit, expected_seconds=expected, log=_ignore, live=False,
                            every_seconds=float("inf"))
        return Progress(what, total, unit, expected_seconds=expected, stream=self.stream, log=self.log,
                        live=self.live, every_seconds=self.every_seconds)


def _ignore(text: str) -> None:
    """The ``log`` of a disabled reporter."""


SILENT = Reporter(enabled=False)
"""Reports nothing: the default of library functions, so only entry points decide what is shown."""
