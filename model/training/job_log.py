"""JOB/train.log: every line a training run logs, with its UTC time, whether or not a terminal watches.

Vertex AI keeps a job's stdout in Cloud Logging, and a CI run's only in its console; the
job folder is what stays with the results. A ``JobLog`` tees the trainer's ``log`` lines,
Python logging records (TensorFlow's and Keras' warnings among them) and the error that
ended a run into that file. A resumed run appends to it. Local files are appended line by
line; object stores (``gs://``) cannot append, so there the whole file is rewritten at
most every ``flush_seconds`` and when the run ends.
"""

from __future__ import annotations

import datetime
import logging
import os
import posixpath
import socket
import threading
import traceback
import uuid
from typing import Callable

import tensorflow as tf

class _Handler(logging.Handler):
    """Python logging records into a ``JobLog``, at the levels logging already lets through."""

    def __init__(self, job_log: "JobLog"):
        super().__init__(logging.INFO)
        self.job_log = job_log
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.job_log.write(self.format(record))
        except Exception:  # logging must never end a run
            self.handleError(record)


class JobLog:
    """Appends timestamped lines to ``path``; a context manager that also captures Python logging."""

    def __init__(self, path: str, flush_seconds: float = 30.0, clock: Callable[[], float] | None = None):
        self.path = path
        self.remote = "://" in path
        self.flush_seconds = flush_seconds
        self._lock = threading.RLock()
        self._handler = _Handler(self)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc).timestamp())
        self._handle = None
        self._text: list[str] = []
        self._last_flush = self._clock()

    def __enter__(self) -> "JobLog":
        tf.io.gfile.makedirs(posixpath.dirname(self.path) or ".")
        if not self.remote:
            self._handle = tf.io.gfile.GFile(self.path, "a")
        elif tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as handle:
                self._text.append(handle.read())
        self.write(f"log opened by process {os.getpid()} on {socket.gethostname()}")
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, kind, error, trace) -> None:
        logging.getLogger().removeHandler(self._handler)
        if error is not None:
            self.write("run stopped by an error:\n" + "".join(traceback.format_exception(kind, error, trace)).rstrip())
        with self._lock:
            self._flush()
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def write(self, text: str) -> None:
        """One entry; each of its lines gets the time, so the file greps line by line."""
        stamp = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines = "".join(f"{stamp} {line}\n" for line in (text.splitlines() or [""]))
        with self._lock:
            if self._handle is not None:
                self._handle.write(lines)
                self._handle.flush()
            else:
                self._text.append(lines)
                if self.remote and self._clock() - self._last_flush >= self.flush_seconds:
                    self._flush()

    def tee(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that also writes each line here."""

        def both(text: str) -> None:
            log(text)
            self.write(text)

        return both

    def _flush(self) -> None:
        """The whole file through a temporary name and a rename: a kill never leaves half of it."""
        if self.remote and self._text:
            temporary = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with tf.io.gfile.GFile(temporary, "w") as handle:
                handle.write("".join(self._text))
            tf.io.gfile.rename(temporary, self.path, overwrite=True)
            self._last_flush = self._clock()
