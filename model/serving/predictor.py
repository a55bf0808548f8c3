"""The Python API of an exported model: ``Predictor("JOB/model").predict(waveform_or_file)``.

    from model.serving.predictor import Predictor

    predictor = Predictor("JOB/model")                 # loads and checks the SavedModel once
    result = predictor.predict("podcast.flac")         # or a mono float waveform at 16 kHz
    print(result.arousal, result.valence, result.dominance)
    for window in result.windows:                      # 11 s windows of a long recording
        print(window.start, window.end, window.scores)

Long recordings are scored window by window (``window`` seconds every ``hop`` seconds,
each window treated as one utterance: peak-normalised, cut into the model's C chunks),
because dynamic chunking was designed for utterances of 2.75-11 s: one pass over a
ten-minute file would score eleven 1 s chunks, 2 % of its audio. A recording no longer
than a window is scored whole, as one utterance.

This module and ``model.predict`` import numpy and the pipeline's decoder, and TensorFlow
when a model is loaded or a file read (``import_tensorflow``), nothing else (no Beam,
Keras, scikit-learn or matplotlib): a script or service starts fast, and ``--help``
answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from types import ModuleType
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from pipeline.audio_decoding import AudioError, decode_audio
from pipeline.numpy_frontend import chunk_starts
from pipeline.params import FeatureParams

DEFAULT_WINDOW_SECONDS = 11.0
"""The longest utterance dynamic chunking was designed for (C = 11 chunks of 1 s, no overlap)."""
DEFAULT_MAX_SECONDS = 3600.0
"""Longest recording decoded (an hour: about 230 MB as 16 kHz float32); longer ones are refused."""
DEFAULT_BATCH_SIZE = 8
CHUNK_FUNCTION = "chunk_predictions"
"""The restored function giving per-chunk scores (trained models exported before it lack it);
converted releases give them as ``<attribute>_chunks`` outputs of ``serving_default``."""
NO_CHUNKS = (f"the model has no chunk scores (no {CHUNK_FUNCTION} function, no <attribute>_chunks outputs: "
             "it was exported before they were); export it again to get them")


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported without Keras unless something imported Keras already.

    ``import tensorflow`` imports Keras 3 when it is installed (to register its optimisers
    for SavedModels), and Keras imports scikit-learn and matplotlib: about a third of
    TensorFlow's start-up, for nothing a served model uses (its functions are TensorFlow
    graphs; ``tf.saved_model.load`` needs no Keras). ``keras`` is held off for that one
    import, which TensorFlow allows (it skips an ImportError there), and released after:
    ``import keras`` and ``tf.keras`` still load it on first use.
    """
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        sys.modules["keras"] = None  # type: ignore[assignment]  # "import keras" raises ImportError
        try:
            import tensorflow  # noqa: F401
        finally:
            if "keras" in sys.modules and sys.modules["keras"] is None:
                del sys.modules["keras"]
    import tensorflow as tf

    return tf


class ModelError(ValueError):
    """The model path does not hold a SavedModel that meets the serving contract."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """Scores (label scale, 1..7) of the stretch ``start``..``end`` seconds of a recording."""

    start: float
    end: float
    scores: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A recording's scores: per window, per chunk of each window (when asked), and overall.

    ``scores`` (and ``arousal``, ``valence``, ``dominance``) are the mean over windows, so a
    recording no longer than one window gets exactly its whole-utterance score; an
    attribute the model was not trained on is absent (None).
    """

    duration: float
    windows: tuple[Segment, ...]
    chunks: tuple[tuple[Segment, ...], ...] = ()
    """Per window, its C chunks in order; empty unless chunks were asked for."""

    @property
    def scores(self) -> dict[str, float]:
        return {a: float(np.mean([w.scores[a] for w in self.windows])) for a in self.windows[0].scores}

    @property
    def arousal(self) -> float | None:
        return self.scores.get("arousal")

    @property
    def valence(self) -> float | None:
        return self.scores.get("valence")

    @property
    def dominance(self) -> float | None:
        return self.scores.get("dominance")


class ServedModel:
    """An exported SavedModel, checked against the serving contract when loaded."""

    def __init__(self, path: str):
        tf = import_tensorflow()

        from model.serving.export import CHUNKS_SUFFIX, SERVE_WAVEFORM_FEATURES, SERVING_DEFAULT, ExportError, read_contract
        from model.tf_paths import load_saved_model

        try:
            self._loaded = load_saved_model(path)
            contract = read_contract(self._loaded)
        except (OSError, ValueError, tf.errors.OpError, ExportError) as error:
            raise ModelError(f"cannot load the model {path}: {first_line(error)}") from error
        self.attributes = contract.attributes
        self.params = self._params()
        self.sample_rate = self.params.sample_rate
        self._predict = self._loaded.signatures[SERVING_DEFAULT]
        # Models re-saved with their signatures only (no restored waveform_features function)
        # get their features from the serve_waveform_features signature.
        features_of = self._loaded.signatures.get(SERVE_WAVEFORM_FEATURES)
        self._features = getattr(self._loaded, "waveform_features", None) or (
            features_of and (lambda waveform: features_of(waveform=waveform)["features"]))
        if self._features is None:
            raise ModelError(f"cannot load the model {path}: it has neither a waveform_features function nor "
                             f"a {SERVE_WAVEFORM_FEATURES} signature")
        self._chunk_outputs = {a: f"{a}{CHUNKS_SUFFIX}" for a in self.attributes}
        if not set(self._chunk_outputs.values()) <= set(self._predict.structured_outputs):
            self._chunk_outputs = {}
        self._chunks = getattr(self._loaded, CHUNK_FUNCTION, None)

    def _params(self) -> FeatureParams:
        """The model's feature settings, from its embedded metadata (the defaults, 16 kHz, without it)."""
        metadata = getattr(self._loaded, "metadata_json", None)
        if metadata is None:
            return FeatureParams()
        return FeatureParams.from_dict(json.loads(metadata.numpy())["feature_params"])

    @property
    def has_chunks(self) -> bool:
        return bool(self._chunk_outputs) or self._chunks is not None

    def features(self, waveform: np.ndarray) -> np.ndarray:
        """Normalised chunks [C, m, n_mels] of a mono waveform at ``sample_rate``."""
        return self._features(np.asarray(waveform, np.float32)).numpy()

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per-attribute predictions [batch] for features [batch, C, m, n_mels]."""
        return self.predict_with_chunks(features, chunks=False)[0]

    def predict_with_chunks(self, features: np.ndarray, chunks: bool) -> tuple[dict[str, np.ndarray],
                                                                              dict[str, np.ndarray] | None]:
        """(predictions [batch], and with ``chunks`` the chunk scores [batch, C] they average) per attribute.

        One network call when ``serving_default`` has ``<attribute>_chunks`` outputs, two
        (``serving_default`` and ``chunk_predictions``) otherwise.
        """
        features = np.asarray(features, np.float32)
        outputs = self._predict(features=features)
        scores = {a: outputs[a].numpy() for a in self.attributes}
        if not chunks:
            return scores, None
        if self._chunk_outputs:
            return scores, {a: outputs[key].numpy() for a, key in self._chunk_outputs.items()}
        if self._chunks is None:
            raise ModelError(NO_CHUNKS)
        traces = self._chunks(features)
        return scores, {a: traces[a].numpy() for a in self.attributes}


def window_spans(num_samples: int, sample_rate: int, window: float, hop: float) -> list[tuple[int, int]]:
    """Sample ranges of the windows of a recording: every ``hop`` seconds, ``window`` long.

    A recording no longer than one window (or ``window`` 0) is one span, scored whole.
    Otherwise every span is a full window; when the hops do not land on the end, a last
    window ends at the end (overlapping the one before), so the tail is scored with the
    same context as the rest and no sample is left out.
    """
    size, step = round(window * sample_rate), max(round(hop * sample_rate), 1)
    if window <= 0 or num_samples <= size:
        return [(0, num_samples)]
    spans = [(start, start + size) for start in range(0, num_samples - size + 1, step)]
    if spans[-1][1] < num_samples:
        spans.append((num_samples - size, num_samples))
    return spans


def chunk_spans(num_samples: int, params: FeatureParams) -> list[tuple[float, float]]:
    """Seconds (from the utterance start) each of the C chunks of an utterance covers.

    Chunk k holds m frames from ``chunk_starts``; frame f is centred on sample f * hop.
    A clip shorter than one chunk is tiled or padded: every chunk covers all of it.
    """
    rate, hop = params.sample_rate, params.hop_length
    end = num_samples / rate
    return [(min(start * hop / rate, end), min((start + params.chunk_frames) * hop / rate, end))
            for start in chunk_starts(params.num_frames(num_samples), params)]


@dataclasses.dataclass
class _Pending:
    """A recording whose windows are being scored."""

    key: object
    duration: float
    spans: list[tuple[float, float]]
    chunk_spans: list[list[tuple[float, float]]]
    scores: list[dict[str, float] | None]
    chunk_scores: list[dict[str, np.ndarray] | None]
    error: str = ""

    def done(self) -> bool:
        return bool(self.error) or all(s is not None for s in self.scores)

    def result(self) -> Prediction | str:
        if self.error:
            return self.error
        windows = tuple(Segment(s, e, scores) for (s, e), scores in zip(self.spans, self.scores))
        chunks = tuple(
            tuple(Segment(ws + s, ws + e, {a: float(v[k]) for a, v in scores.items()})
                  for k, (s, e) in enumerate(spans))
            for (ws, _), spans, scores in zip(self.spans, self.chunk_spans, self.chunk_scores) if scores is not None)
        return Prediction(self.duration, windows, chunks)


class Predictor:
    """Scores recordings with an exported model: window by window, batched through ``serving_default``.

    ``window`` and ``hop`` in seconds (``window`` 0: every recording whole); ``batch_size``
    windows per network call (batched and single predictions agree within 1e-6);
    ``max_seconds`` caps the audio one file may decode to (a header claiming more is
    refused before decoding, so one file cannot exhaust memory).
    """

    def __init__(self, model: str | os.PathLike | ServedModel, window: float = DEFAULT_WINDOW_SECONDS,
                 hop: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_seconds: float = DEFAULT_MAX_SECONDS):
        if window < 0 or (hop is not None and hop <= 0) or batch_size < 1 or max_seconds <= 0:
            raise ValueError(f"need window >= 0, hop > 0, batch_size >= 1 and max_seconds > 0; got window {window}, "
                             f"hop {hop}, batch_size {batch_size}, max_seconds {max_seconds}")
        self.model = model if isinstance(model, ServedModel) else ServedModel(os.fspath(model))
        self.window, self.hop = window, window if hop is None else hop
        self.batch_size, self.max_seconds = batch_size, max_seconds

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.model.attributes

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def predict(self, audio: np.ndarray | str | os.PathLike, chunks: bool = False) -> Prediction:
        """Scores one recording: a mono float waveform at ``sample_rate`` or an audio file's path.

        Raises AudioError for a file that cannot be decoded (the reason is the message).
        """
        if isinstance(audio, np.ndarray):
            waveform = np.asarray(audio, np.float32)
            if waveform.ndim != 1 or waveform.size == 0 or not np.all(np.isfinite(waveform)):
                raise AudioError(f"expected a non-empty finite mono waveform [samples], got shape {waveform.shape}")
        else:
            waveform, error = self.decode(os.fspath(audio))
            if waveform is None:
                raise AudioError(error)
        (_, result), = self.stream([(None, waveform)], chunks)
        if isinstance(result, str):
            raise AudioError(result)
        return result

    def decode(self, path: str) -> tuple[np.ndarray | None, str]:
        """(waveform, "") or (None, reason): the pipeline's decoder, any failure becoming a reason."""
        return decode_file(path, self.sample_rate, self.max_seconds)

    def stream(self, items: Iterable[tuple[object, np.ndarray | str]], chunks: bool = False,
               on_window: Callable[[int, int], None] | None = None) -> Iterator[tuple[object, Prediction | str]]:
        """(key, Prediction or error) for (key, waveform or error) items, in order, as they complete.

        Windows of consecutive recordings share network calls of ``batch_size``; only one
        waveform is held at a time. ``on_window(done, total)`` follows the windows of the
        current recording (for progress displays). A recording whose front end fails
        (e.g. out of memory) gets the error as its reason. ModelError when ``chunks`` is
        asked of a model without chunk scores.
        """
        if chunks and not self.model.has_chunks:
            raise ModelError(NO_CHUNKS)
        queue: list[_Pending] = []
        batch: list[tuple[_Pending, int, np.ndarray]] = []
        for key, item in items:
            pending = _Pending(key, 0.0, [], [], [], [])
            queue.append(pending)
            if isinstance(item, str):
                pending.error = item
            else:
                try:
                    self._windows(pending, item, batch, chunks, on_window)
                except Exception as error:  # noqa: BLE001 -- one recording's failure must not stop the rest
                    pending.error = f"front end failed: {type(error).__name__}: {first_line(error)}"
                    batch[:] = [entry for entry in batch if entry[0] is not pending]
            while queue and queue[0].done():
                done = queue.pop(0)
                yield done.key, done.result()
        if batch:
            self._score(batch, chunks)
        for done in queue:
            yield done.key, done.result()

    def _windows(self, pending: _Pending, waveform: np.ndarray, batch: list, chunks: bool,
                 on_window: Callable[[int, int], None] | None) -> None:
        rate = self.sample_rate
        spans = window_spans(waveform.size, rate, self.window, self.hop)
        pending.duration = waveform.size / rate
        pending.spans = [(s / rate, e / rate) for s, e in spans]
        pending.scores = [None] * len(spans)
        pending.chunk_scores = [None] * len(spans)
        pending.chunk_spans = [chunk_spans(e - s, self.model.params) for s, e in spans] if chunks else []
        for index, (start, end) in enumerate(spans):
            batch.append((pending, index, self.model.features(waveform[start:end])))
            if len(batch) == self.batch_size:
                self._score(batch, chunks)
            if on_window is not None:
                on_window(index + 1, len(spans))

    def _score(self, batch: list[tuple[_Pending, int, np.ndarray]], chunks: bool) -> None:
        features = np.stack([entry[2] for entry in batch])
        predictions, traces = self.model.predict_with_chunks(features, chunks)
        for k, (pending, index, _) in enumerate(batch):
            pending.scores[index] = {a: float(v[k]) for a, v in predictions.items()}
            if traces is not None:
                pending.chunk_scores[index] = {a: v[k] for a, v in traces.items()}
        batch.clear()


def decode_file(path: str, sample_rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray | None, str]:
    """(waveform, "") or (None, reason), with the pipeline's decoder and reasons.

    Anything decoding raises (MemoryError included) becomes a reason: one hostile file
    must cost an error row, not the run.
    """
    tf = import_tensorflow()

    try:
        with tf.io.gfile.GFile(path, "rb") as handle:
            data = handle.read()
    except (OSError, tf.errors.OpError) as error:
        return None, f"unreadable file: {first_line(error)}"
    try:
        return decode_audio(data, sample_rate, max_seconds=max_seconds), ""
    except AudioError as error:
        return None, str(error)
    except MemoryError:
        return None, f"out of memory decoding {len(data)} bytes"
    except Exception as error:  # noqa: BLE001 -- a decoder bug on one file is that file's error
        return None, f"decoding failed: {type(error).__name__}: {first_line(error)}"


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
