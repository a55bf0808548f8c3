"""Progress of long work (model.progress) where it is used, and the job log (model.training.job_log):
counts and a time left on a terminal, short logged lines elsewhere, every line in train.log."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model import progress as progress_module
from model.training.job_log import JobLog
from model.progress import Progress, Reporter, Tally, duration
from model.training.reassignment import Reclusterer
from tests.fixtures.streams import Terminal


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_logs_counts_now_and_then_and_never_redraws() -> None:
    clock, stream, lines = Clock(), io.StringIO(), []
    progress = Progress("embedding train", 1000, "sentences", stream=stream, log=lines.append, every_seconds=30,
                        clock=clock)
    for _ in range(100):  # 10 sentences every second for 100 s
        clock.now += 1
        progress.update(10)
    progress.finish()
    assert stream.getvalue() == "", "nothing is drawn on a stream that is no terminal"
    assert lines == [
        "embedding train: 300/1,000 sentences (30 %), 10.0/s, 30 s so far, about 1 min 10 s left",
        "embedding train: 600/1,000 sentences (60 %), 10.0/s, 1 min 00 s so far, about 40 s left",
        "embedding train: 900/1,000 sentences (90 %), 10.0/s, 1 min 30 s so far, about 10 s left",
        "embedding train: 1,000 sentences in 1 min 40 s (10.0/s)",
    ]
    assert progress.finish() == "" and len(lines) == 4, "the closing line is logged once"


def test_on_a_terminal_progress_redraws_one_line_with_the_time_left_then_logs_the_total() -> None:
    clock, terminal, lines = Clock(), Terminal(), []
    progress = Progress("embedding unlabeled", 200, "sentences", stream=terminal, log=lines.append, clock=clock)
    clock.now += 2
    progress.update(50)
    assert terminal.getvalue() == (
        "\rembedding unlabeled: 50/200 sentences (25 %), 25.0/s, 2.0 s so far, about 6.0 s left")
    clock.now += 0.05
    progress.update(50)  # within 0.1 s of the last redraw: not drawn again
    assert terminal.getvalue().count("\r") == 1
    clock.now += 1.95
    progress.update(50, note="2 errors")
    assert terminal.getvalue().endswith("150/200 sentences (75 %), 37.5/s, 4.0 s so far, about 1.3 s left, 2 errors")
    assert lines == [], "a terminal's running line is not logged"
    clock.now += 1
    progress.update(50)
    progress.finish()
    assert terminal.getvalue().endswith("\r") and not terminal.getvalue().split("\r")[-2].strip(), "line cleared"
    assert lines == ["embedding unlabeled: 200 sentences in 5.0 s (40.0/s), 2 errors"]


def test_a_failed_step_clears_its_line_and_does_not_report_itself_done() -> None:
    terminal, lines = Terminal(), []
    with pytest.raises(RuntimeError):
        with Reporter(stream=terminal, log=lines.append).counting("scoring", 10, "sentences") as progress:
            progress.update(3)
            raise RuntimeError("disk full")
    assert lines == [] and terminal.getvalue().split("\r")[-1] == "", "no closing line, no running line left"


def test_a_phase_shows_elapsed_time_against_the_expected_duration(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "TICK_SECONDS", 0.02)
    terminal, lines = Terminal(), []
    with Reporter(stream=terminal, log=lines.append).phase("k-means on 4,000 chunks", expected_seconds=5):
        time.sleep(0.3)
    drawn = terminal.getvalue()
    assert re.search(r"\rk-means on 4,000 chunks: 0\.\d s so far, about 4\.\d s left", drawn), drawn
    assert len(lines) == 1 and re.fullmatch(r"k-means on 4,000 chunks: done in 0\.\d s", lines[0]), lines


def test_a_watched_tally_shows_what_worker_threads_count() -> None:
    tally, lines = Tally(), []
    reporter = Reporter(stream=io.StringIO(), log=lines.append)
    with reporter.watch(tally, "pipeline", 40, "inputs decoded"):
        assert tally.watched
        workers = [threading.Thread(target=lambda: [tally.add() for _ in range(10)]) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not tally.watched
    assert len(lines) == 1 and lines[0].startswith("pipeline: 40 inputs decoded in "), lines


def test_a_disabled_reporter_reports_nothing() -> None:
    stream = Terminal()
    with Reporter(stream=stream, enabled=False).counting("x", 5) as progress:
        progress.update(5)
    assert stream.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(4.24, "4.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7390, "2 h 03 min")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text


class StubSampler:
    """What ``Reclusterer`` uses of a sampler."""

    def __init__(self, count: int):
        self.source = type("Source", (), {"count": count})()

    def refresh(self, indices, assignments, num_clusters) -> None:
        self.assignments = assignments

    def acceptance_rate(self) -> float:
        return 1.0


def test_reclustering_reports_the_embedding_counts_and_then_k_means(monkeypatch) -> None:
    features = np.random.default_rng(0).normal(size=(30, 4, 8)).astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices({"features": features, "index": np.arange(30)}).batch(7)
    lines: list[str] = []
    reclusterer = Reclusterer(name="train", embed_fn=lambda x: x, batches=lambda: batches, sampler=StubSampler(30),
                              num_clusters=3, iterations=5, seed=0,
                              progress=Reporter(stream=io.StringIO(), log=lines.append))
    reclusterer.run(0)
    assert re.fullmatch(r"embedding train: 30 sentences in [\d.]+ s \([\d,.]+/s\)", lines[0]), lines
    assert re.fullmatch(r"k-means on 120 train chunks, Q=3: done in [\d.]+ s", lines[1]), lines
    monkeypatch.setattr(progress_module, "REDRAW_SECONDS", 0.0)
    terminal = Terminal()
    reclusterer.progress = Reporter(stream=terminal, log=lines.append, live=True)
    reclusterer.run(1)
    assert "\rembedding train: 7/30 sentences (23 %)" in terminal.getvalue()
    assert len(lines) == 4


def test_the_job_log_keeps_log_lines_python_logging_and_the_error_that_stopped_a_run(tmp_path: Path) -> None:
    path = tmp_path / "job" / "train.log"
    printed: list[str] = []
    with JobLog(str(path)) as job_log:
        log = job_log.tee(printed.append)
        log("epoch 1/2 stage train")
        logging.getLogger("tensorflow").warning("5 out of the last 5 calls triggered retracing")
    assert printed == ["epoch 1/2 stage train"]
    with pytest.raises(ValueError):
        with JobLog(str(path)):  # a resumed run appends
            raise ValueError("bad batch")
    lines = path.read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines)
    text = "\n".join(line[20:] for line in lines)
    assert "epoch 1/2 stage train" in text
    assert "WARNING tensorflow: 5 out of the last 5 calls triggered retracing" in text
    assert text.count("log opened by process") == 2
    assert "run stopped by an error:" in text and "ValueError: bad batch" in text
    assert job_log._handler not in logging.getLogger().handlers


def test_the_job_log_rewrites_a_remote_file_whole(tmp_path: Path) -> None:
    path = f"ram://{tmp_path}/job/train.log"
    with JobLog(path, flush_seconds=3600) as job_log:
        job_log.write("stage I")
        assert not tf.io.gfile.exists(path), "object stores get the file at a flush, not line by line"
    with JobLog(path) as job_log:
        job_log.write("resumed")
    with tf.io.gfile.GFile(path) as handle:
        text = handle.read()
    assert text.index("stage I") < text.index("resumed") and text.count("log opened") == 2


def test_a_local_pipeline_run_logs_how_many_inputs_its_workers_decoded(tmp_path: Path, monkeypatch, caplog) -> None:
    import apache_beam as beam

    from pipeline import run as run_module
    from pipeline.corpus import Utterance
    from pipeline.options import PreprocessOptions
    from pipeline.params import FeatureParams
    from pipeline.transforms import DecodeUtterances
    from tests.fixtures.edge_audio import speech_like, write_audio

    audio = write_audio(tmp_path / "a.wav", speech_like(1.0))
    utterances = [Utterance("a", str(audio), "train", "s1", (3.0, 3.0, 3.0), 0),
                  Utterance("b", str(tmp_path / "missing.wav"), "train", "s1", (3.0, 3.0, 3.0), 1)]

    def decode_only(pipeline: beam.Pipeline, options) -> int:
        _ = pipeline | beam.Create(utterances) | DecodeUtterances(FeatureParams())
        return len(utterances)

    monkeypatch.setattr(run_module, "build_pipeline", decode_only)
    caplog.set_level(logging.INFO, logger="pipeline.run")
    run_module.run(PreprocessOptions([]))
    (closing,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: ")]
    assert re.fullmatch(r"pipeline: 2 inputs decoded in [\d.]+ s \([\d.]+/s\)", closing), closing
    # Workers in other processes count elsewhere: the driver shows nothing rather than 0 of N.
    assert run_module.workers_in_process(PreprocessOptions(["--direct_num_workers", "2"]))
    assert not run_module.workers_in_process(PreprocessOptions(["--direct_running_mode", "multi_processing"]))
    assert not run_module.workers_in_process(PreprocessOptions(["--runner", "DataflowRunner"]))
