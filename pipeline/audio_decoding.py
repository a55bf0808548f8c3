"""Audio decoding shared by the pipeline and the predictor: bytes to a mono waveform (soundfile).

The waveform goes on to ``pipeline.numpy_frontend`` (the pipeline) or to the exported
model's in-graph front end (``model.serving.graph_frontend``).
"""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile


class AudioError(ValueError):
    """Audio that cannot become features; ``str(error)`` is the dead-letter reason."""


_DATA_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_LENGTH = (0, 0xFFFFFFFF)
"""Data sizes that streaming writers put in a header when the length is not known yet."""


def _missing_data(parser_log: str) -> str | None:
    """Names a WAV/AIFF data chunk whose header size exceeds the bytes in the file.

    libsndfile silently reads such a file up to where it ends and reports the shorter
    length as the frame count; only its header-parser log shows the truncation.
    """
    for chunk, declared, present in _DATA_CHUNK.findall(parser_log):
        if int(declared) not in _UNKNOWN_LENGTH and int(present) < int(declared):
            return f"{chunk} chunk declares {declared} bytes, file holds {present}"
    return None


DEFAULT_MAX_SECONDS = 600.0
"""Longest audio ``decode_audio`` accepts by default (the pipeline's ``--max-audio-seconds``)."""
SAMPLE_RATES = (1000, 384000)
"""Sample rates (Hz) a header may declare; outside them it is corrupt or hostile (a 1 Hz
header would be resampled 16,000x)."""
_BLOCK_FRAMES = 1 << 16
_OGG_PAGE = b"OggS"
_OGG_BOS, _OGG_EOS = 0x02, 0x04


def decode_audio(data: bytes, sample_rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Decodes any format soundfile reads into mono float32 at ``sample_rate``.

    The header is checked before anything is decoded: a sample rate outside
    ``SAMPLE_RATES`` or more than ``max_seconds`` of audio (which includes headers
    claiming absurd lengths) is rejected, so one file cannot make a worker allocate
    gigabytes. Decoding then goes block by block into one mono buffer of the declared
    length, so a file costs its bytes, plus ``4 * max_seconds * source rate`` bytes at
    most, plus the resampled output. Raises AudioError for empty, corrupt, truncated
    (WAV/AIFF data chunk, frame count, Ogg pages), over-long or non-finite audio, and
    for a decode that runs out of memory.
    """
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise _unreadable(error) from error
    with sound:
        declared, source_rate = sound.frames, sound.samplerate
        _check_header(declared, source_rate, max_seconds)
        missing = _missing_data(sound.extra_info)
        try:
            mono = _read_mono(sound, declared)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
            raise _unreadable(error) from error
        except MemoryError as error:
            raise AudioError(f"out of memory: decoding {declared} frames of {sound.channels} channels") from error
    if mono.size == 0:
        raise AudioError("audio has no samples")
    if missing:
        raise AudioError(f"truncated audio: {missing}")
    if mono.size < declared:
        raise AudioError(f"truncated audio: header declares {declared} frames, read {mono.size}")
    cut_ogg = _ogg_truncation(data) if data.startswith(_OGG_PAGE) else None
    if cut_ogg:
        raise AudioError(f"truncated audio: {cut_ogg}")
    if not np.all(np.isfinite(mono)):
        raise AudioError("audio contains non-finite samples")
    if source_rate != sample_rate:
        import librosa  # here, not at the top: only resampling needs it (librosa pulls in scipy.signal)

        try:
            mono = librosa.resample(mono, orig_sr=source_rate, target_sr=sample_rate, res_type="soxr_hq")
        except MemoryError as error:
            raise AudioError(f"out of memory: resampling {mono.size} samples from {source_rate} Hz") from error
    return np.ascontiguousarray(mono, dtype=np.float32)


def _unreadable(error: Exception) -> AudioError:
    detail = getattr(error, "error_string", None) or str(error)  # libsndfile's words, no object repr
    return AudioError(f"unreadable audio: {detail}")


def _check_header(frames: int, rate: int, max_seconds: float) -> None:
    """Rejects, before decoding, a sample rate outside ``SAMPLE_RATES`` and audio over ``max_seconds``.

    libsndfile reports a FLAC stream of unknown length as 2**63 - 1 frames: rejected
    here too, as its length cannot be bounded before decoding.
    """
    low, high = SAMPLE_RATES
    if not low <= rate <= high:
        raise AudioError(f"unsupported sample rate: header declares {rate} Hz, accepted {low}..{high} Hz")
    if frames > max_seconds * rate:
        raise AudioError(f"too long: header declares {frames} frames ({frames / rate:.1f} s) at {rate} Hz, "
                         f"over the {max_seconds:g} s cap")


def _read_mono(sound: soundfile.SoundFile, declared: int) -> np.ndarray:
    """The file's channel mean, read ``_BLOCK_FRAMES`` at a time into one buffer (bit-identical
    to reading it whole: the mean is taken row by row); shorter than ``declared`` when cut."""
    mono = np.empty(declared, np.float32)
    filled = 0
    while filled < declared:
        block = sound.read(min(_BLOCK_FRAMES, declared - filled), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        mono[filled:filled + block.shape[0]] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
        filled += block.shape[0]
    return mono[:filled]


def _ogg_truncation(data: bytes) -> str | None:
    """Says where an Ogg file is cut, or None when every stream ends with its end-of-stream page.

    libsndfile takes an Ogg file's length from its last page, so a file cut after any
    page decodes as shorter audio without an error; walking the page headers (27
    bytes and a segment table each) finds a cut page or a missing end of stream.
    """
    offset, open_streams = 0, set()
    while data.startswith(_OGG_PAGE, offset):
        table = offset + 27
        if table > len(data) or table + data[table - 1] > len(data):
            return f"Ogg page at byte {offset} is cut"
        end = table + data[table - 1] + sum(data[table:table + data[table - 1]])
        if end > len(data):
            return f"Ogg page at byte {offset} needs {end - offset} bytes, the file holds {len(data) - offset}"
        flags, serial = data[offset + 5], data[offset + 14:offset + 18]
        if flags & _OGG_BOS:
            open_streams.add(serial)
        if flags & _OGG_EOS:
            open_streams.discard(serial)
        offset = end
    if open_streams:
        return f"Ogg stream ends at byte {offset} without its end-of-stream page"
    return None
